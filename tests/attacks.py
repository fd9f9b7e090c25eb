"""Shared pieces of the hostile-input tests (tests/*/test_hostile_*.py): a small scored folder,
one ``cxr-infer`` call, the rows it wrote, and a finished run turned back into a killed one.

Each hostile test is one attack and what must happen: a user's mistake is one line and exit 2; a
bad file is one error row; nothing is mixed, nothing passes silently, and a crash is never
reported as a verdict.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from cxr.app.infer import infer
from cxr.artifacts import Predictions
from tests.synthetic import make_gray_class_folders


def gray_folder(tmp_path: Path) -> Path:
    """Six noisy 40x40 grey PNGs per class (NORMAL dark, PNEUMONIA bright): in/NORMAL/img{i}.png."""
    return make_gray_class_folders(
        tmp_path / "in",
        {"NORMAL": 40, "PNEUMONIA": 140},
        sigma=10,
        count=6,
        shape=(40, 40),
        name="img{i}.png",
    )


def run_infer(folder: Path, model: Path, out: Path, *extra: str, report: bool = False):
    """``cxr-infer FOLDER`` in process; without the report (figures and HTML: 4 s of CPU each) unless
    ``report`` (the attacks on the report itself)."""
    args = [str(folder), "--model", str(model), "--out", str(out), "-q", "--workers", "0", "--n-boot", "20"]
    return CliRunner().invoke(infer, [*args, *extra, *([] if report else ["--no-report"])])


def rows_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False, encoding="utf-8")


def kill_after(out: Path, n_rows: int, cut: int | None = None) -> None:
    """Turn a finished run back into one killed after ``n_rows`` rows (the next row cut at ``cut`` chars)."""
    settings = Predictions.read_settings(out / "predictions.csv")
    rows = [json.dumps(r, ensure_ascii=True) for r in rows_of(out).to_dict("records")]
    text = "\n".join([json.dumps({"settings": settings}), *rows[:n_rows]]) + "\n"
    if cut is not None and n_rows < len(rows):
        text += rows[n_rows][:cut]
    Predictions.partial_path(out / "predictions.csv").write_text(text)
    (out / "predictions.csv").unlink()


def baseline_file(tmp_path: Path, metrics: dict) -> Path:
    """A baseline metrics.json of one model ``m`` holding ``metrics`` at its threshold."""
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"models": {"m": {"at_model_threshold": {"metrics": metrics}}}}))
    return path
