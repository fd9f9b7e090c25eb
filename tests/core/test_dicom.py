from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pydicom")

from cxr.imaging import ImageDecodeError, decode_image, list_images  # noqa: E402
from cxr.infer.model import OnnxClassifier  # noqa: E402
from tests.dicom_fixtures import write_dicom  # noqa: E402


def _ramp(bits: int) -> np.ndarray:
    """A 64x48 horizontal ramp over the full `bits` range."""
    row = np.linspace(0, 2**bits - 1, 48)
    return np.rint(np.tile(row, (64, 1))).astype(np.uint16)


def _left_right(arr: np.ndarray) -> tuple[float, float]:
    gray = arr[..., 0].astype(float)
    return gray[:, 0].mean(), gray[:, -1].mean()


@pytest.mark.parametrize("bits", [12, 16])
def test_monochrome2_without_voi_uses_the_full_range(tmp_path: Path, bits: int) -> None:
    arr = decode_image(write_dicom(tmp_path / "a.dcm", _ramp(bits), bits_stored=bits), 32)
    left, right = _left_right(arr)
    assert arr.shape == (32, 32, 3) and left < 10 and right > 245


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    arr = decode_image(write_dicom(tmp_path / "m1.dcm", _ramp(12), photometric="MONOCHROME1"), 32)
    left, right = _left_right(arr)
    assert left > 245 and right < 10


def test_window_center_width_is_applied(tmp_path: Path) -> None:
    # window over the lower quarter of 12 bits: the right three quarters saturate to white
    arr = decode_image(write_dicom(tmp_path / "w.dcm", _ramp(12), window=(512, 1024)), 48)
    gray = arr[0, :, 0].astype(int)
    assert gray[0] < 10 and (gray[16:] == 255).all() and 50 < gray[6] < 230


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    lut = np.linspace(65535, 0, 4096).astype(np.uint16)  # an inverting LUT
    arr = decode_image(write_dicom(tmp_path / "l.dcm", _ramp(12), voi_lut=lut), 32)
    left, right = _left_right(arr)
    assert left > 245 and right < 10


def test_rescale_slope_intercept_then_window(tmp_path: Path) -> None:
    # stored 0..4095, rescaled to -1000..3095; a window centred at 0 puts stored ~1000 mid-grey
    arr = decode_image(write_dicom(tmp_path / "r.dcm", _ramp(12), rescale=(1, -1000), window=(0, 200)), 48)
    gray = arr[0, :, 0].astype(int)
    mid = int(np.argmin(np.abs(np.linspace(0, 4095, 48) - 1000)))
    assert gray[0] == 0 and gray[-1] == 255 and 40 < gray[mid] < 215


def test_multiframe_and_non_image_dicom_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="multi-frame"):
        decode_image(write_dicom(tmp_path / "mf.dcm", _ramp(12), frames=3), 32)
    with pytest.raises(ImageDecodeError, match="no image"):
        decode_image(write_dicom(tmp_path / "sr.dcm", _ramp(12), with_pixels=False), 32)


def test_extensionless_dicom_is_found_and_decoded(tmp_path: Path) -> None:
    write_dicom(tmp_path / "IMG0001.dcm", _ramp(12)).rename(tmp_path / "IMG0001")
    (tmp_path / "README").write_text("not dicom")
    assert [p.name for p in list_images(tmp_path)] == ["IMG0001"]
    assert decode_image(tmp_path / "IMG0001", 16).shape == (16, 16, 3)


def dicom_from_8bit(gray: np.ndarray, path: Path, photometric: str = "MONOCHROME1") -> Path:
    """A 12-bit DICOM whose display pipeline gives back ``gray`` (a window over 0..4080)."""
    stored = gray.astype(np.uint16) * 16
    if photometric == "MONOCHROME1":
        stored = 4080 - stored
    return write_dicom(path, stored, photometric=photometric, window=(2040.5, 4081))


def test_dicom_and_png_from_the_same_pipeline_predict_alike(tmp_path: Path, tiny_model: Path) -> None:
    rng = np.random.default_rng(0)
    gray = np.clip(rng.normal(120, 40, (90, 70)), 0, 255).astype(np.uint8)
    dcm = dicom_from_8bit(gray, tmp_path / "x.dcm")
    png = tmp_path / "x.png"
    from cxr.dicom import read_dicom_8bit

    Image.fromarray(read_dicom_8bit(dcm, 10**8)).save(png)
    model = OnnxClassifier(tiny_model)
    p_dcm = model.predict(decode_image(dcm, model.info.input_size)[None])[0]
    p_png = model.predict(decode_image(png, model.info.input_size)[None])[0]
    assert abs(p_dcm - p_png) <= 1e-4
    assert np.array_equal(read_dicom_8bit(dcm, 10**8), gray)


def test_real_images_as_dicom_predict_like_their_png(shared_data: Path, tmp_path: Path) -> None:
    """Real test-split X-rays converted to 12-bit MONOCHROME1 DICOM with a window: the shipped
    model scores each DICOM like the PNG the same display pipeline makes from it."""
    model_path = Path(__file__).resolve().parents[2] / "models" / "model1.onnx"
    if not model_path.is_file():
        pytest.skip("no shipped model")
    from cxr.dicom import read_dicom_8bit

    model = OnnxClassifier(model_path)
    sources = (
        sorted((shared_data / "chest_xray" / "test" / "PNEUMONIA").iterdir())[:3]
        + sorted((shared_data / "chest_xray" / "test" / "NORMAL").iterdir())[:3]
    )
    for source in sources:
        gray = np.asarray(Image.open(source).convert("L"))
        dcm = dicom_from_8bit(gray, tmp_path / f"{source.stem}.dcm")
        png = tmp_path / f"{source.stem}.png"
        Image.fromarray(read_dicom_8bit(dcm, 10**8)).save(png)
        p_dcm = model.predict(decode_image(dcm, model.info.input_size)[None])[0]
        p_png = model.predict(decode_image(png, model.info.input_size)[None])[0]
        p_jpeg = model.predict(decode_image(source, model.info.input_size)[None])[0]
        assert abs(p_dcm - p_png) <= 1e-4
        assert abs(p_dcm - p_jpeg) <= 1e-4  # the window over 0..4080 gives back the original grey levels
