"""evaluations/history.csv: one row per ``cxr evaluate`` run, appended, never rewritten by hand.

time, model_sha256, data_sha256, <headline metrics>, n_files, n_errors, provider,
execution_precision, verdict
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxr.errors import InputError
from cxr.files import atomic_path
from cxr.messages import first_line

REQUIRED_COLUMNS = ("time", "model_sha256", "data_sha256", "verdict")
METRIC_DECIMALS = 6


class EvalHistoryError(InputError, ValueError):
    """A history file that is not an evaluation history, or cannot be read. One-line message."""


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation: which model on which data, its headline metrics, counts, execution and verdict."""

    model_sha256: str
    data_sha256: str
    verdict: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    n_files: int | None = None
    n_errors: int | None = None
    provider: str = ""
    execution_precision: str = ""
    time: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def row(self) -> dict[str, str]:
        """The CSV row, in the file's column order."""
        counts = {k: v for k, v in (("n_files", self.n_files), ("n_errors", self.n_errors)) if v is not None}
        values = {
            "time": self.time,
            "model_sha256": self.model_sha256,
            "data_sha256": self.data_sha256,
            **{k: round(float(v), METRIC_DECIMALS) for k, v in self.metrics.items()},
            **counts,
            "provider": self.provider,
            "execution_precision": self.execution_precision,
            "verdict": self.verdict,
        }
        return {k: str(v) for k, v in values.items()}


class EvalHistory:
    """Readers and writers of the evaluation history CSV."""

    @staticmethod
    def read(path: str | Path) -> pd.DataFrame:
        """The history so far (an empty frame when there is none); a one-line error when it is not one."""
        path = Path(path)
        if not path.exists():
            return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise EvalHistoryError(
                f"history file {path} is not a readable CSV ({first_line(exc)}); "
                "move it aside or pass another --history"
            ) from None
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise EvalHistoryError(
                f"history file {path} is not a cxr evaluation history (no column "
                f"{', '.join(missing)}); move it aside or pass another --history"
            )
        return frame

    @classmethod
    def append(cls, path: str | Path, record: EvalRecord) -> None:
        """Add one record (the file is rewritten atomically: a crash leaves the old history)."""
        frame = pd.concat([cls.read(path), pd.DataFrame([record.row()])], ignore_index=True)
        with atomic_path(Path(path)) as tmp:
            frame.to_csv(tmp, index=False, lineterminator="\n")
