"""metrics.json: what ``cxr report`` / ``cxr-infer`` / ``cxr evaluate`` write, and the gate, cards
and the results tables of README.md and docs/ read.

    {"generated": ..., "val_threshold": {...} | null,
     "models": {NAME: {"classes", "n_rows", "n_scored", "n_errors", "n_labelled", "n_patients",
                       "bootstrap", "model_sha256", "settings",
                       "at_0.5" | "at_model_threshold" | "at_val_threshold":
                           {"threshold", "metrics": {METRIC: value}, "ci95": {METRIC: [low, high]}},
                       "threshold_table", "subgroups", "figures"}},
     "robustness": {NAME: ...}, "shortcut": [...], "published": [...], "figures": {...},
     "data_sha256", "gate"}            (the last two from cxr evaluate)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cxr.errors import InputError
from cxr.files import read_json_file, write_json_atomic

METRIC_NAMES = (
    "loss",
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "roc_auc",
    "pr_auc",
    "balanced_accuracy",
    "mcc",
    "brier",
    "ece",
)
LOWER_IS_BETTER = frozenset({"loss", "brier", "ece"})
BLOCKS = ("at_0.5", "at_model_threshold", "at_val_threshold")


class MetricsReportError(InputError, ValueError):
    """A metrics.json that is not one, or lacks what is asked of it. One-line message."""


class MetricsReport:
    """Readers and writers of metrics.json (a plain dict in memory)."""

    FILE = "metrics.json"

    @staticmethod
    def write(path: str | Path, report: dict[str, Any]) -> Path:
        return write_json_atomic(path, report)

    @staticmethod
    def read(path: str | Path) -> dict[str, Any]:
        report = read_json_file(path, MetricsReportError)
        if not isinstance(report, dict) or not isinstance(report.get("models"), dict) or not report["models"]:
            raise MetricsReportError(f"{path} is not a cxr metrics.json (no 'models')")
        return report

    @staticmethod
    def model_names(report: dict[str, Any]) -> list[str]:
        return list(report["models"])

    @staticmethod
    def model(report: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """One model's results: ``name``, or the first."""
        models = report["models"]
        if name is None:
            return next(iter(models.values()))
        if name not in models:
            raise MetricsReportError(f"metrics.json has no model {name!r} (it has {', '.join(models)})")
        return models[name]

    @staticmethod
    def model_for(report: dict[str, Any], sha256: str, name: str | None = None) -> str:
        """The name of the entry to compare a model with: ``name`` when given, else the one entry
        scored with the model file of this ``sha256``, else the only entry; a one-line error when
        several entries hold and none is this model's."""
        models = report["models"]
        if name is not None:
            if name not in models:
                raise MetricsReportError(f"it has no model {name!r} (it has {', '.join(models)})")
            return name
        matching = [
            key for key, result in models.items() if isinstance(result, dict) and result.get("model_sha256") == sha256
        ]
        if len(matching) == 1:
            return matching[0]
        if len(models) == 1:
            return next(iter(models))
        raise MetricsReportError(
            f"it holds {len(models)} models ({', '.join(models)}) and "
            f"{'none' if not matching else 'several'} of them scored with this model file "
            f"({sha256[:12]}); name one with --baseline-model"
        )

    @classmethod
    def block(cls, report: dict[str, Any], name: str | None = None, which: str = "at_model_threshold") -> dict:
        result = cls.model(report, name)
        if not isinstance(result.get(which), dict) or not isinstance(result[which].get("metrics"), dict):
            raise MetricsReportError(f"metrics.json lacks {which} metrics")
        return result[which]

    @classmethod
    def headline(cls, report: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """The gated metrics: the model's (first model's) metrics at its own threshold."""
        return dict(cls.block(report, name)["metrics"])

    @classmethod
    def metric_value(cls, report: dict[str, Any], metric: str, name: str | None = None) -> float:
        """A headline metric as a finite float; a one-line error when it is missing, null or not a number."""
        value = cls.headline(report, name).get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MetricsReportError(
                f"metric {metric!r} is {'missing' if value is None else repr(value)}, not a number"
            )
        if not math.isfinite(value):
            raise MetricsReportError(f"metric {metric!r} is {value}, not a finite number")
        return float(value)

    @staticmethod
    def robustness(report: dict[str, Any], name: str | None = None) -> dict[str, Any] | None:
        section = report.get("robustness") or {}
        if not section:
            return None
        return section.get(name) if name else next(iter(section.values()))
