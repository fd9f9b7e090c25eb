"""The committed results: the tables of README.md, docs/results.md and docs/robustness.md match
results/metrics.json and results/domain/summary.json, and the shipped model reproduces the
committed example predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.artifacts import MetricsReport
from cxr.reports.render import update_readme

ROOT = Path(__file__).resolve().parents[2]
METRICS = ROOT / "results" / "metrics.json"
MODEL = ROOT / "models" / "model1.onnx"
EXPECTED = ROOT / "examples" / "expected_predictions.csv"
# The files that hold the tables written from metrics.json (the Makefile's GENERATED_DOCS).
GENERATED_DOCS = [ROOT / "README.md", ROOT / "docs" / "results.md", ROOT / "docs" / "robustness.md"]
DOMAIN_SUMMARY = ROOT / "results" / "domain" / "summary.json"


def _block(text: str, tag: str) -> str:
    return text.split(f"<!-- {tag}:start -->\n", 1)[1].split(f"<!-- {tag}:end -->", 1)[0]


def test_the_results_tables_match_metrics_json() -> None:
    """README.md (shipped models), docs/results.md (every model) and docs/robustness.md hold what
    `make results` writes from results/metrics.json."""
    if not METRICS.is_file():
        pytest.skip("no committed results yet")
    makefile = (ROOT / "Makefile").read_text().split("\nGENERATED_DOCS := ", 1)[1].split("\n", 1)[0].split()
    assert [ROOT / name for name in makefile] == GENERATED_DOCS  # what `make results` rewrites
    expected = update_readme(MetricsReport.read(METRICS), *GENERATED_DOCS, write=False)
    for path in GENERATED_DOCS:
        assert path.read_text(encoding="utf-8") == expected[path], (
            f"{path.relative_to(ROOT)} is out of date: "
            "run `python -m cxr.reports.render results/metrics.json "
            "--update-readme README.md docs/results.md docs/robustness.md` (part of `make results`)"
        )


def test_the_readme_results_table_is_the_shipped_rows_of_the_full_table() -> None:
    readme = _block((ROOT / "README.md").read_text(encoding="utf-8"), "results").splitlines()
    full = _block((ROOT / "docs" / "results.md").read_text(encoding="utf-8"), "results-all").splitlines()
    assert set(readme) <= set(full) and len(readme) < len(full)
    assert {row.split(" | ")[0] for row in readme} >= {"| model1", "| model2"}


def test_the_domain_tables_match_the_domain_summary() -> None:
    """README.md holds the tables `make domain` writes from results/domain/summary.json."""
    if not DOMAIN_SUMMARY.is_file():
        pytest.skip("no committed domain results yet")
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from domain_results import tables
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    block = _block((ROOT / "README.md").read_text(encoding="utf-8"), "domain")
    assert block == tables(json.loads(DOMAIN_SUMMARY.read_text())) + "\n", (
        "README.md's domain tables are out of date: run `make domain`"
    )


def test_shipped_model_reproduces_example_predictions(tmp_path: Path) -> None:
    if not (MODEL.is_file() and EXPECTED.is_file()):
        pytest.skip("no shipped model yet")
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import score_folder

    result = score_folder(
        ROOT / "examples", OnnxClassifier(MODEL, device="cpu"), tmp_path / "p.csv", workers=0
    )
    expected = pd.read_csv(EXPECTED, dtype=str, keep_default_na=False)
    got = result.predictions
    assert list(got["path"]) == list(expected["path"]) and len(got) == 8
    assert np.allclose(got["p_PNEUMONIA"].astype(float), expected["p_PNEUMONIA"].astype(float), atol=1e-5)
    assert list(got["pred_label"]) == list(expected["pred_label"])
    assert (got["model_sha256"] == expected["model_sha256"]).all()


@pytest.mark.parametrize("variant", ["model1", "model2"])
def test_the_shipped_config_reproduces_the_training_of_the_shipped_models(variant: str) -> None:
    """`make train` (train/config.toml) trains what was shipped: the training config each shipped
    model carries is the one the config file resolves to (a model trained before the equaliser
    existed carries no equalise_sigma, which is 0, its default)."""
    from cxr.artifacts.training_config import TrainingConfig
    from cxr.infer.model import OnnxClassifier
    from cxr.train.config import TrainingOverrides, load_config, resolve_config

    recorded = OnnxClassifier(ROOT / "models" / f"{variant}.onnx", device="cpu").info.contract.facts[
        "training_config"
    ]
    shipped = TrainingConfig.from_json(recorded)
    now = resolve_config(
        variant, load_config(), TrainingOverrides(backbone=shipped.backbone, weights=shipped.weights)
    )
    assert now == shipped
