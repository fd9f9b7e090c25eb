"""Hostile baselines, histories and gate options given to ``cxr evaluate`` and ``cxr report``: each
test is one attack and what must happen. A mistake is refused in one line (exit 2) before scoring;
evaluate never calls its own failure a regression, and the gate cannot be switched off silently.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxr.app.cli import cxr
from tests.attacks import baseline_file, gray_folder, run_infer


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return gray_folder(tmp_path)


# evaluate must never call its own crash a regression ----------------------------------------------


@pytest.mark.parametrize(
    "metrics", [{"recall": 0.9}, {"roc_auc": None, "recall": 0.9}, {"roc_auc": "high", "recall": 0.9}]
)
def test_attack_baseline_with_missing_null_or_string_metric(
    tmp_path: Path, folder: Path, tiny_model: Path, metrics: dict
) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(folder),
            "--baseline",
            str(baseline_file(tmp_path, metrics)),
            "--out",
            str(out),
            "--history",
            str(tmp_path / "h.csv"),
            "-q",
        ],
    )
    assert result.exit_code == 2 and "roc_auc" in result.output
    assert not (out / "predictions.csv").exists()  # refused before scoring


def test_attack_baseline_that_is_not_json_is_refused_before_scoring(
    tmp_path: Path, folder: Path, tiny_model: Path
) -> None:
    bad = tmp_path / "baseline.json"
    bad.write_text("{not json")
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(folder),
            "--baseline",
            str(bad),
            "--out",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 2 and not (out / "predictions.csv").exists()


def test_attack_corrupt_history_is_refused_before_scoring(
    tmp_path: Path, folder: Path, tiny_model: Path
) -> None:
    history = tmp_path / "h.csv"
    history.write_text('a,b\n"unterminated,1\n')
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(folder),
            "--history",
            str(history),
            "--out",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 2 and "history" in result.output and not (out / "metrics.json").exists()


def test_partly_failed_scoring_has_its_own_evaluate_exit_code(
    tmp_path: Path, folder: Path, tiny_model: Path
) -> None:
    (folder / "NORMAL" / "broken.png").write_text("not a png")
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "o"),
            "--history",
            str(tmp_path / "h.csv"),
            "-q",
            "--workers",
            "0",
            "--n-boot",
            "20",
        ],
    )
    assert result.exit_code == 4, result.output


# the gate cannot be switched off silently ---------------------------------------------------------


@pytest.mark.parametrize("spec", ["", " , ", "auc=nan", "auc=-1", "auc=inf"])
def test_attack_max_drop_that_gates_nothing(
    tmp_path: Path, folder: Path, tiny_model: Path, spec: str
) -> None:
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(folder),
            "--max-drop",
            spec,
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
    )
    assert result.exit_code == 2, result.output


# a report from the wrong files --------------------------------------------------------------------


def test_attack_report_with_a_wrong_val_preds_csv(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 0
    wrong = tmp_path / "val.csv"
    wrong.write_text("a,b\n1,2\n")
    result = CliRunner().invoke(
        cxr,
        [
            "report",
            "--preds",
            str(out / "predictions.csv"),
            "--val-preds",
            str(wrong),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 2 and "val_predictions" in result.output


# observability for scheduled jobs -----------------------------------------------------------------


@pytest.mark.slow  # over 5 s on 2 cores: three evaluations, each with its report
def test_prometheus_file_parses_and_marks_success_only_on_success(
    tmp_path: Path, folder: Path, tiny_model: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics_file = tmp_path / "cxr.prom"
    base_args = [
        "evaluate",
        "--model",
        str(tiny_model),
        "--data",
        str(folder),
        "--history",
        str(tmp_path / "h.csv"),
        "--metrics-file",
        str(metrics_file),
        "--n-boot",
        "20",
        "-q",
        "--workers",
        "0",
    ]
    first = CliRunner().invoke(cxr, [*base_args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "no baseline: nothing compared" in first.output and "PASSED" not in first.output
    families = {f.name: f for f in text_string_to_metric_families(metrics_file.read_text())}
    assert families["cxr_evaluate_compared"].samples[0].value == 0
    assert families["cxr_evaluate_passed"].samples[0].value == 0
    assert "cxr_evaluate_last_success_timestamp_seconds" not in families  # nothing was compared
    same = CliRunner().invoke(
        cxr, [*base_args, "--out", str(tmp_path / "b"), "--baseline", str(tmp_path / "a" / "metrics.json")]
    )
    assert same.exit_code == 0 and "PASSED" in same.output, same.output
    families = {f.name: f for f in text_string_to_metric_families(metrics_file.read_text())}
    for name in (
        "cxr_evaluate_verdict",
        "cxr_evaluate_metric",
        "cxr_evaluate_images_scored",
        "cxr_evaluate_images_failed",
        "cxr_evaluate_duration_seconds",
        "cxr_evaluate_last_success_timestamp_seconds",
    ):
        assert name in families, name
    success = families["cxr_evaluate_last_success_timestamp_seconds"].samples[0].value
    assert abs(success - time.time()) < 120
    # a regression: verdict changes, the last success stays what it was
    baseline = baseline_file(tmp_path, {"roc_auc": 2.0, "recall": 1.0})
    second = CliRunner().invoke(cxr, [*base_args, "--out", str(tmp_path / "c"), "--baseline", str(baseline)])
    assert second.exit_code == 1, second.output
    families = {f.name: f for f in text_string_to_metric_families(metrics_file.read_text())}
    verdicts = {s.labels["verdict"]: s.value for s in families["cxr_evaluate_verdict"].samples}
    assert verdicts["regression"] == 1 and verdicts["pass"] == 0
    assert families["cxr_evaluate_last_success_timestamp_seconds"].samples[0].value == success
