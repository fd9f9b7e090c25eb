"""Keras layers that are part of a trained model's graph, owned by the core so that training
and export load the same class (``keras.models.load_model`` finds it by its registered name).

Imported only by the Keras stages (train, export); inference runs the exported ONNX graph and
never imports this module.

``AcquisitionEqualiser``: a fixed Gaussian blur (``sigma`` pixels at the model's input size),
applied to every image inside the model, before the backbone. In this data set the classes
differ in fine texture (the NORMAL originals are larger, so their downscaled copies carry other
high-frequency content than the PNEUMONIA ones; ``cxr data prepare`` prints the check), and a
model that reads that texture flips normal chests under faint noise. Blurring every image, at
training and at inference alike, removes most of that band from what the network sees, while
the opacities that mark pneumonia are far coarser. It has no weights; ``sigma = 0`` is the
identity.
"""

from __future__ import annotations

import math

import keras
from keras import ops

EQUALISER_NAME = "acquisition_equaliser"


def gaussian_kernel_1d(sigma: float) -> list[float]:
    """Normalised Gaussian taps, radius ceil(2.5 sigma) (at least 1)."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = [math.exp(-(i * i) / (2 * sigma**2)) for i in range(-radius, radius + 1)]
    return [t / sum(taps) for t in taps]


def gaussian_blur(images, sigma: float, pad_mode: str = "reflect"):
    """Separable Gaussian blur of a float NHWC batch (any Keras backend); borders mirrored."""
    taps = gaussian_kernel_1d(sigma)
    radius = len(taps) // 2
    kernel_1d = ops.convert_to_tensor(taps, dtype=images.dtype)
    channels = images.shape[-1]
    row = ops.tile(ops.reshape(kernel_1d, (1, -1, 1, 1)), (1, 1, channels, 1))
    column = ops.tile(ops.reshape(kernel_1d, (-1, 1, 1, 1)), (1, 1, channels, 1))
    padded = ops.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode=pad_mode)
    return ops.depthwise_conv(ops.depthwise_conv(padded, row, padding="valid"), column, padding="valid")


@keras.saving.register_keras_serializable(package="cxr")
class AcquisitionEqualiser(keras.layers.Layer):
    """A fixed Gaussian blur of every input image (training and inference); no weights."""

    def __init__(self, sigma: float, **kwargs):
        super().__init__(**kwargs)
        self.sigma = float(sigma)

    def call(self, images):
        if self.sigma <= 0:
            return images
        return gaussian_blur(ops.cast(images, self.compute_dtype), self.sigma)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma}
