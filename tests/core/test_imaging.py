from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.imaging import ImageDecodeError, decode_image, decode_or_error, list_images


def _gray(size=(80, 60)) -> np.ndarray:
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    return ((xx * 3 + yy * 2) % 256).astype(np.uint8)


@pytest.mark.parametrize(
    "mode,ext",
    [
        ("L", "png"),
        ("L", "jpg"),
        ("RGB", "png"),
        ("RGB", "jpeg"),
        ("RGBA", "png"),
        ("P", "png"),
        ("CMYK", "jpg"),
        ("LA", "png"),
        ("1", "png"),
        ("I;16", "png"),
        ("RGB", "bmp"),
        ("L", "tif"),
    ],
)
def test_formats_decode_to_uint8_rgb(tmp_path: Path, mode: str, ext: str) -> None:
    base = Image.fromarray(_gray())
    image = Image.fromarray(_gray().astype(np.uint16) * 257) if mode == "I;16" else base.convert(mode)
    path = tmp_path / f"img.{ext}"
    image.save(path)
    arr = decode_image(path, 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert arr.std() > 5  # content survived


def test_16bit_maps_full_range_like_8bit(tmp_path: Path) -> None:
    eight = tmp_path / "eight.png"
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(_gray()).save(eight)
    Image.fromarray(_gray().astype(np.uint16) * 257).save(sixteen)
    assert np.array_equal(decode_image(eight, 32), decode_image(sixteen, 32))


def test_grayscale_is_repeated_to_three_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    Image.fromarray(_gray()).save(path)
    arr = decode_image(path, 16)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    wide = np.zeros((40, 80), np.uint8)
    wide[:, :40] = 255  # left half white
    image = Image.fromarray(wide)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif, quality=95)
    arr = decode_image(path, 32)[..., 0].astype(int)
    assert arr[:16].mean() > arr[16:].mean() + 100  # white half now on top


def test_draft_decode_stays_close_to_full_decode(tmp_path: Path) -> None:
    """Reduced-scale JPEG decoding: mean |diff| <= 1.5 and 99th percentile <= 8 grey levels
    (0-255) against a full decode plus the same resize."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:2000, 0:2400] / 2000
    img = 120 + 60 * np.sin(xx * 9) * np.cos(yy * 7) + rng.normal(0, 4, xx.shape)
    path = tmp_path / "big.jpg"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=92)
    fast = decode_image(path, 128, use_draft=True).astype(int)
    full = decode_image(path, 128, use_draft=False).astype(int)
    diff = np.abs(fast - full)
    assert diff.mean() <= 1.5
    assert np.percentile(diff, 99) <= 8


@pytest.mark.parametrize("oversample, scale", [(None, 4), (1, 4), (2, 2)])
def test_jpegs_decode_at_the_smallest_dct_scale_that_covers_the_target(
    tmp_path: Path, monkeypatch, oversample, scale
) -> None:
    """A 1000x700 JPEG for a 128 px input: the default rule (>= 1x the target) decodes it at 1/4
    (250x175 pixels), the earlier rule (>= 2x) at 1/2 (results/decode_scale.md)."""
    from PIL import JpegImagePlugin

    real, used = JpegImagePlugin.JpegImageFile.draft, []

    def spy(self, mode, size):
        found = real(self, mode, size)
        used.append(self.decoderconfig[0])
        return found

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    path = tmp_path / "wide.jpg"
    Image.fromarray(_gray((1000, 700))).save(path, quality=92)
    assert decode_image(path, 128, oversample=oversample).shape == (128, 128, 3)
    assert used == [scale]


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00garbage"])
def test_bad_files_raise_one_line_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path, 32)
    assert "\n" not in str(info.value)


def test_truncated_jpeg_gives_error_row_message(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_gray((400, 300))).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    arr, error = decode_or_error(path, 32)
    assert arr is None and error


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(path)  # 144 Mpx, a few KB on disk
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(path, 32)


def test_list_images_is_recursive_sorted_case_insensitive_and_skips_hidden(tmp_path: Path) -> None:
    for rel in ["b/x.PNG", "a/y.jpeg", "a/z.TIFF", "c.bmp", ".hidden/q.png", "a/.w.png", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/y.jpeg", "a/z.TIFF", "b/x.PNG", "c.bmp"]
