"""Hostile data folders given to ``cxr data prepare``: each test is one attack and what must happen."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from cxr.app.cli import cxr
from tests.synthetic import make_dataset

# attacks ------------------------------------------------------------------------------------------


def test_attack_non_utf8_name_in_data_prepare(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_patients=6, images_per_patient=1)
    name = next((data / "train" / "NORMAL").iterdir())
    os.rename(name, os.fsencode(name.parent) + b"/IM-0099-\xff-0001.jpeg")
    result = CliRunner().invoke(
        cxr, ["data", "prepare", "--source", str(data), "--out", str(tmp_path / "s"), "--no-shortcut-check"]
    )
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(tmp_path / "s" / "manifest.csv", dtype=str)
    assert "train/NORMAL/IM-0099-\\xff-0001.jpeg" in set(manifest["path"])


def test_attack_too_few_patients_for_a_grouped_split(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_patients=3, images_per_patient=2)
    result = CliRunner().invoke(cxr, ["data", "prepare", "--source", str(data), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "at least 5 patients per class" in result.output
