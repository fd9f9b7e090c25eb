from __future__ import annotations

from pathlib import Path

import pytest

from tests.onnx_fixtures import make_tiny_model
from tests.synthetic import make_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def kaggle_folder(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "chest_xray", n_patients=9, images_per_patient=2)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "tiny.onnx")


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "chest_xray").is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
