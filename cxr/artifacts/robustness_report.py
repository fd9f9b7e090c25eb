"""robustness.json: what ``cxr robustness`` (and ``cxr evaluate --robustness``) measured, and the
report and the model card read.

    {"model", "model_sha256", "threshold", "classes", "n_images", "n_files", "seed",
     "perturbations": {NAME: {"roc_auc", "max_flip_rate", "classes": {CLASS: {...}}, ...}},
     "skipped_files", "left_out", "execution", "gate": {"limits", "messages", "passed"}, "figure"?}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr.errors import InputError
from cxr.files import read_json_file, write_json_atomic

REQUIRED = ("perturbations", "threshold", "classes", "n_images")


class RobustnessReportError(InputError, ValueError):
    """A file that is not a robustness.json, or cannot be read. One-line message."""


class RobustnessReport:
    """Readers and writers of robustness.json (a plain dict in memory, checked at the edge)."""

    FILE = "robustness.json"

    @staticmethod
    def write(path: str | Path, result: dict[str, Any]) -> Path:
        return write_json_atomic(path, result)

    @staticmethod
    def read(path: str | Path) -> dict[str, Any]:
        data = read_json_file(path, RobustnessReportError)
        missing = [key for key in REQUIRED if not isinstance(data, dict) or key not in data]
        if missing:
            raise RobustnessReportError(
                f"{path} is not a robustness.json from `cxr robustness` (no {', '.join(repr(k) for k in missing)})"
            )
        if "clean" not in data["perturbations"]:
            raise RobustnessReportError(f"{path} has no 'clean' row to compare the perturbations with")
        return data
