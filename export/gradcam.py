"""Grad-CAM inside the exported graph, so explanations need no TensorFlow at inference.

For the seed's head (GAP -> Dense -> ReLU -> [Dropout] -> Dense -> ReLU -> [Dropout] -> Dense),
the gradient of the positive-class logit z with respect to the pooled features g is
    dz/dg = W1 . (1[h1 > 0] * (W2 . (1[h2 > 0] * w3)))
and, since g is the spatial mean of the last feature map A, the Grad-CAM channel weights
are alpha_k = mean_ij dz/dA_ijk = (dz/dg)_k / (H W). The map is ReLU(sum_k alpha_k A_k),
divided by its maximum per image (0 where it is all zero). Only forward ops are needed,
which tf2onnx converts like any other layer. ``gradcam_keras`` computes the same map with
autodiff (tf.GradientTape) and serves as the reference in the export check.
"""

from __future__ import annotations

import numpy as np

from cxr.artifacts.model_contract import FEATURE_LAYER
from cxr.artifacts.model_contract import HEAD_LAYERS as HEAD_DENSE


def _normalise(cam):
    import tensorflow as tf

    peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
    return tf.math.divide_no_nan(cam, peak)


def probability_and_cam(model):
    """A function pixels(float, NHWC) -> (P(positive) [N], cam [N, h, w] in 0..1), forward ops only."""
    import keras
    import tensorflow as tf

    features = keras.Model(model.input, model.get_layer(FEATURE_LAYER).output)
    (w1, b1), (w2, b2), (w3, b3) = (model.get_layer(n).get_weights() for n in HEAD_DENSE)

    def compute(pixels):
        fmap = features(pixels, training=False)
        pooled = tf.reduce_mean(fmap, axis=[1, 2])
        h1 = tf.matmul(pooled, w1) + b1
        h2 = tf.matmul(tf.nn.relu(h1), w2) + b2
        logit = tf.matmul(tf.nn.relu(h2), w3) + b3
        v2 = tf.cast(h2 > 0, tf.float32) * w3[:, 0]
        v1 = tf.cast(h1 > 0, tf.float32) * tf.matmul(v2, w2, transpose_b=True)
        alpha = tf.matmul(v1, w1, transpose_b=True) / tf.cast(
            tf.shape(fmap)[1] * tf.shape(fmap)[2], tf.float32
        )
        cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", fmap, alpha))
        return tf.reshape(tf.sigmoid(logit), (-1,)), _normalise(cam)

    return compute


def gradcam_keras(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference Grad-CAM with autodiff: gradient of the positive-class logit."""
    import keras
    import tensorflow as tf

    features = keras.Model(model.input, model.get_layer(FEATURE_LAYER).output)
    head = [model.get_layer(n) for n in HEAD_DENSE]
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        fmap = features(x, training=False)
        tape.watch(fmap)
        h = tf.reduce_mean(fmap, axis=[1, 2])
        for layer in head[:-1]:
            h = layer(h)  # Dense with ReLU; the Dropout layers are identity at inference
        logit = tf.matmul(h, head[-1].kernel) + head[-1].bias
    grads = tape.gradient(logit, fmap)
    alpha = tf.reduce_mean(grads, axis=[1, 2])
    cam = _normalise(tf.nn.relu(tf.einsum("nhwk,nk->nhw", fmap, alpha)))
    return tf.reshape(tf.sigmoid(logit), (-1,)).numpy(), cam.numpy()


def has_gradcam_head(model) -> bool:
    names = {layer.name for layer in model.layers}
    return FEATURE_LAYER in names and all(n in names for n in HEAD_DENSE)
