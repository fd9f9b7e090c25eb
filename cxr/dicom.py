"""DICOM input: the standard display pipeline down to an 8-bit grayscale image.

1. Modality LUT / Rescale Slope and Intercept (pydicom ``apply_modality_lut``).
2. VOI: a VOI LUT Sequence if present (pydicom ``apply_voi_lut``, output scaled from the
   LUT's bit depth), else the first Window Center / Width (the linear function of DICOM
   PS3.3 C.11.2.1.2, straight to 0-255), else the image's own min-max.
3. MONOCHROME1 is inverted, so that bone is bright as in MONOCHROME2 and the training data.

Multi-frame images and DICOM without pixel data (SR, encapsulated PDF, ...) are refused.
Compressed transfer syntaxes decode through pylibjpeg / pylibjpeg-libjpeg / openjpeg
(extra ``[dicom]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.messages import first_line

DICOM_EXTENSIONS = (".dcm", ".dicom")


def has_dicom_preamble(path: Path) -> bool:
    if not path.is_file():  # a FIFO or device would block the open
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_file(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in DICOM_EXTENSIONS or (suffix == "" and has_dicom_preamble(path))


def _first(value) -> float:
    return (
        float(value[0]) if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else float(value)
    )


def _window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI function to 0..255."""
    if width <= 1:
        return np.where(arr <= center - 0.5, 0.0, 255.0)
    scaled = ((arr - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(scaled, 0.0, 255.0)


def _min_max(arr: np.ndarray) -> np.ndarray:
    low, high = float(arr.min()), float(arr.max())
    return np.zeros_like(arr, dtype=np.float64) if high <= low else (arr - low) / (high - low) * 255.0


def display_array(ds) -> np.ndarray:
    """The 8-bit display image (H, W) of a single-frame grayscale DICOM dataset."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    modality = apply_modality_lut(ds.pixel_array, ds)
    arr = modality.astype(np.float64)
    if "VOILUTSequence" in ds:
        out_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2]) or 16
        if np.issubdtype(modality.dtype, np.floating):  # LUT entries are indexed by integer values
            modality = np.rint(modality).astype(np.int64)
        arr = np.clip(
            apply_voi_lut(modality, ds, index=0).astype(np.float64) / (2**out_bits - 1) * 255.0, 0, 255
        )
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        arr = _window(arr, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        arr = _min_max(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 255.0 - arr
    return np.rint(arr).astype(np.uint8)


def read_dicom_8bit(path: str | Path, max_pixels: int) -> np.ndarray:
    """Read a DICOM file to 8-bit grayscale (H, W) or RGB (H, W, 3). Raises ValueError with one line."""
    try:
        import pydicom
    except ImportError:
        raise ValueError("DICOM input needs pydicom: pip install 'cxr[dicom]'") from None
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise ValueError(f"cannot read DICOM: {first_line(exc)}") from None
    if "PixelData" not in ds:
        raise ValueError(
            f"DICOM has no image (SOP class {ds.get('SOPClassUID', 'unknown')}, "
            f"modality {ds.get('Modality', 'unknown')})"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise ValueError(f"image too large ({cols}x{rows}); refusing a possible decompression bomb")
    try:
        if int(ds.get("SamplesPerPixel", 1)) == 3:
            return np.asarray(ds.pixel_array, dtype=np.uint8)
        return display_array(ds)
    except Exception as exc:  # noqa: BLE001 - missing decoders, corrupt pixel data
        first = first_line(exc)
        raise ValueError(f"cannot decode DICOM pixel data: {first[:200]}") from None


TRAINING_AGE_YEARS = (1, 5)  # the training population: children aged one to five
CHEST_MODALITIES = ("CR", "DX", "DR", "RG")
FRONTAL_VIEWS = ("PA", "AP", "")
_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def age_in_years(value: str) -> float | None:
    """A DICOM Age String (``nnnD/W/M/Y``) in years; None when absent or malformed."""
    text = str(value or "").strip().upper()
    if len(text) < 2 or text[-1] not in _AGE_UNITS or not text[:-1].isdigit():
        return None
    return int(text[:-1]) * _AGE_UNITS[text[-1]]


def read_header(path: str | Path):
    """A DICOM file's header without its pixels, or None where it cannot be read (an unreadable
    header is the decoder's to report)."""
    try:
        import pydicom

        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - pydicom raises many types for a broken or missing file
        return None


def patient_id(path: str | Path) -> str:
    """A DICOM file's PatientID, or '' where it has none or its header cannot be read."""
    ds = read_header(path)
    return str(ds.get("PatientID", "") or "").strip() if ds is not None else ""


def header_flags(path: str | Path) -> list[str]:
    """What a DICOM header says against this model (``qc`` reasons): a modality that is not
    radiography, a body part other than the chest, a lateral or other non-frontal view, and a
    patient age outside the training population."""
    ds = read_header(path)
    if ds is None:
        return []
    flags = []
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in CHEST_MODALITIES:
        flags.append(f"DICOM Modality {modality}")
    body = str(ds.get("BodyPartExamined", "") or "").upper()
    if body and "CHEST" not in body and "THORAX" not in body:
        flags.append(f"DICOM BodyPartExamined {body}")
    view = str(ds.get("ViewPosition", "") or "").upper()
    if view not in FRONTAL_VIEWS:
        flags.append(f"DICOM ViewPosition {view}")
    raw_age = str(ds.get("PatientAge", "") or "").strip()
    age = age_in_years(raw_age)
    low, high = TRAINING_AGE_YEARS
    if raw_age and age is None:
        flags.append(f"DICOM PatientAge {raw_age!r} unreadable")
    if age is not None and not low <= age < high + 1:
        flags.append(f"DICOM PatientAge {ds.PatientAge} outside the training population ({low}-{high} years)")
    return flags
