"""Precise BatchNorm: recalibrated moving averages are the mean of the batch statistics."""

from __future__ import annotations

import numpy as np
import pytest

# Keras: importing it (and TensorFlow) takes 8 s on 2 cores, so that a fast run (-m 'not slow')
# imports neither
pytestmark = pytest.mark.slow


def _toy_model():
    keras = pytest.importorskip("keras", reason="the [train] extra (Keras) is not installed")

    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="features")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dropout(0.5)(x)
    frozen = keras.layers.BatchNormalization(name="frozen_bn")
    frozen.trainable = False
    return keras.Model(inputs, keras.layers.Dense(1)(frozen(x)))


def test_moving_averages_become_the_mean_batch_statistics() -> None:
    from cxr.train.batchnorm import recalibrate_batchnorm

    model = _toy_model()
    images = np.random.default_rng(1).normal(3.0, 2.0, (70, 3)).astype("float32")
    bn, frozen = model.get_layer("bn"), model.get_layer("frozen_bn")
    frozen_before = [np.array(w) for w in frozen.get_weights()]
    assert recalibrate_batchnorm(model, images, batch_size=16, seed=2) == 1

    features = np.asarray(model.get_layer("features")(images))
    order = np.random.default_rng(2).permutation(len(images))
    batches = [features[np.sort(order[i : i + 16])] for i in range(0, 64, 16)]  # 4 full batches; 6 left out
    assert np.allclose(bn.moving_mean, np.mean([b.mean(0) for b in batches], axis=0), atol=1e-5)
    assert np.allclose(bn.moving_variance, np.mean([b.var(0) for b in batches], axis=0), rtol=1e-4)
    assert bn.momentum == pytest.approx(0.99) and model.layers[3].rate == 0.5  # settings restored
    for before, after in zip(frozen_before, frozen.get_weights()):
        assert np.array_equal(before, after)  # frozen layers keep their statistics


def test_measuring_the_gap_leaves_the_model_unchanged() -> None:
    from cxr.train.batchnorm import _mode_gap

    model = _toy_model()
    images = np.random.default_rng(3).normal(3.0, 2.0, (40, 3)).astype("float32")
    labels = np.arange(40) % 2
    before = [np.array(w) for w in model.get_weights()]
    summary, inference = _mode_gap(model, images, labels, batch_size=8, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert np.allclose(inference, np.asarray(model(images, training=False)).reshape(-1), atol=1e-6)
    assert summary.n == 40 and summary.moving_averages.roc_auc >= 0 and summary.batch_statistics.p_std >= 0
