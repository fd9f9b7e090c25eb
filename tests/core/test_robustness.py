"""The robustness suite and the shortcut check (issue: the shipped models read noise, not lungs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cxr.app.cli import cxr
from cxr.perturb import SUITE, SUITE_NAMES, perturb_batch, perturbation
from tests.onnx_fixtures import make_tiny_model
from tests.synthetic import make_texture_classes

REQUIRED = {
    "noise1",
    "noise2",
    "noise3",
    "noise5",
    "noise2rgb",
    "blur",
    "downscale0.5",
    "jpeg30",
    "jpeg50",
    "jpeg75",
    "brightness-10",
    "brightness-5",
    "brightness+5",
    "brightness+10",
    "contrast-10",
    "contrast+10",
    "gamma0.8",
    "gamma1.2",
    "rotate-5",
    "rotate+5",
}


@pytest.fixture
def texture_set(tmp_path: Path) -> Path:
    return make_texture_classes(tmp_path / "data")


@pytest.fixture
def brittle_model(tmp_path: Path) -> Path:
    """Reads high-frequency energy (NORMAL ~0.6, PNEUMONIA ~4.5 on the texture set): a shortcut."""
    return make_tiny_model(tmp_path / "brittle.onnx", reads="texture", centre=2.5, scale=3.0)


@pytest.fixture
def steady_model(tmp_path: Path) -> Path:
    """Reads brightness, far from the threshold on these images: unmoved by the suite."""
    return make_tiny_model(tmp_path / "steady.onnx", centre=40.0, scale=0.2)


def _batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 200, (6, 32, 32, 3), dtype=np.uint8)


def test_the_suite_is_the_issue_list() -> None:
    assert REQUIRED <= set(SUITE_NAMES) and len(set(SUITE_NAMES)) == len(SUITE_NAMES)


def test_perturbations_are_deterministic_per_seed_and_image_index() -> None:
    images = _batch()
    for item in SUITE:
        once, again = perturb_batch(images, item, seed=3), perturb_batch(images, item, seed=3)
        assert once.dtype == np.uint8 and once.shape == images.shape and np.array_equal(once, again), (
            item.name
        )
    noise = perturbation("noise2")
    assert not np.array_equal(perturb_batch(images, noise, 3), perturb_batch(images, noise, 4))
    # image i gets the same noise whether scored alone or in a batch: batching cannot change results
    alone = perturb_batch(images[4:5], noise, 3, first_index=4)
    assert np.array_equal(alone[0], perturb_batch(images, noise, 3)[4])


def test_noise_has_the_named_strength() -> None:
    flat = np.full((1, 128, 128, 3), 128, np.uint8)
    for sd in (1, 2, 3, 5):
        diff = perturb_batch(flat, perturbation(f"noise{sd}"), 0).astype(float) - 128
        assert diff.std() == pytest.approx(sd, rel=0.1)
        assert np.array_equal(diff[..., 0], diff[..., 2])  # one grey noise field, as for a grey X-ray
    rgb = perturb_batch(flat, perturbation("noise2rgb"), 0).astype(float) - 128
    assert rgb.std() == pytest.approx(2, rel=0.1) and not np.array_equal(rgb[..., 0], rgb[..., 1])


def test_robustness_run_is_deterministic(tmp_path: Path, texture_set: Path, brittle_model: Path) -> None:
    runs = []
    for name in ("a", "b"):
        result = CliRunner().invoke(
            cxr,
            [
                "robustness",
                "--model",
                str(brittle_model),
                "--data",
                str(texture_set),
                "--out",
                str(tmp_path / name),
                "--workers",
                "0",
                "-q",
            ],
        )
        assert result.exit_code == 0, result.output
        runs.append(json.loads((tmp_path / name / "robustness.json").read_text())["perturbations"])
    assert runs[0] == runs[1]
    assert (tmp_path / "a" / "robustness.png").is_file() and "noise2" in (
        tmp_path / "a" / "robustness.md"
    ).read_text()


def test_gate_fails_a_brittle_model_and_passes_a_steady_one(
    tmp_path: Path, texture_set: Path, brittle_model: Path, steady_model: Path
) -> None:
    args = ["--data", str(texture_set), "--max-flip", "noise2=0.02", "--workers", "0", "-q"]
    brittle = CliRunner().invoke(
        cxr, ["robustness", "--model", str(brittle_model), "--out", str(tmp_path / "b"), *args]
    )
    assert brittle.exit_code == 1, brittle.output
    flips = json.loads((tmp_path / "b" / "robustness.json").read_text())["perturbations"]["noise2"]["classes"]
    assert flips["NORMAL"]["flip_rate"] > 0.5 and flips["NORMAL"]["called_other"] > 0.5
    steady = CliRunner().invoke(
        cxr, ["robustness", "--model", str(steady_model), "--out", str(tmp_path / "s"), *args]
    )
    assert steady.exit_code == 0, steady.output


def test_evaluate_gates_on_flips_and_reports_the_suite(
    tmp_path: Path, texture_set: Path, brittle_model: Path
) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(brittle_model),
            "--data",
            str(texture_set),
            "--out",
            str(out),
            "--history",
            str(tmp_path / "h.csv"),
            "--max-flip",
            "noise2=0.02",
            "--workers",
            "0",
            "--n-boot",
            "20",
            "-q",
        ],
    )
    assert result.exit_code == 1, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["robustness"]["brittle"]["perturbations"]["noise2"]["max_flip_rate"] > 0.02
    assert not metrics["gate"]["passed"] and "robustness noise2" in " ".join(metrics["gate"]["messages"])
    html = (out / "report.html").read_text()
    assert "robustness suite" in html and "noise2" in html


def test_bad_max_flip_is_a_usage_error(tmp_path: Path, texture_set: Path, brittle_model: Path) -> None:
    for spec in ("noise9=0.1", "noise2", "noise2=abc", "noise2=nan", "noise2=1.5"):
        result = CliRunner().invoke(
            cxr,
            [
                "robustness",
                "--model",
                str(brittle_model),
                "--data",
                str(texture_set),
                "--out",
                str(tmp_path / "o"),
                "--max-flip",
                spec,
            ],
        )
        assert result.exit_code == 2, (spec, result.output)


def test_shortcut_check_flags_classes_that_differ_only_in_noise(texture_set: Path) -> None:
    from cxr.data import patient_id_from_name
    from cxr.imaging import list_images
    from cxr.shortcut import shortcut_check

    paths = list_images(texture_set)
    result = shortcut_check(
        [str(p) for p in paths],
        [p.parent.name for p in paths],
        [patient_id_from_name(p.name) for p in paths],
        ("NORMAL", "PNEUMONIA"),
        size=32,
    )
    texture = result.groups["noise / high-frequency texture"]
    assert texture.cv_auc > 0.9
    assert texture.median_positive["noise_sigma"] > texture.median_negative["noise_sigma"]
    assert result.verdict.startswith("SHORTCUT RISK") and "texture" in result.verdict
    assert result.groups["original size (width, height)"].cv_auc is None  # every image 32x32


def test_data_prepare_prints_and_stores_the_shortcut_check(tmp_path: Path, kaggle_folder: Path) -> None:
    result = CliRunner().invoke(
        cxr, ["data", "prepare", "--source", str(kaggle_folder), "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 0, result.output
    assert "shortcut check" in result.output and "verdict" in result.output
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert set(summary["shortcut_check"]["groups"]) == {
        "noise / high-frequency texture",
        "intensity (mean, std)",
        "original size (width, height)",
    }


def test_immerkaer_estimate_recovers_the_noise_of_a_flat_image() -> None:
    from cxr.shortcut import immerkaer_sigma

    rng = np.random.default_rng(0)
    for sd in (1.0, 3.0, 8.0):
        assert immerkaer_sigma(100 + rng.normal(0, sd, (256, 256))) == pytest.approx(sd, rel=0.05)


def test_files_of_a_manifest_that_are_missing_are_said_and_make_the_run_partial(
    tmp_path: Path, texture_set: Path, steady_model: Path
) -> None:
    import pandas as pd

    present = sorted(p.relative_to(texture_set).as_posix() for p in texture_set.rglob("*.png"))
    rows = [
        {"path": rel, "label": rel.split("/")[0], "split": "test", "patient_id": f"p{i}", "sha256": "0" * 64}
        for i, rel in enumerate(present)
    ]
    rows += [
        {
            "path": f"NORMAL/gone{i}.png",
            "label": "NORMAL",
            "split": "test",
            "patient_id": f"g{i}",
            "sha256": "0" * 64,
        }
        for i in range(3)
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    result = CliRunner().invoke(
        cxr,
        [
            "robustness",
            "--model",
            str(steady_model),
            "--data",
            str(texture_set),
            "--manifest",
            str(manifest),
            "--out",
            str(tmp_path / "r"),
            "--workers",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 4, result.output
    assert (
        f"3 of {len(present) + 3} files were left out of the suite (first: NORMAL/gone0.png: file not found)"
        in result.output
    )
    saved = json.loads((tmp_path / "r" / "robustness.json").read_text())
    assert saved["skipped_files"] == 3 and saved["left_out"][0]["why"] == "file not found"
