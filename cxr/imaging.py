"""Image decoding and resizing, defined once for training, export checks and inference.

The rule (``RESIZE_RULE``): decode, apply the EXIF orientation, bring the pixels to
8-bit, then *squash* the whole image to ``size x size`` with Pillow's antialiased
bilinear filter. The aspect ratio is not kept, which is what Keras's
``flow_from_directory(target_size=...)`` did in the seed and how the shared 224x224
copies were made. Grayscale inputs stay single-channel until the end and are
repeated to 3 channels, so the model always sees uint8 ``HxWx3`` in 0-255.

Large JPEGs are decoded at reduced scale with ``Image.draft`` (libjpeg's DCT
scaling) to at least twice the target size before the final resize.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_RULE = "squash-bilinear-antialias"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")  # plus DICOM: see cxr.dicom
# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 100_000_000
DRAFT_OVERSAMPLE = 2


class ImageDecodeError(ValueError):
    """An input file that cannot be turned into a model input. The message is one line."""


@dataclass(frozen=True)
class DecodeOptions:
    size: int = 128
    use_draft: bool = True
    max_pixels: int = MAX_PIXELS


def is_image_file(path: Path) -> bool:
    """A supported image by extension, or a DICOM file (.dcm, or no extension with a DICM preamble)."""
    from cxr.dicom import is_dicom_file

    if path.name.startswith("."):
        return False
    return path.suffix.lower() in IMAGE_EXTENSIONS or is_dicom_file(path)


def _to_8bit(img: Image.Image) -> Image.Image:
    """Return an 'L' or 'RGB' image holding 8-bit pixels."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        # Full-range linear mapping: 16-bit 0..65535 -> 0..255 (I;16 is 0..65535 too).
        arr = np.clip(arr / 257.0, 0, 255)
        return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("LA", "La"):
        return img.convert("L")
    # P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV ... Alpha is dropped, not composited.
    return img.convert("RGB")


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image file") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"refusing a possible decompression bomb: {exc}") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot open image: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageDecodeError(
            f"image too large ({width}x{height} = {width * height} pixels > {max_pixels}); "
            "refusing a possible decompression bomb"
        )
    if width < 1 or height < 1:
        raise ImageDecodeError("image has no pixels")
    return img


def _open_8bit(path: Path, size: int, use_draft: bool, max_pixels: int) -> Image.Image:
    """Open any supported file as an 8-bit 'L' or 'RGB' Pillow image (before resizing)."""
    from cxr.dicom import is_dicom_file, read_dicom_8bit

    if is_dicom_file(path):
        try:
            return Image.fromarray(read_dicom_8bit(path, max_pixels))
        except ValueError as exc:
            raise ImageDecodeError(str(exc)) from None
    img = _open_checked(path, max_pixels)
    if use_draft and img.format == "JPEG":
        want = size * DRAFT_OVERSAMPLE
        img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (want, want))
    return _to_8bit(ImageOps.exif_transpose(img))


def decode_image(path: str | Path, size: int = 128, *, use_draft: bool = True,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode one file to the model input: uint8 array of shape (size, size, 3).

    Raises ImageDecodeError with a one-line message for anything that is not a
    decodable image.
    """
    try:
        with _open_8bit(Path(path), size, use_draft, max_pixels) as img:
            arr = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"cannot decode image: {message}") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def decode_or_error(path: str | Path, size: int, use_draft: bool = True) -> tuple[np.ndarray | None, str]:
    """Like decode_image, but returns (array, "") or (None, message). Safe for worker pools."""
    if not Path(path).is_file():
        return None, "file not found"
    try:
        return decode_image(path, size, use_draft=use_draft), ""
    except ImageDecodeError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a batch
        return None, f"unexpected decode failure: {type(exc).__name__}: {exc}".splitlines()[0]


def list_images(folder: str | Path) -> list[Path]:
    """All image files under folder, recursively, case-insensitive extensions, sorted,
    hidden files and folders ignored."""
    root = Path(folder)
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and is_image_file(path):
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def decode_pool(workers: int):
    """A process pool for decoding that is safe to start from a process already running
    threaded libraries (onnxruntime, TensorFlow): forkserver on Linux, spawn elsewhere."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


def _decode_strict_chunk(args: tuple[list[str], int]) -> np.ndarray:
    paths, size = args
    return np.stack([decode_image(p, size) for p in paths]) if paths else np.zeros((0, size, size, 3), np.uint8)


def decode_many(paths: list[str], size: int, workers: int | None = None) -> np.ndarray:
    """Decode paths into one (N, size, size, 3) uint8 array with a process pool; any bad
    file raises ImageDecodeError (for curated inputs such as a prepared split)."""
    import math
    import os

    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(paths) < 64:
        return _decode_strict_chunk((list(paths), size))
    step = math.ceil(len(paths) / (workers * 4))
    chunks = [(list(paths[i:i + step]), size) for i in range(0, len(paths), step)]
    with decode_pool(workers) as pool:
        return np.concatenate(list(pool.map(_decode_strict_chunk, chunks)))
