"""Images that are not what the model was trained on, made on the spot: the sets used to measure the
domain guard (`scripts/domain_methods.py`, `make results`) and by the tests.

- ``non_xray_images``: scikit-image's sample photos, text pages and micrographs (with crops),
  noise and gradients; none of them is a chest X-ray.
- ``chest_variants``: chest X-rays turned 90 or 180 degrees, inverted (a MONOCHROME1 image shown
  raw), or one half stretched to the full size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SKIMAGE_SAMPLES = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "shepp_logan_phantom",
)
CHEST_VARIANTS = ("rot90", "rot180", "inverted", "half")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        low, high = float(image.min()), float(image.max())
        image = np.rint((image - low) / max(high - low, 1e-9) * 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    return image


def skimage_samples() -> Iterator[tuple[str, np.ndarray]]:
    """(name, uint8 image) of the scikit-image samples that ship with the package (no download)."""
    import skimage.data

    for name in SKIMAGE_SAMPLES:
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a sample that needs a download is skipped
            continue
        yield name, _to_uint8(image)


def non_xray_images(
    seed: int = 0, crops_per_sample: int = 2, n_noise: int = 6
) -> Iterator[tuple[str, np.ndarray]]:
    """Photos, text pages and micrographs (each whole and as random crops), noise and gradients."""
    rng = np.random.default_rng(seed)
    for name, image in skimage_samples():
        yield name, image
        height, width = image.shape[:2]
        for index in range(crops_per_sample):
            h, w = int(height * rng.uniform(0.4, 0.7)), int(width * rng.uniform(0.4, 0.7))
            y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            yield f"{name}_crop{index}", image[y : y + h, x : x + w]
    for index in range(n_noise):
        yield f"uniform_noise{index}", rng.integers(0, 256, (256, 256), dtype=np.uint8)
        yield (
            f"gaussian_noise{index}",
            np.clip(rng.normal(128, rng.uniform(10, 60), (256, 256)), 0, 255).astype(np.uint8),
        )
        yield f"colour_noise{index}", rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, 256)
    yield "gradient_horizontal", np.tile(ramp, (256, 1)).astype(np.uint8)
    yield "gradient_vertical", np.tile(ramp[:, None], (1, 256)).astype(np.uint8)
    yy, xx = np.mgrid[-1:1:256j, -1:1:256j]
    yield "gradient_radial", np.clip(255 * (1 - np.hypot(yy, xx) / 1.42), 0, 255).astype(np.uint8)


def chest_variant(image: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A chest X-ray turned, inverted, or one half (left/right/top/bottom, chosen by ``seed``)."""
    if kind == "rot90":
        return np.ascontiguousarray(np.rot90(image, 1 if seed % 2 else -1))
    if kind == "rot180":
        return np.ascontiguousarray(np.rot90(image, 2))
    if kind == "inverted":
        return 255 - image
    if kind == "half":
        height, width = image.shape[:2]
        part = seed % 4
        halves = (image[:, : width // 2], image[:, width // 2 :], image[: height // 2], image[height // 2 :])
        return np.ascontiguousarray(halves[part])
    raise ValueError(f"unknown chest variant {kind!r}; choose one of {CHEST_VARIANTS}")


def outlier_patient(path: str) -> str:
    """The patient of an outlier image: a DICOM file's PatientID where it has one, otherwise cxr's
    patient-id rule on the file name."""
    from pathlib import Path

    from cxr.data import patient_id_from_name
    from cxr.dicom import is_dicom_file, patient_id

    return (is_dicom_file(Path(path)) and patient_id(path)) or patient_id_from_name(Path(path).name)


def patient_key(patient: str) -> str:
    """A patient id as the guard's metadata records it: the first 16 hex digits of its sha256, so
    that no patient id is stored in a model file."""
    import hashlib

    return hashlib.sha256(patient.encode()).hexdigest()[:16]


def outlier_fit_part(paths: list[str], share: float) -> np.ndarray:
    """Which images of an outlier folder fit the domain guard's site classifier: those whose patient
    (``outlier_patient``) has a stable hash below ``share``. The other patients' images are kept
    out, so the guard can be measured on them; the same patients always give the same choice."""
    return keys_in_fit_part([patient_key(outlier_patient(p)) for p in paths], share)


def keys_in_fit_part(keys: list[str], share: float) -> np.ndarray:
    """``outlier_fit_part`` for patients already hashed by ``patient_key``."""
    return np.array([int(k[:8], 16) / 16**8 < share for k in keys], dtype=bool)


def not_learnt_from(paths: list[str], guard_facts: dict) -> list[str]:
    """The paths whose patients a guard's site classifier did not learn from (all of them for a
    guard without one): what the guard may honestly be measured on. The guard's metadata lists the
    hashed ids of the patients it learnt from."""
    site = guard_facts.get("site_classifier")
    if not site:
        return list(paths)
    learnt = set(site["patients_sha256"])
    return [p for p in paths if patient_key(outlier_patient(p)) not in learnt]
