"""The in-model acquisition equaliser: a fixed Gaussian blur that travels inside the model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

# Keras: importing it (and TensorFlow) takes 8 s on 2 cores, so that a fast run (-m 'not slow')
# imports neither
pytestmark = pytest.mark.slow


@pytest.fixture
def keras():
    return pytest.importorskip("keras", reason="the [train] extra (Keras) is not installed")


def test_the_equaliser_is_a_gaussian_blur_and_sigma_zero_is_the_identity(keras) -> None:
    from cxr.keras_layers import AcquisitionEqualiser

    images = np.random.default_rng(0).uniform(0, 255, (2, 24, 24, 3)).astype("float32")
    blurred = np.asarray(AcquisitionEqualiser(1.0)(images))
    reference = gaussian_filter(images, sigma=(0, 1, 1, 0), mode="mirror", truncate=3.0)
    assert np.abs(blurred - reference)[:, 3:-3, 3:-3].max() < 1e-3  # away from the mirrored border
    assert blurred.std() < images.std() * 0.6  # white noise loses most of its power
    assert np.array_equal(np.asarray(AcquisitionEqualiser(0.0)(images)), images)


def test_it_sits_before_the_backbone_has_no_weights_and_does_not_shift_the_freezing(tmp_path, keras) -> None:
    from dataclasses import replace

    from cxr.keras_layers import EQUALISER_NAME
    from cxr.train.config import load_config, resolve_variant
    from cxr.train.model import build_classifier

    config = resolve_variant(
        load_config(), "model1", {"backbone": "efficientnet_lite2", "weights": "none", "input_size": 32}
    )
    with_eq, facts = build_classifier(replace(config, equalise_sigma=1.0))
    without, facts0 = build_classifier(replace(config, equalise_sigma=0.0))
    assert with_eq.layers[1].name == EQUALISER_NAME and not with_eq.layers[1].weights
    assert EQUALISER_NAME not in [layer.name for layer in without.layers]
    assert facts == facts0  # same layer count, frozen layers and parameters
    frozen = [layer.name for layer in with_eq.layers if not layer.trainable and layer.weights]
    assert frozen == [layer.name for layer in without.layers if not layer.trainable and layer.weights]
    with_eq.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    batch = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert np.allclose(loaded.predict(batch, verbose=0), with_eq.predict(batch, verbose=0), atol=1e-6)
