"""The owners of the files that cross stages (cxr/artifacts): each writes and reads its file and
refuses a foreign one in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.artifacts import EvalHistory, EvalHistoryError, EvalRecord, Parity, RobustnessReport
from cxr.artifacts.robustness_report import RobustnessReportError
from cxr.errors import InputError


def test_parity_round_trips_and_keeps_unknown_fields(tmp_path: Path) -> None:
    record = Parity(
        n_images=8,
        max_abs_diff=1e-7,
        mean_abs_diff=2e-8,
        labels_differ=0,
        tolerance=1e-4,
        threshold=0.5,
        passed=True,
        source="8 real images",
        opset=17,
        extra={"note": "kept"},
    )
    model = tmp_path / "m.onnx"
    record.write(Parity.path_for(model))
    assert Parity.read(model) == record
    assert json.loads(Parity.path_for(model).read_text())["note"] == "kept"
    assert Parity.read(tmp_path / "other.onnx") is None


def test_eval_history_appends_records_in_order(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    for verdict in ("not_compared", "pass"):
        EvalHistory.append(
            path,
            EvalRecord(
                model_sha256="a" * 64,
                data_sha256="b" * 64,
                verdict=verdict,
                metrics={"roc_auc": 0.98765432},
                n_files=3,
                n_errors=0,
            ),
        )
    frame = EvalHistory.read(path)
    assert list(frame["verdict"]) == ["not_compared", "pass"] and frame["roc_auc"].iloc[0] == "0.987654"
    assert list(frame.columns[:3]) == ["time", "model_sha256", "data_sha256"]


@pytest.mark.parametrize("content", ['a,b\n"unterminated,1\n', "x,y\n1,2\n"])
def test_a_foreign_history_is_refused_in_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "h.csv"
    path.write_text(content)
    with pytest.raises(EvalHistoryError) as info:
        EvalHistory.read(path)
    assert isinstance(info.value, InputError) and "\n" not in str(info.value)


def test_robustness_report_round_trips_and_refuses_other_json(tmp_path: Path) -> None:
    result = {
        "perturbations": {"clean": {"roc_auc": 0.9}},
        "threshold": 0.5,
        "classes": ["N", "P"],
        "n_images": 4,
    }
    path = RobustnessReport.write(tmp_path / RobustnessReport.FILE, result)
    assert RobustnessReport.read(path) == result
    (tmp_path / "other.json").write_text(json.dumps({"models": {}}))
    with pytest.raises(RobustnessReportError, match="not a robustness.json"):
        RobustnessReport.read(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(RobustnessReportError, match="not valid JSON"):
        RobustnessReport.read(tmp_path / "broken.json")
