"""Reports and cards by the reporting standards (TRIPOD+AI 2024, CLAIM 2024, model cards, MONAI
bundle metadata), rendered from a small synthetic set with two subgroups."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml

from cxr.app.report import shipped_model
from cxr.artifacts import MetricsReport
from cxr.reports.card import CARD_METRICS, bundle_schema, write_model_card
from cxr.reports.summary import ReportInputs, ReportOptions, summarize
from tests.onnx_fixtures import make_tiny_model


def _two_subgroup_predictions(path: Path, seed: int = 0) -> Path:
    """NORMAL, bacterial and viral images of 12 patients each (2 images a patient); the model is
    worse on viral pneumonia."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind, label, centre in (
        ("normal", "NORMAL", 0.2),
        ("bacteria", "PNEUMONIA", 0.85),
        ("virus", "PNEUMONIA", 0.6),
    ):
        for patient in range(12):
            for image in range(2):
                name = (
                    f"NORMAL/IM-{patient:04d}-{image + 1:04d}.jpeg"
                    if kind == "normal"
                    else f"PNEUMONIA/person{patient + (100 if kind == 'virus' else 0)}_{kind}_{image}.jpeg"
                )
                p = float(np.clip(rng.normal(centre, 0.15), 0.001, 0.999))
                rows.append(
                    {
                        "path": name,
                        "p_PNEUMONIA": f"{p:.9g}",
                        "pred_label": "",
                        "threshold": 0.5,
                        "true_label": label,
                        "patient_id": "",
                        "error": "",
                        "qc": "",
                        "model": "tiny.onnx",
                        "model_sha256": "b" * 64,
                    }
                )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def rendered(tmp_path: Path) -> dict:
    preds = _two_subgroup_predictions(tmp_path / "preds.csv")
    report = summarize(ReportInputs((preds,)), tmp_path / "report", ReportOptions(n_boot=200, seed=3))
    return {"report": report, "out": tmp_path / "report", "preds": preds, "tmp": tmp_path}


def test_subgroup_metrics_with_seeded_patient_bootstrap_cis(rendered) -> None:
    rows = {row.group: row for row in rendered["report"].models["tiny"].subgroups}
    assert {"bacterial", "viral", "NORMAL"} <= set(rows)
    assert rows["bacterial"].n_patients == 12 and rows["bacterial"].flag == ""
    assert rows["bacterial"].metrics["recall"] > rows["viral"].metrics["recall"]
    low, high = rows["viral"].ci95["recall"]
    assert low <= rows["viral"].metrics["recall"] <= high and high - low > 0
    options = ReportOptions(n_boot=200, seed=3, with_figures=False)
    again = summarize(ReportInputs((rendered["preds"],)), rendered["tmp"] / "again", options)
    assert again.models["tiny"].subgroups == rendered["report"].models["tiny"].subgroups
    html = (rendered["out"] / "report.html").read_text()
    assert "pneumonia type (file name): viral" in html


def test_small_subgroups_are_flagged_not_dropped(tmp_path: Path) -> None:
    preds = _two_subgroup_predictions(tmp_path / "preds.csv")
    groups = tmp_path / "groups.csv"
    frame = pd.read_csv(preds)
    pd.DataFrame(
        {"path": frame["path"], "site": ["rare" if i < 6 else "common" for i in range(len(frame))]}
    ).to_csv(groups, index=False)
    from cxr.reports.standards import read_groups_csv

    inputs = ReportInputs((preds,), groups=read_groups_csv(groups))
    report = summarize(inputs, tmp_path / "r", ReportOptions(n_boot=50, with_figures=False))
    rare = next(r for r in report.models["tiny"].subgroups if r.factor == "site" and r.group == "rare")
    assert rare.flag.startswith("too few images") and rare.ci95 == {} and rare.n_images == 6


def test_checklist_answers_each_item_from_the_run(rendered) -> None:
    items = {row.guideline: row.answer for row in rendered["report"].checklist}
    for ref in (
        "TRIPOD+AI 23a",
        "TRIPOD+AI 15",
        "TRIPOD+AI 16",
        "TRIPOD+AI 27a",
        "CLAIM 20",
        "CLAIM 30",
        "CLAIM 39",
        "CLAIM 41 / TRIPOD+AI 4",
        "CLAIM 33 / TRIPOD+AI 12",
    ):
        assert items[ref], ref
    assert items["CLAIM 30"].startswith("not available")  # no robustness section was given
    # computed from the run: predictions without a manifest and without a domain guard
    assert items["CLAIM 33 / TRIPOD+AI 12"].startswith("other source")
    assert "no shift test (the model has no domain guard)" in items["CLAIM 33 / TRIPOD+AI 12"]
    assert "Reporting checklist" in (rendered["out"] / "report.html").read_text()


def test_failure_analysis_per_error_direction(rendered) -> None:
    analysis = rendered["report"].models["tiny"].failure_analysis
    assert set(analysis) == {"false_positive", "false_negative"}
    fn = analysis["false_negative"]
    assert fn.n == len(fn.p_values) and all(p < 0.5 for p in fn.p_values)
    assert sum(fn.subgroups["pneumonia type (file name)"].values()) == fn.n


def test_card_yaml_parses_and_bundle_metadata_validates(rendered) -> None:
    model = make_tiny_model(rendered["tmp"] / "tiny.onnx")
    card = rendered["tmp"] / "tiny.md"
    metrics_json = rendered["out"] / "metrics.json"
    write_model_card(
        shipped_model(model),
        MetricsReport.read(metrics_json),
        metrics_json,
        card,
        data_note="synthetic test data",
    )
    text = card.read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert [m["type"] for m in metrics] == list(CARD_METRICS)
    assert all(len(m["args"]["ci95"]) == 2 for m in metrics)
    for heading in (
        "## Intended use",
        "## Out-of-scope use",
        "## Training data and split",
        "## Preprocessing contract",
        "## Factors (subgroups)",
        "## Calibration",
        "## Limitations",
        "## Versions",
        "## How to get started",
        "## Citation",
        "## References",
    ):
        assert heading in text
    for key in ("base_model", "datasets", "pipeline_tag", "license", "model_version", "model_date"):
        assert front[key], key
    assert "cxr-infer" in text.split("## How to get started", 1)[1].split("##", 1)[0]
    assert "downscaled to 32x32" in text  # the input size comes from the model's contract
    metadata = json.loads((rendered["tmp"] / "tiny.metadata.json").read_text())
    jsonschema.validate(metadata, bundle_schema())
    assert metadata["network_data_format"]["inputs"]["pixels"]["spatial_shape"] == [32, 32]
    assert metadata["authors"] and metadata["references"] and metadata["version"] in metadata["changelog"]
    assert "+tiny." in metadata["version"] and metadata["version"] == front["model_version"]
    assert set(metadata["eval_metrics"]) == set(CARD_METRICS)
    broken = {**metadata, "network_data_format": {"inputs": {}, "outputs": {}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, bundle_schema())
