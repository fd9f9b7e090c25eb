"""Image decoding and resizing, defined once for training, export checks and inference.

The rule (``RESIZE_RULE``): decode, apply the EXIF orientation, bring the pixels to
8-bit, then *squash* the whole image to ``size x size`` with Pillow's antialiased
bilinear filter. The aspect ratio is not kept, which is what Keras's
``flow_from_directory(target_size=...)`` did in the seed and how the shared 224x224
copies were made. Grayscale inputs stay single-channel until the end and are
repeated to 3 channels, so the model always sees uint8 ``HxWx3`` in 0-255.

Large JPEGs are decoded at reduced scale with ``Image.draft`` (libjpeg's DCT
scaling: 1/2, 1/4 or 1/8) to the smallest scale that still covers the target size
(``DRAFT_OVERSAMPLE`` = 1) before the final resize; results/decode_scale.md measures
this against the earlier rule, at least twice the target size (2).
``CXR_BENCH_DRAFT_OVERSAMPLE`` overrides it in every process that decodes, only so
that benchmark.py can time the earlier rule end to end.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr.errors import InputError
from cxr.messages import first_line

RESIZE_RULE = "squash-bilinear-antialias"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")  # plus DICOM: see cxr.dicom
# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 100_000_000
DRAFT_OVERSAMPLE = float(os.environ.get("CXR_BENCH_DRAFT_OVERSAMPLE") or 1)


class ImageDecodeError(InputError, ValueError):
    """An input file that cannot be turned into a model input. The message is one line."""


def is_image_file(path: Path) -> bool:
    """A supported image by extension, or a DICOM file (.dcm, or no extension with a DICM preamble)."""
    from cxr.dicom import is_dicom_file

    if path.name.startswith("."):
        return False
    return path.suffix.lower() in IMAGE_EXTENSIONS or is_dicom_file(path)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
FLOAT_PERCENTILES = (0.5, 99.5)


def png_significant_bits(path: str | Path | None) -> int | None:
    """The bits that carry data in a PNG, from its sBIT chunk (the highest channel's), or None."""
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != PNG_SIGNATURE:
                return None
            while len(head := handle.read(8)) == 8:
                length, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind == b"sBIT":
                    data = handle.read(length)
                    return max(data) if data else None
                if kind in (b"IDAT", b"IEND"):
                    return None
                handle.seek(length + 4, 1)
    except OSError:
        return None
    return None


def _wide_to_8bit(img: Image.Image, path: str | Path | None) -> tuple[Image.Image, str]:
    """An integer or float image (16-bit, 32-bit, float) mapped to 8 bits by its real range, and a
    note for the ``qc`` column when that range is a guess.

    - float in [0, 1]: as such; other floats: their 0.5th-99.5th percentiles (a guess);
    - integers: the PNG sBIT chunk's bit depth where present; otherwise the smallest bit depth
      (8 to 16) that holds the highest value, so 12-bit data in a 16-bit file is read as 12-bit
      (a guess unless it is the full 16 bits); negative integers: their own range (a guess)."""
    arr = np.asarray(img, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise ImageDecodeError("image holds no finite pixel values")
    low, high = float(finite.min()), float(finite.max())
    note = ""
    if img.mode == "F" and low >= 0.0 and high <= 1.0:
        span_low, span_high = 0.0, 1.0
    elif img.mode == "F" or low < 0:
        span_low, span_high = (float(v) for v in np.percentile(finite, FLOAT_PERCENTILES))
        kind = "float" if img.mode == "F" else "signed integer"
        note = f"{kind} image mapped by its own range ({span_low:.4g} to {span_high:.4g}; a guess)"
    else:
        declared = png_significant_bits(path)
        bits = declared or max(8, min(16 if high < 65536 else 32, int(np.ceil(np.log2(high + 1)))))
        span_low, span_high = 0.0, float(2**bits - 1)
        container = 16 if img.mode.startswith("I;16") else 32
        if not declared and bits != container:
            note = (
                f"{container}-bit file read as {bits}-bit (highest value {int(high)}, no significant-bits "
                "chunk; a guess)"
            )
    scaled = (np.nan_to_num(arr, nan=span_low) - span_low) / max(span_high - span_low, 1e-12) * 255.0
    return Image.fromarray(np.rint(np.clip(scaled, 0, 255)).astype(np.uint8), mode="L"), note


def _to_8bit(img: Image.Image, path: str | Path | None = None) -> tuple[Image.Image, str]:
    """An 'L' or 'RGB' image holding 8-bit pixels, and a note when its mapping was a guess."""
    if img.mode in ("L", "RGB"):
        return img, ""
    if img.mode in WIDE_MODES:
        return _wide_to_8bit(img, path)
    if img.mode in ("1", "LA", "La"):
        return img.convert("L"), ""
    # P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV ... Alpha is dropped, not composited.
    return img.convert("RGB"), ""


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
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        img.close()
        raise ImageDecodeError(
            f"multi-page {img.format} ({frames} pages): one image per file is expected; split the pages "
            "into files"
        )
    return img


def _open_8bit(
    path: Path, size: int, use_draft: bool, max_pixels: int, oversample: float | None = None
) -> tuple[Image.Image, str]:
    """Open any supported file as an 8-bit 'L' or 'RGB' Pillow image (before resizing), with the
    note of a guessed bit-depth mapping ('' when none)."""
    from cxr.dicom import is_dicom_file, read_dicom_8bit

    if is_dicom_file(path):
        try:
            return Image.fromarray(read_dicom_8bit(path, max_pixels)), ""
        except ValueError as exc:
            raise ImageDecodeError(str(exc)) from None
    img = _open_checked(path, max_pixels)
    if use_draft and img.format == "JPEG":
        want = max(1, round(size * (oversample or DRAFT_OVERSAMPLE)))
        img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (want, want))
    return _to_8bit(ImageOps.exif_transpose(img), path)


def decode_image(
    path: str | Path,
    size: int = 128,
    *,
    use_draft: bool = True,
    max_pixels: int = MAX_PIXELS,
    oversample: float | None = None,
) -> np.ndarray:
    """Decode one file to the model input: uint8 array of shape (size, size, 3).

    Raises ImageDecodeError with a one-line message for anything that is not a
    decodable image. ``oversample``: the DCT-scale rule (decode JPEGs to at least this multiple
    of ``size``) [default: ``DRAFT_OVERSAMPLE``].
    """
    return decode_noted(path, size, use_draft=use_draft, max_pixels=max_pixels, oversample=oversample)[0]


def decode_noted(
    path: str | Path,
    size: int = 128,
    *,
    use_draft: bool = True,
    max_pixels: int = MAX_PIXELS,
    oversample: float | None = None,
) -> tuple[np.ndarray, str]:
    """``decode_image``, and the note of a guessed bit-depth mapping ('' when none)."""
    try:
        img, note = _open_8bit(Path(path), size, use_draft, max_pixels, oversample)
        with img:
            arr = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        message = first_line(exc)
        raise ImageDecodeError(f"cannot decode image: {message}") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr), note


MIN_SIDE = 64  # pixels: a smaller image cannot show a chest at the model's resolution
MAX_ASPECT = 2.0  # long side / short side above which an image is not a chest radiograph


def source_flags(path: str | Path) -> str:
    """The ``qc`` reasons that the file itself gives (its header only, not its pixels): a tiny
    image, an extreme aspect ratio, and for DICOM what the header says (see cxr.dicom)."""
    from cxr.dicom import header_flags, is_dicom_file

    path = Path(path)
    if is_dicom_file(path):
        return "; ".join(header_flags(path))
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:  # noqa: BLE001 - the decoder reports unreadable files
        return ""
    flags = []
    if min(width, height) < MIN_SIDE:
        flags.append(f"tiny image ({width}x{height})")
    if max(width, height) > MAX_ASPECT * min(width, height):
        flags.append(f"extreme aspect ratio ({width}x{height})")
    return "; ".join(flags)


def file_problem(path: str | Path) -> str:
    """Why ``path`` cannot be opened as a file ("" when it can): missing, a broken or looping
    symbolic link, or not a regular file."""
    import errno
    import os

    try:
        if os.path.isfile(os.fspath(path)) and os.stat(path):
            return ""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot open: {exc.strerror or exc}"
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as exc:
            return "symbolic link loop" if exc.errno == errno.ELOOP else "broken symbolic link"
    return "file not found" if not os.path.lexists(path) else "not a regular file"


def decode_or_error(path: str | Path, size: int, use_draft: bool = True) -> tuple[np.ndarray | None, str]:
    """Like decode_image, but never raises: (array, note) where the note says how a 16-bit, 32-bit
    or float image was mapped when that was a guess ('' otherwise), or (None, error message).
    Safe for worker pools."""
    problem = file_problem(path)
    if problem:
        return None, problem
    try:
        return decode_noted(path, size, use_draft=use_draft)
    except ImageDecodeError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a batch
        return None, f"unexpected decode failure: {type(exc).__name__}: {exc}".splitlines()[0]


OUTPUT_MARKERS = (".cxr-output", ".cxr.lock")  # a folder cxr wrote its outputs into (see app.infer)


def is_cxr_output(folder: str | Path) -> bool:
    """A folder that holds cxr's outputs (an earlier run's report figures are not data)."""
    return any(Path(folder, marker).exists() for marker in OUTPUT_MARKERS)


def list_images(folder: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Every image file under ``folder``, recursively: supported extensions (any case) and DICOM,
    hidden files and folders ignored, ``exclude`` (an output folder inside it) and any folder that
    holds an earlier cxr run's outputs skipped, sorted by relative path bytes. Broken or looping
    symbolic links with an image name are listed too, so that they get an error row. Directory
    links are not followed (no cycles); linear in files."""
    import os

    root = Path(folder)
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs[:] = [
            d
            for d in subdirs
            if not d.startswith(".")
            and (skip is None or Path(directory, d).resolve() != skip)
            and not is_cxr_output(Path(directory, d))
        ]
        for name in files:
            path = Path(directory, name)
            if not name.startswith(".") and (
                path.suffix.lower() in IMAGE_EXTENSIONS or _is_dicom_quietly(path)
            ):
                found.append(path)
    return sorted(found, key=lambda p: os.fsencode(p.relative_to(root)))


def _is_dicom_quietly(path: Path) -> bool:
    from cxr.dicom import is_dicom_file

    try:
        return is_dicom_file(path)
    except OSError:
        return False


def _exit_with(owner_pid: int) -> None:
    """Worker initializer: a watcher thread ends this worker when the process that owns the pool
    ends, however it ends (``kill -9`` included). Its parent is the forkserver, which in turn
    waits for its workers, so the parent's death cannot be the signal."""
    import os
    import select
    import threading
    import time

    def watch() -> None:
        try:
            handle = os.pidfd_open(owner_pid)  # Linux >= 5.3: readable once the owner has ended
            select.select([handle], [], [])
        except (AttributeError, OSError):
            while True:
                time.sleep(1.0)
                try:
                    os.kill(owner_pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    continue
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-owner", daemon=True).start()


def decode_pool(workers: int):
    """A process pool for decoding that is safe to start from a process already running
    threaded libraries (onnxruntime, TensorFlow): forkserver on Linux, spawn elsewhere.
    Its workers end when the process that started the pool does."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_exit_with,
        initargs=(os.getpid(),),
    )


def _decode_chunk(args: tuple[list[str], int]) -> list[tuple[np.ndarray | None, str]]:
    paths, size = args
    return [decode_or_error(p, size) for p in paths]


def decoded_stream(
    paths: list[str] | list[Path],
    size: int,
    workers: int,
    chunk: int = 8,
    max_chunks_in_flight: int | None = None,
) -> Iterator[tuple[np.ndarray | None, str]]:
    """(image or None, error message) for each path, in input order, decoded by a pool of
    ``workers`` processes (0: in-process). At most ``max_chunks_in_flight`` chunks are queued or
    held at once, so memory stays bounded on folders of any size."""
    from collections import deque

    chunks = [([str(p) for p in paths[i : i + chunk]], size) for i in range(0, len(paths), chunk)]
    if workers <= 0 or len(chunks) < 2:
        for job in chunks:
            yield from _decode_chunk(job)
        return
    limit = max_chunks_in_flight or workers * 4
    with decode_pool(workers) as pool:
        pending: deque = deque()
        for job in chunks:
            pending.append(pool.submit(_decode_chunk, job))
            if len(pending) >= limit:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def decode_many(paths: list[str], size: int, workers: int | None = None) -> np.ndarray:
    """Decode paths into one (N, size, size, 3) uint8 array; any bad file raises
    ImageDecodeError naming it (for curated inputs such as a prepared split)."""
    import os

    workers = (os.cpu_count() or 1) if workers is None else workers
    images = np.zeros((len(paths), size, size, 3), np.uint8)
    for index, (image, error) in enumerate(
        decoded_stream(paths, size, workers if len(paths) >= 64 else 0, chunk=32)
    ):
        if image is None:
            raise ImageDecodeError(f"{paths[index]}: {error}")
        images[index] = image
    return images
