"""The committed results: README's table matches results/metrics.json, and the shipped
model reproduces the committed example predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.reports.render import README_SPLIT_NOTE, readme_robustness_table, readme_table

ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "results" / "metrics.json"
MODEL = ROOT / "models" / "model1.onnx"
EXPECTED = ROOT / "examples" / "expected_predictions.csv"


def test_readme_results_table_matches_metrics_json() -> None:
    if not METRICS.is_file():
        pytest.skip("no committed results yet")
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- results:start -->\n", 1)[1].split("<!-- results:end -->", 1)[0]
    assert block == readme_table(json.loads(METRICS.read_text()), README_SPLIT_NOTE)


def test_readme_robustness_table_matches_metrics_json() -> None:
    if not METRICS.is_file():
        pytest.skip("no committed results yet")
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- robustness:start -->\n", 1)[1].split("<!-- robustness:end -->", 1)[0]
    assert block == readme_robustness_table(json.loads(METRICS.read_text()))


def test_shipped_model_reproduces_example_predictions(tmp_path: Path) -> None:
    if not (MODEL.is_file() and EXPECTED.is_file()):
        pytest.skip("no shipped model yet")
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import score_folder

    result = score_folder(ROOT / "examples", OnnxClassifier(MODEL, device="cpu"), tmp_path / "p.csv", workers=0)
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
    existed carries no equalise_sigma, which is 0)."""
    from cxr.infer.model import OnnxClassifier
    from cxr.train.config import load_config, resolve_variant

    shipped = dict(OnnxClassifier(ROOT / "models" / f"{variant}.onnx", device="cpu").info.metadata["training_config"])
    shipped.setdefault("equalise_sigma", 0.0)
    now = resolve_variant(load_config(), variant, {"backbone": shipped["backbone"], "weights": shipped["weights"]})
    assert now == shipped
