from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cxr.app.cli import cxr
from cxr.data import DataPrepError, load_manifest, patient_id_from_name, prepare_splits


@pytest.mark.parametrize(
    "name,expected",
    [
        ("person123_bacteria_45.jpeg", "person123"),
        ("person1_virus_6.jpeg", "person1"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("NORMAL2-IM-0246-0001-0002.jpeg", "NORMAL2-IM-0246"),
        ("scan_07.png", "scan_07"),
    ],
)
def test_patient_id_from_name(name: str, expected: str) -> None:
    assert patient_id_from_name(name) == expected


def test_split_is_grouped_by_patient_and_accounts_for_every_file(kaggle_folder: Path, tmp_path: Path) -> None:
    result = prepare_splits(kaggle_folder, tmp_path / "splits", seed=3)
    manifest = result.manifest
    assert list(manifest.columns) == ["path", "label", "split", "patient_id", "sha256"]
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert result.summary.accounted and result.summary.images_kept == 36
    assert result.summary.patients_on_several_splits == 0


def test_rerun_gives_byte_identical_manifest(kaggle_folder: Path, tmp_path: Path) -> None:
    first = prepare_splits(kaggle_folder, tmp_path / "a", seed=7).manifest_path.read_bytes()
    second = prepare_splits(kaggle_folder, tmp_path / "b", seed=7).manifest_path.read_bytes()
    assert first == second


def test_duplicates_are_dropped_and_reported(kaggle_folder: Path, tmp_path: Path) -> None:
    src = next((kaggle_folder / "train" / "NORMAL").iterdir())
    shutil.copy(src, src.with_name("IM-0000-0009.jpeg"))  # same patient, same content
    conflict = next((kaggle_folder / "train" / "PNEUMONIA").iterdir())
    shutil.copy(conflict, kaggle_folder / "train" / "NORMAL" / "IM-0099-0001.jpeg")  # same bytes, other class
    summary = prepare_splits(kaggle_folder, tmp_path / "s").summary
    reasons = sorted(d.reason for d in summary.dropped_duplicates)
    assert reasons == [
        "duplicate content",
        "identical file under another class",
        "identical file under another class",
    ]
    assert summary.accounted


def test_bad_inputs_are_listed_not_dropped_silently(kaggle_folder: Path, tmp_path: Path) -> None:
    (kaggle_folder / "train" / "OTHER").mkdir()
    (kaggle_folder / "train" / "OTHER" / "x.jpeg").write_bytes(b"x")
    (kaggle_folder / "train" / "NORMAL" / "IM-0500-0001.jpeg").write_bytes(b"broken")
    (kaggle_folder / "README.md").write_text("hi")
    (kaggle_folder / ".DS_Store").write_text("mac")
    summary = prepare_splits(kaggle_folder, tmp_path / "s").summary
    reasons = {item.path: item.reason for item in summary.skipped_files}
    assert reasons["train/OTHER/x.jpeg"] == "unknown class folder 'OTHER'"
    assert reasons["train/NORMAL/IM-0500-0001.jpeg"].startswith("unreadable")
    assert reasons["README.md"] == "not an image file extension"
    assert summary.hidden_files_ignored == 1 and summary.accounted


def test_missing_or_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataPrepError, match="not found"):
        prepare_splits(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataPrepError, match="no usable images"):
        prepare_splits(tmp_path / "empty", tmp_path / "out")


def test_class_folder_layout_and_manifest_paths_resolve(tmp_path: Path) -> None:
    from tests.synthetic import make_dataset

    root = make_dataset(tmp_path / "flat", n_patients=6, layout="classes")
    result = prepare_splits(root, tmp_path / "splits")
    frame = load_manifest(result.manifest_path)
    assert all(Path(p).is_file() for p in frame["abspath"])


def test_image_split_warns_about_patient_leakage(tmp_path: Path) -> None:
    from tests.synthetic import make_dataset

    root = make_dataset(tmp_path / "many", n_patients=12, images_per_patient=4)
    runner = CliRunner()
    result = runner.invoke(
        cxr, ["data", "prepare", "--source", str(root), "--out", str(tmp_path / "s"), "--split-by", "image"]
    )
    assert result.exit_code == 0
    leaked = json.loads((tmp_path / "s" / "summary.json").read_text())["patients_on_several_splits"]
    assert leaked > 0 and f"puts {leaked} patients on more than one side" in result.output


def test_cli_missing_source_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cxr, ["data", "prepare", "--source", str(tmp_path / "x"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "not found" in result.output


@pytest.mark.slow
def test_real_data_split_meets_the_spec(shared_data: Path, tmp_path: Path) -> None:
    result = prepare_splits(shared_data / "chest_xray", tmp_path / "splits")
    s = result.summary
    assert s.patients_on_several_splits == 0 and s.accounted
    for split, target in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        for fraction in s.class_fractions[split].values():
            assert abs(fraction - target) <= 0.01
    again = prepare_splits(shared_data / "chest_xray", tmp_path / "again")
    assert result.manifest_path.read_bytes() == again.manifest_path.read_bytes()
    assert s.duplicates_dropped == 25
    assert pd.read_csv(result.manifest_path)["sha256"].is_unique


def test_patient_ids_agree_with_the_shared_manifest(shared_data: Path) -> None:
    reference = pd.read_csv(shared_data / "chest_xray" / "MANIFEST.csv")
    ours = reference["relpath"].map(lambda p: patient_id_from_name(Path(p).name))
    assert (ours == reference["patient_id"]).all() and len(reference) == 5206


@pytest.mark.parametrize(
    "neg,pos,auc,says",
    [
        ((224, 224), (224, 224), 0.24, "the same median 224x224 in both classes, but their spread differs"),
        ((224, 224), (224, 224), 0.52, "do not separate the classes"),
        (
            (1800, 1500),
            (1200, 900),
            0.80,
            "original sizes differ by class: median 1800x1500 (NORMAL) vs 1200x900",
        ),
    ],
)
def test_size_finding_never_says_equal_sizes_differ(neg, pos, auc, says) -> None:
    from cxr.shortcut import GroupCheck, _size_finding

    size = GroupCheck(
        ("width", "height"),
        100,
        cv_auc=auc,
        median_negative={"width": neg[0], "height": neg[1]},
        median_positive={"width": pos[0], "height": pos[1]},
    )
    assert says in _size_finding(size, "NORMAL", "PNEUMONIA")
