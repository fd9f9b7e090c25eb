"""The command line's one error mapping (app/cli.py run_guarded): a user's mistake is one line and
exit 2, a failed worker or cluster exit 69, anything else a bug (exit 70), never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pytest

from cxr.app.cli import run_guarded
from cxr.errors import InputError, Unavailable


def _run(exc: Exception, capsys, monkeypatch, *args: str) -> tuple[int, str]:
    @click.command()
    @click.option("--log-format", default="text")
    def boom(log_format: str) -> None:
        raise exc

    monkeypatch.setattr(sys, "argv", ["boom", *args])
    with pytest.raises(SystemExit) as exit_info:
        run_guarded(boom, "boom")
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("exc", "code", "says"),
    [
        (InputError("the labels file names no image"), 2, "Error: the labels file names no image"),
        (Unavailable("the Ray cluster went away"), 69, "Error: the Ray cluster went away"),
        (KeyError("p_PNEUMONIA"), 70, "internal error (a bug in cxr, not in your input): KeyError"),
        (ValueError("unexpected"), 70, "internal error"),
    ],
)
def test_each_kind_of_failure_has_its_exit_code_and_one_line(exc, code, says, capsys, monkeypatch) -> None:
    exit_code, err = _run(exc, capsys, monkeypatch)
    assert exit_code == code and says in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_json_logs_carry_the_exit_code(capsys, monkeypatch) -> None:
    import json

    exit_code, err = _run(InputError("bad\nthing"), capsys, monkeypatch, "--log-format", "json")
    record = json.loads(err)
    assert exit_code == 2 and record["exit_code"] == 2 and record["message"] == "Error: bad"


def test_every_one_line_error_of_the_stages_is_an_input_error() -> None:
    """The stages' own error classes share the base the command line maps, so none reads as a bug."""
    from cxr.artifacts.metrics_report import MetricsReportError
    from cxr.artifacts.predictions import PredictionsError
    from cxr.data import DataPrepError
    from cxr.infer.model import ModelLoadError, ModelOutputError, ProviderError
    from cxr.infer.score import RunInterrupted, ScoreInputError
    from cxr.reports.evaluate import GateSpecError
    from cxr.reports.robustness import RobustnessSpecError
    from cxr.reports.summary import ReportInputError
    from cxr.thresholds import ThresholdError

    for cls in (
        MetricsReportError,
        PredictionsError,
        DataPrepError,
        ModelLoadError,
        ModelOutputError,
        ProviderError,
        ScoreInputError,
        GateSpecError,
        RobustnessSpecError,
        ReportInputError,
        ThresholdError,
    ):
        assert issubclass(cls, InputError), cls
    assert issubclass(RunInterrupted, Unavailable)


def test_a_report_from_an_unreadable_history_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cxr.app.report import report

    preds = tmp_path / "p.csv"
    rows = ["path,p_PNEUMONIA,pred_label,threshold,true_label,error"]
    rows += [
        f"{c}/person{i}_x.png,{0.2 + 0.6 * (c == 'PNEUMONIA'):.3f},{c},0.5,{c},"
        for i in range(12)
        for c in ("NORMAL", "PNEUMONIA")
    ]
    preds.write_text("\n".join(rows) + "\n")
    history = tmp_path / "history.csv"
    history.write_bytes(b"\xff\xfe\x00garbage")
    result = CliRunner().invoke(
        report,
        ["--preds", str(preds), "--out", str(tmp_path / "r"), "--history", str(history), "--n-boot", "20"],
    )
    assert result.exit_code == 2 and "cannot read the history" in result.output, result.output


def test_one_meaning_per_noun(tmp_path: Path) -> None:
    """--data names an image folder and --manifest a split manifest in every command; train's old
    --data says where its manifest went."""
    from click.testing import CliRunner

    from cxr.app.cli import cxr

    result = CliRunner().invoke(cxr, ["train", "--data", str(tmp_path / "m.csv")])
    assert result.exit_code == 2 and "--manifest" in result.output
    for command in ("train", "infer", "evaluate", "robustness"):
        help_text = CliRunner().invoke(cxr, [command, "--help"]).output
        assert "--manifest" in help_text, command
    assert "--with-robustness" in CliRunner().invoke(cxr, ["evaluate", "--help"]).output
    old_precision = CliRunner().invoke(cxr, ["train", "--precision", "mixed_bfloat16"])
    assert old_precision.exit_code == 2 and "--dtype-policy" in old_precision.output
    assert "--dtype-policy" in CliRunner().invoke(cxr, ["train", "--help"]).output
