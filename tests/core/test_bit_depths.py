"""Bit depths and pixel ranges: every way a grey image can be stored in a format cxr reads decodes to
the 8-bit reference, or the row says in ``qc`` how its range was guessed (cxr.imaging)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from cxr.imaging import decode_or_error

SIZE = 32
LOSSLESS_TOLERANCE = 1  # grey levels: rounding of a rescale
JPEG_TOLERANCE = 12  # grey levels: a CMYK JPEG is lossy


def _png_with_sbit(image: Image.Image, path: Path, bits: int) -> None:
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([bits]))
    image.save(path, pnginfo=info)


def _store(grey: np.ndarray, kind: str, folder: Path) -> Path:
    """``grey`` (uint8) stored as ``kind``."""
    wide = grey.astype(np.int64)
    makers = {
        "8-bit png": lambda p: Image.fromarray(grey).save(p),
        "8-bit bmp": lambda p: Image.fromarray(grey).save(p),
        "12-in-16-bit png": lambda p: Image.fromarray(np.rint(wide * 4095 / 255).astype(np.uint16)).save(p),
        "12-in-16-bit png with sBIT": lambda p: _png_with_sbit(
            Image.fromarray(np.rint(wide * 4095 / 255).astype(np.uint16)), p, 12
        ),
        "16-bit png": lambda p: Image.fromarray((wide * 257).astype(np.uint16)).save(p),
        "16-bit tiff": lambda p: Image.fromarray((wide * 257).astype(np.uint16)).save(p),
        "32-bit integer tiff": lambda p: Image.fromarray(
            np.rint(wide * 4095 / 255).astype(np.int32), mode="I"
        ).save(p),
        "float tiff in [0, 1]": lambda p: Image.fromarray((wide / 255.0).astype(np.float32)).save(p),
        "float tiff, any range": lambda p: Image.fromarray((wide * 3.7 - 250.0).astype(np.float32)).save(p),
        "palette png": lambda p: Image.fromarray(grey).convert("P").save(p),
        "grey with alpha (LA) png": lambda p: Image.fromarray(grey).convert("LA").save(p),
        "CMYK jpeg": lambda p: Image.fromarray(grey).convert("CMYK").save(p, quality=95),
    }
    suffix = {"bmp": ".bmp", "tiff": ".tif", "jpeg": ".jpg"}
    path = folder / (
        kind.replace(" ", "_").replace(",", "").replace("[", "").replace("]", "")
        + next((v for k, v in suffix.items() if k in kind), ".png")
    )
    makers[kind](path)
    return path


KINDS = (
    "8-bit png",
    "8-bit bmp",
    "12-in-16-bit png",
    "12-in-16-bit png with sBIT",
    "16-bit png",
    "16-bit tiff",
    "32-bit integer tiff",
    "float tiff in [0, 1]",
    "float tiff, any range",
    "palette png",
    "grey with alpha (LA) png",
    "CMYK jpeg",
)


@st.composite
def grey_images(draw) -> np.ndarray:
    """Grey images with some structure and a range that may or may not reach 0 and 255."""
    side = draw(st.integers(SIZE, 96))
    low = draw(st.integers(0, 120))
    high = draw(st.integers(low + 20, 255))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, side)[None, :] * np.linspace(0.5, 1, side)[:, None]
    image = low + (high - low) * np.clip(ramp + rng.normal(0, 0.05, (side, side)), 0, 1)
    return np.rint(image).astype(np.uint8)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(grey=grey_images())
def test_every_storage_decodes_to_the_8bit_reference_or_says_how_it_guessed(
    tmp_path: Path, kind: str, grey: np.ndarray
) -> None:
    reference, note = decode_or_error(_store(grey, "8-bit png", tmp_path), SIZE)
    assert note == ""
    decoded, note = decode_or_error(_store(grey, kind, tmp_path), SIZE)
    assert decoded is not None, note
    tolerance = JPEG_TOLERANCE if "jpeg" in kind else LOSSLESS_TOLERANCE
    difference = int(np.abs(decoded.astype(int) - reference.astype(int)).max())
    assert difference <= tolerance or note, (kind, difference)
    if difference > tolerance:  # a guessed mapping: the row will carry why
        assert "a guess" in note


def test_12bit_png_is_not_read_black_and_gets_the_8bit_label(tmp_path: Path) -> None:
    """The attack of the report: a 12-bit chest X-ray in a 16-bit PNG was divided by 257 (almost black)."""
    grey = np.tile(np.linspace(20, 230, 64), (64, 1)).astype(np.uint8)
    decoded, note = decode_or_error(_store(grey, "12-in-16-bit png", tmp_path), SIZE)
    assert decoded.mean() > 100 and "read as 12-bit" in note
    declared, note = decode_or_error(_store(grey, "12-in-16-bit png with sBIT", tmp_path), SIZE)
    assert note == "" and abs(float(declared.mean()) - float(decoded.mean())) < 1


def test_a_guessed_mapping_reaches_the_qc_column(tmp_path: Path) -> None:
    from cxr.infer.batch import errors_and_flags

    grey = np.tile(np.linspace(20, 230, 64), (64, 1)).astype(np.uint8)
    path = _store(grey, "32-bit integer tiff", tmp_path)
    errors, flags = errors_and_flags([decode_or_error(path, SIZE)], [str(path)])
    assert errors == [""] and "32-bit file read as 12-bit" in flags[0]
