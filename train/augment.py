"""Training augmentation as Keras layers: the seed's table, and the ``robust`` policy.

``seed``   the seed's ImageDataGenerator table, exactly (rotation, shifts, shear, zoom, flip).
``robust`` the seed's table, then photometric and acquisition changes, so that image
           texture stops separating the classes (see ``cxr robustness`` and the shortcut
           check in ``cxr data prepare``):

           - gamma, contrast and brightness, as scanners and display pipelines differ;
           - a blur or a downscale-upscale of random strength (a smoother, lower-resolution
             acquisition: in this data set the NORMAL originals are larger, so their
             downscaled copies are smoother than the PNEUMONIA ones);
           - Gaussian noise of random sd, last, as the noise of a sensor or a re-encode.

Every layer works on float 0-255 pixels, uses only ``keras.ops`` and ``keras.random``
(any backend) and is active only with ``training=True``. The augmenter is a separate
model applied to the input batches: the exported classifier never contains it.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from cxr.artifacts.training_config import AugmentTable, RobustAugment, TrainingConfig
from cxr.keras_layers import gaussian_blur


class _RandomPerImage(keras.layers.Layer):
    """Base: a layer that draws its random factors per image, only while training."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def per_image(self, images, low: float, high: float):
        shape = (ops.shape(images)[0], 1, 1, 1)
        return keras.random.uniform(shape, minval=low, maxval=high, seed=self.generator)

    def applied(self, images, probability: float):
        """1.0 for the images this layer changes, 0.0 for the others."""
        return ops.cast(self.per_image(images, 0.0, 1.0) < probability, images.dtype)

    def call(self, images, training=None):
        if not training:
            return images
        return ops.clip(self.augment(ops.cast(images, "float32")), 0.0, 255.0)

    def augment(self, images):  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


class RandomGamma(_RandomPerImage):
    """``255 * (x / 255) ** g`` with ``log g`` uniform in ``[log low, log high]``."""

    def __init__(self, low: float, high: float, **kwargs):
        super().__init__(**kwargs)
        self.low, self.high = float(low), float(high)

    def augment(self, images):
        gamma = ops.exp(self.per_image(images, math.log(self.low), math.log(self.high)))
        return 255.0 * ops.power(ops.clip(images / 255.0, 1e-6, 1.0), gamma)

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high}


class RandomBlurOrDownscale(_RandomPerImage):
    """With ``probability``, replace the image by a mix of itself and a smoothed copy, the mix
    weight uniform in [0, 1]; half of those smoothed copies are a Gaussian blur (``sigma``),
    half a downscale by ``scale`` and back up (bilinear)."""

    def __init__(self, probability: float, sigma: float, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.probability, self.sigma, self.scale = float(probability), float(sigma), float(scale)

    def _blurred(self, images):
        return gaussian_blur(images, self.sigma, pad_mode="symmetric")

    def _down_up(self, images):
        height, width = images.shape[1], images.shape[2]
        small = ops.image.resize(
            images,
            (max(1, int(height * self.scale)), max(1, int(width * self.scale))),
            interpolation="bilinear",
            antialias=True,
        )
        return ops.image.resize(small, (height, width), interpolation="bilinear")

    def augment(self, images):
        use_blur = self.applied(images, 0.5)
        smooth = use_blur * self._blurred(images) + (1.0 - use_blur) * self._down_up(images)
        weight = self.applied(images, self.probability) * self.per_image(images, 0.0, 1.0)
        return images + weight * (smooth - images)

    def get_config(self):
        return {
            **super().get_config(),
            "probability": self.probability,
            "sigma": self.sigma,
            "scale": self.scale,
        }


class RandomGaussianNoise(_RandomPerImage):
    """With ``probability``, add Gaussian noise whose sd is uniform in [0, ``max_sd``] grey
    levels (``keras.layers.GaussianNoise`` has one fixed sd)."""

    def __init__(self, probability: float, max_sd: float, **kwargs):
        super().__init__(**kwargs)
        self.probability, self.max_sd = float(probability), float(max_sd)

    def augment(self, images):
        sd = self.applied(images, self.probability) * self.per_image(images, 0.0, self.max_sd)
        return images + sd * keras.random.normal(ops.shape(images), seed=self.generator)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability, "max_sd": self.max_sd}


def seed_layers(augment: AugmentTable, seed: int) -> list[keras.layers.Layer]:
    """The seed's ImageDataGenerator table as Keras 3 preprocessing layers."""
    fill, zoom = augment.fill_mode, float(augment.zoom)
    layers = [
        keras.layers.RandomRotation(float(augment.rotation_degrees) / 360.0, fill_mode=fill, seed=seed),
        keras.layers.RandomTranslation(
            float(augment.height_shift), float(augment.width_shift), fill_mode=fill, seed=seed + 1
        ),
        keras.layers.RandomShear(
            x_factor=math.tan(math.radians(float(augment.shear_degrees))), fill_mode=fill, seed=seed + 2
        ),
        keras.layers.RandomZoom((-zoom, zoom), (-zoom, zoom), fill_mode=fill, seed=seed + 3),
    ]
    if augment.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 4))
    return layers


def robust_layers(robust: RobustAugment, seed: int) -> list[keras.layers.Layer]:
    """Photometric and acquisition augmentation (the ``robust`` policy's additions)."""
    return [
        RandomGamma(*robust.gamma, seed=seed + 10, name="random_gamma"),
        keras.layers.RandomContrast(float(robust.contrast), value_range=(0, 255), seed=seed + 11),
        keras.layers.RandomBrightness(float(robust.brightness), value_range=(0, 255), seed=seed + 12),
        RandomBlurOrDownscale(
            float(robust.smooth_probability),
            float(robust.blur_sigma),
            float(robust.downscale),
            seed=seed + 13,
            name="random_blur_or_downscale",
        ),
        RandomGaussianNoise(
            float(robust.noise_probability),
            float(robust.noise_max_sd),
            seed=seed + 14,
            name="random_gaussian_noise",
        ),
    ]


def make_augmenter(config: TrainingConfig, seed: int) -> keras.Sequential:
    """The training augmenter of a resolved config: its ``augment_policy`` (seed or robust)."""
    layers = seed_layers(config.augment, seed)
    if config.augment_policy == "robust":
        layers += robust_layers(config.robust, seed)
    return keras.Sequential(layers, name=f"augment_{config.augment_policy}")
