"""The robustness suite's perturbations: a fixed, seeded list applied to decoded model inputs.

Each perturbation maps a uint8 ``(H, W, 3)`` model input (the output of
``cxr.imaging.decode_image``) to another, as a scanner, a re-encode or a display
pipeline would: noise, blur, resolution, compression, brightness, contrast, gamma and a
small rotation. Brightness and contrast are Pillow's ``ImageEnhance`` factors (x1.05 is
"+5%"). Noise is drawn from a generator seeded by (suite seed, perturbation, image
index), so the same images give the same numbers in any batch order.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


@dataclass(frozen=True)
class Perturbation:
    name: str
    description: str
    apply: Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def gaussian_noise(sd: float, per_channel: bool = False):
    """One grey noise field on all 3 channels (a grey detector), or independent noise per channel."""

    def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.normal(0.0, sd, image.shape if per_channel else image.shape[:2] + (1,))
        return np.clip(np.rint(image.astype(np.float64) + noise), 0, 255).astype(np.uint8)

    return apply


def gaussian_blur(radius: float):
    return lambda image, rng: _array(_pil(image).filter(ImageFilter.GaussianBlur(radius)))


def down_up(scale: float):
    def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        small = _pil(image).resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
        )
        return _array(small.resize((w, h), Image.Resampling.BILINEAR))

    return apply


def jpeg(quality: int):
    def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buffer = io.BytesIO()
        _pil(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return _array(Image.open(buffer))

    return apply


def enhance(kind: type, factor: float):
    return lambda image, rng: _array(kind(_pil(image)).enhance(factor))


def gamma(value: float):
    table = [int(round(255.0 * (i / 255.0) ** value)) for i in range(256)]
    return lambda image, rng: _array(_pil(image).point(table * 3))


def rotation(degrees: float):
    return lambda image, rng: _array(_pil(image).rotate(degrees, resample=Image.Resampling.BILINEAR))


def _suite() -> tuple[Perturbation, ...]:
    items = [
        Perturbation(f"noise{sd:g}", f"Gaussian noise, sd {sd:g} grey levels", gaussian_noise(sd))
        for sd in (1, 2, 3, 5)
    ]
    items += [
        Perturbation(
            "noise2rgb",
            "Gaussian noise, sd 2 grey levels, independent per channel",
            gaussian_noise(2, per_channel=True),
        )
    ]
    items += [
        Perturbation("blur", "Gaussian blur, radius 1 px", gaussian_blur(1.0)),
        Perturbation("downscale0.5", "downscale x0.5 and back up (bilinear)", down_up(0.5)),
    ]
    items += [Perturbation(f"jpeg{q}", f"JPEG re-encode, quality {q}", jpeg(q)) for q in (30, 50, 75)]
    items += [
        Perturbation(
            f"brightness{pct:+d}",
            f"brightness x{1 + pct / 100:g}",
            enhance(ImageEnhance.Brightness, 1 + pct / 100),
        )
        for pct in (-10, -5, 5, 10)
    ]
    items += [
        Perturbation(
            f"contrast{pct:+d}", f"contrast x{1 + pct / 100:g}", enhance(ImageEnhance.Contrast, 1 + pct / 100)
        )
        for pct in (-10, 10)
    ]
    items += [Perturbation(f"gamma{g:g}", f"gamma {g:g}", gamma(g)) for g in (0.8, 1.2)]
    items += [Perturbation(f"rotate{d:+d}", f"rotation {d:+d} degrees", rotation(d)) for d in (-5, 5)]
    return tuple(items)


SUITE: tuple[Perturbation, ...] = _suite()
SUITE_NAMES: tuple[str, ...] = tuple(p.name for p in SUITE)


def perturbation(name: str) -> Perturbation:
    for item in SUITE:
        if item.name == name:
            return item
    raise KeyError(f"unknown perturbation {name!r}; the suite has {', '.join(SUITE_NAMES)}")


def perturb_batch(images: np.ndarray, item: Perturbation, seed: int, first_index: int = 0) -> np.ndarray:
    """``item`` applied to each image of a uint8 NHWC batch; image ``i`` of the whole set uses
    a generator seeded by ``(seed, crc32(name), first_index + i)``."""
    key = zlib.crc32(item.name.encode())
    return np.stack(
        [
            item.apply(image, np.random.default_rng([seed, key, first_index + i]))
            for i, image in enumerate(images)
        ]
    )
