"""Tiny synthetic chest-X-ray-like folders for tests (made in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_xray(rng: np.random.Generator, positive: bool, size: int = 64) -> np.ndarray:
    """A grayscale image; positives carry a bright blob (a 'consolidation')."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 60 + 80 * np.exp(-((xx - 0.5) ** 2) / 0.08) + rng.normal(0, 12, (size, size))
    if positive:
        cy, cx = rng.uniform(0.3, 0.7, 2)
        img += 110 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(
    root: Path,
    n_patients: int = 10,
    images_per_patient: int = 2,
    size: int = 64,
    layout: str = "kaggle",
    seed: int = 0,
) -> Path:
    """Kermany-named JPEGs: NORMAL 'IM-XXXX-000N', PNEUMONIA 'personN_bacteria_M'."""
    rng = np.random.default_rng(seed)
    for label in ("NORMAL", "PNEUMONIA"):
        for patient in range(n_patients):
            for image in range(images_per_patient):
                split = ("train", "test", "val")[patient % 3] if layout == "kaggle" else ""
                folder = root / split / label
                folder.mkdir(parents=True, exist_ok=True)
                name = (
                    f"IM-{patient:04d}-{image + 1:04d}.jpeg"
                    if label == "NORMAL"
                    else f"person{patient}_bacteria_{patient * 10 + image}.jpeg"
                )
                Image.fromarray(synthetic_xray(rng, label == "PNEUMONIA", size)).convert("RGB").save(
                    folder / name
                )
    return root


def make_gray_class_folders(
    root: Path, levels: dict[str, int], *, sigma: float, count: int, shape: tuple[int, int], name: str
) -> Path:
    """Class folders of noisy flat-grey images (mean ``levels[label]``); ``name`` is a format
    string with ``{i}``. Seeded, so the same arguments give the same files."""
    rng = np.random.default_rng(0)
    for label, level in levels.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            arr = np.clip(rng.normal(level, sigma, shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / label / name.format(i=i))
    return root


def make_texture_classes(
    root: Path, count: int = 12, size: int = 32, noise_sd: tuple[float, float] = (0.5, 4.0), seed: int = 0
) -> Path:
    """Class folders whose images differ ONLY in noise: random smooth gradients of random
    brightness and contrast, NORMAL with noise sd ``noise_sd[0]``, PNEUMONIA with ``noise_sd[1]``.
    PNG, so the noise is kept exactly. One image per Kermany-named patient."""
    rng = np.random.default_rng(seed)
    xx = np.linspace(-1, 1, size)[None, :]
    for label, sd in zip(("NORMAL", "PNEUMONIA"), noise_sd):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = rng.uniform(90, 110) + rng.uniform(15, 25) * (xx + 0 * xx.T)
            image = np.clip(np.rint(base + rng.normal(0, sd, (size, size))), 0, 255).astype(np.uint8)
            name = f"IM-{i:04d}-0001.png" if label == "NORMAL" else f"person{i}_bacteria_{i}.png"
            Image.fromarray(image).save(root / label / name)
    return root
