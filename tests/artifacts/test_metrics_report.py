"""metrics.json through its typed record: what is read is written back key for key and byte for byte
(scheduled evaluations and baselines read these files), a file that is not a complete one is a
one-line error, and a baseline of any cxr version is read for the gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.artifacts import MetricsReport, MetricsReportError
from cxr.artifacts.metrics_report import Baseline, ModelMetrics, UnlabelledMetrics
from cxr.artifacts.report_sections import GateSummary, RobustnessSection, ShortcutCheck
from cxr.artifacts.scoring_settings import Execution
from cxr.reports.robustness import robustness_metrics
from cxr.reports.summary import ReportInputs, ReportOptions, summarize, summarize_unlabelled

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "results" / "metrics.json"


def _round_trip(path: Path, tmp_path: Path) -> MetricsReport:
    """The record of ``path``; asserts that writing it gives the file's bytes back."""
    report = MetricsReport.read(path)
    again = report.write(tmp_path / "again.json")
    assert again.read_bytes() == path.read_bytes()
    return report


def test_the_committed_metrics_json_round_trips(tmp_path: Path) -> None:
    if not COMMITTED.is_file():
        pytest.skip("no committed results/metrics.json")
    report = _round_trip(COMMITTED, tmp_path)
    assert report.labelled and report.robustness and report.shortcut and report.checklist
    for name, entry in report.models.items():
        assert isinstance(entry, ModelMetrics), name
        assert entry.at_model_threshold.metrics.keys() == entry.at_half.metrics.keys()
        assert report.headline(name) == entry.at_model_threshold.metrics


def _predictions(path: Path, n: int = 80, labelled: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.45 * y + rng.uniform(0, 0.55, n), 0, 1)
    rows = [
        {
            "path": f"{('NORMAL', 'PNEUMONIA')[yi]}/person{i // 2}_bacteria_{i}.jpeg",
            "p_PNEUMONIA": f"{pi:.6f}",
            "pred_label": "",
            "threshold": 0.45,
            "true_label": ("NORMAL", "PNEUMONIA")[yi] if labelled else "",
            "error": "",
            "model": "m.onnx",
            "model_sha256": "c" * 64,
        }
        for i, (yi, pi) in enumerate(zip(y, p))
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_report_with_every_section_round_trips(tmp_path: Path) -> None:
    """Validation threshold, robustness (with its run facts and gate), shortcut checks, the checklist,
    and what cxr evaluate adds: each is written back as read."""
    preds = _predictions(tmp_path / "preds.csv")
    val = _predictions(tmp_path / "val.csv", seed=1)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    scores = {"clean": np.linspace(0.1, 0.9, 40), "noise2": np.linspace(0.15, 0.95, 40)}
    section = robustness_metrics(y, scores, 0.45, ["NORMAL", "PNEUMONIA"])
    section = RobustnessSection.from_dict({**section.to_dict(), "model": "m", "seed": 0, "left_out": []})
    shortcut = ShortcutCheck(
        {
            "source": "data",
            "split_by": "patient",
            "n_images": 40,
            "classes": ["NORMAL", "PNEUMONIA"],
            "method": "x",
            "groups": {"size": {"features": ["width"], "n": 40, "cv_auc": None, "note": "the same"}},
            "verdict": "no shortcut",
            "findings": [],
        }
    )
    inputs = ReportInputs((preds,), val_predictions=val, robustness={"m": section}, shortcut=(shortcut,))
    report = summarize(
        inputs, tmp_path / "r", ReportOptions(n_boot=20, target_recall=0.8, with_figures=False)
    )
    assert report.val_threshold is not None and report.models["m"].at_val_threshold is not None
    _round_trip(tmp_path / "r" / "metrics.json", tmp_path)
    gated = MetricsReport.from_dict(
        {
            **report.to_dict(),
            "data_sha256": "d" * 64,
            "execution": Execution("CPUExecutionProvider", "fp32", {}, 2).to_json(),
            "gate": GateSummary(True, "pass", ("roc_auc: ...",), None).to_dict(),
        }
    )
    path = gated.write(tmp_path / "gated.json")
    assert _round_trip(path, tmp_path).gate.verdict == "pass"


def test_a_report_without_labels_round_trips(tmp_path: Path) -> None:
    preds = _predictions(tmp_path / "preds.csv", labelled=False)
    report = summarize_unlabelled(ReportInputs((preds,)), tmp_path / "r")
    assert not report.labelled and isinstance(report.model(), UnlabelledMetrics)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["labelled"] is False
    _round_trip(tmp_path / "r" / "metrics.json", tmp_path)
    with pytest.raises(MetricsReportError, match="lacks at_model_threshold"):
        report.headline()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"models": {}}, "no 'models'"),
        ({"models": {"m": {"at_model_threshold": {"metrics": {}}}}}, "not a complete cxr metrics.json"),
        ([1, 2], "no 'models'"),
    ],
)
def test_a_file_that_is_not_a_complete_report_is_a_one_line_error(tmp_path: Path, content, message) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(content))
    with pytest.raises(MetricsReportError, match=message) as caught:
        MetricsReport.read(path)
    assert "\n" not in str(caught.value)


def test_a_baseline_is_read_from_any_metrics_json(tmp_path: Path) -> None:
    """Only the entry's metrics at its threshold and its model hash are needed (older files)."""
    path = tmp_path / "baseline.json"
    entry = {"model_sha256": "a" * 64, "at_model_threshold": {"metrics": {"roc_auc": 0.9, "recall": 0.8}}}
    path.write_text(
        json.dumps({"models": {"x": entry, "y": {**entry, "model_sha256": "b" * 64}}, "data_sha256": "d"})
    )
    assert Baseline.read(path, ["roc_auc"], "b" * 64) == Baseline("y", {"roc_auc": 0.9}, "d")
    with pytest.raises(MetricsReportError, match="name one with --baseline-model"):
        Baseline.read(path, ["roc_auc"], "c" * 64)
    with pytest.raises(MetricsReportError, match="'ece' is missing"):
        Baseline.read(path, ["ece"], "a" * 64)
