"""metrics.json: what ``cxr report`` / ``cxr-infer`` / ``cxr evaluate`` write, and the gate, cards
and the results tables of README.md and docs/ read.

    {"generated": ..., "labelled": false (only without labels), "val_threshold": {...} | null,
     "models": {NAME: {"classes", "n_rows", "n_scored", "n_unscored_outside_domain", "n_errors",
                       "n_labelled", "n_patients", "bootstrap", "model_sha256",
                       "at_0.5", "at_model_threshold", "at_val_threshold"?:
                           {"threshold", "metrics": {METRIC: value}, "ci95": {METRIC: [low, high] | null},
                            "ci_method", "n_positive", "n_negative"},
                       "threshold_table", "subgroups", "failure_analysis", "domain",
                       "predictions", "settings", "figures"?}},
     "published": [...], "figures": {...}, "shipped": [...], "robustness"?: {NAME: ...},
     "shortcut"?: [...], "checklist": [...],
     "data_sha256"?, "execution"?, "gate"?}            (the last three from cxr evaluate)

In memory a ``MetricsReport`` record, its parts the records of ``metric_records`` and
``report_sections``; the file is read and written here alone (``read`` / ``write``), and
``to_dict`` writes the JSON ``from_dict`` read, key for key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cxr.artifacts.metric_records import (
    BootstrapSpec,
    DomainSection,
    FailureDirection,
    MetricBlock,
    RunSettings,
    SubgroupRow,
    SuspiciousImage,
    ThresholdRow,
    threshold_choice_from_dict,
)
from cxr.artifacts.report_sections import (
    ChecklistItem,
    GateSummary,
    PublishedResult,
    RobustnessSection,
    ShortcutCheck,
)
from cxr.artifacts.scoring_settings import Execution
from cxr.errors import InputError
from cxr.files import read_json_file, write_json_atomic
from cxr.thresholds import ThresholdChoice

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


@dataclass(frozen=True)
class ModelMetrics:
    """One model's results on labelled predictions: counts, the metrics with intervals at 0.5, at
    the model's threshold and (when one was chosen) at the validation threshold, the threshold
    trade-off, subgroups, the failure analysis, the domain guard's section, the settings the
    predictions were made with and the figures drawn of them (None: none drawn)."""

    classes: tuple[str, str]
    n_rows: int
    n_scored: int
    n_unscored_outside_domain: int
    n_errors: int
    n_labelled: int
    n_patients: int
    bootstrap: BootstrapSpec
    model_sha256: str
    at_half: MetricBlock  # "at_0.5"
    at_model_threshold: MetricBlock
    at_val_threshold: MetricBlock | None
    threshold_table: tuple[ThresholdRow, ...]
    subgroups: tuple[SubgroupRow, ...]
    failure_analysis: dict[str, FailureDirection]
    domain: DomainSection | None
    predictions: str = ""
    settings: RunSettings = field(default_factory=RunSettings)
    figures: dict[str, str] | None = None

    labelled: ClassVar[bool] = True

    @property
    def threshold(self) -> float:
        return self.at_model_threshold.threshold

    def to_dict(self) -> dict[str, Any]:
        data = {
            "classes": list(self.classes),
            "n_rows": self.n_rows,
            "n_scored": self.n_scored,
            "n_unscored_outside_domain": self.n_unscored_outside_domain,
            "n_errors": self.n_errors,
            "n_labelled": self.n_labelled,
            "n_patients": self.n_patients,
            "bootstrap": self.bootstrap.to_dict(),
            "model_sha256": self.model_sha256,
            "at_0.5": self.at_half.to_dict(),
            "at_model_threshold": self.at_model_threshold.to_dict(),
        }
        if self.at_val_threshold is not None:
            data["at_val_threshold"] = self.at_val_threshold.to_dict()
        data.update(
            {
                "threshold_table": [row.to_dict() for row in self.threshold_table],
                "subgroups": [row.to_dict() for row in self.subgroups],
                "failure_analysis": {name: part.to_dict() for name, part in self.failure_analysis.items()},
                "domain": None if self.domain is None else self.domain.to_dict(),
                "predictions": self.predictions,
                "settings": self.settings.to_dict(),
            }
        )
        if self.figures is not None:
            data["figures"] = dict(self.figures)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetrics:
        negative, positive = data["classes"]
        return cls(
            classes=(negative, positive),
            n_rows=data["n_rows"],
            n_scored=data["n_scored"],
            n_unscored_outside_domain=data["n_unscored_outside_domain"],
            n_errors=data["n_errors"],
            n_labelled=data["n_labelled"],
            n_patients=data["n_patients"],
            bootstrap=BootstrapSpec.from_dict(data["bootstrap"]),
            model_sha256=data["model_sha256"],
            at_half=MetricBlock.from_dict(data["at_0.5"]),
            at_model_threshold=MetricBlock.from_dict(data["at_model_threshold"]),
            at_val_threshold=MetricBlock.from_dict(data["at_val_threshold"])
            if "at_val_threshold" in data
            else None,
            threshold_table=tuple(ThresholdRow.from_dict(row) for row in data["threshold_table"]),
            subgroups=tuple(SubgroupRow.from_dict(row) for row in data["subgroups"]),
            failure_analysis={
                name: FailureDirection.from_dict(p) for name, p in data["failure_analysis"].items()
            },
            domain=DomainSection.from_dict(data.get("domain")),
            predictions=data["predictions"],
            settings=RunSettings(dict(data["settings"])),
            figures=dict(data["figures"]) if "figures" in data else None,
        )


@dataclass(frozen=True)
class UnlabelledMetrics:
    """One model's run without labels: how many images were called each class at the model's
    threshold, the distribution of P(positive) and the images to review first."""

    classes: tuple[str, ...]
    threshold: float
    n_rows: int
    n_scored: int
    n_errors: int
    n_unscored_outside_domain: int
    n_called_positive: int
    n_called_negative: int
    n_outside_domain: int
    n_qc_flagged: int
    p_quantiles: dict[str, float]
    model_sha256: str
    suspicious: tuple[SuspiciousImage, ...]
    predictions: str = ""
    settings: RunSettings = field(default_factory=RunSettings)
    figures: dict[str, str] = field(default_factory=dict)

    labelled: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "labelled": False,
            "classes": list(self.classes),
            "threshold": self.threshold,
            "n_rows": self.n_rows,
            "n_scored": self.n_scored,
            "n_errors": self.n_errors,
            "n_unscored_outside_domain": self.n_unscored_outside_domain,
            "n_called_positive": self.n_called_positive,
            "n_called_negative": self.n_called_negative,
            "n_outside_domain": self.n_outside_domain,
            "n_qc_flagged": self.n_qc_flagged,
            "p_quantiles": dict(self.p_quantiles),
            "model_sha256": self.model_sha256,
            "suspicious": [image.to_dict() for image in self.suspicious],
            "predictions": self.predictions,
            "settings": self.settings.to_dict(),
            "figures": dict(self.figures),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnlabelledMetrics:
        counts = (
            "n_rows",
            "n_scored",
            "n_errors",
            "n_unscored_outside_domain",
            "n_called_positive",
            "n_called_negative",
            "n_outside_domain",
            "n_qc_flagged",
        )
        return cls(
            classes=tuple(data["classes"]),
            threshold=data["threshold"],
            **{name: data[name] for name in counts},
            p_quantiles=dict(data["p_quantiles"]),
            model_sha256=data["model_sha256"],
            suspicious=tuple(SuspiciousImage.from_dict(item) for item in data["suspicious"]),
            predictions=data["predictions"],
            settings=RunSettings(dict(data["settings"])),
            figures=dict(data["figures"]),
        )


ModelEntry = ModelMetrics | UnlabelledMetrics


def _entry_from_dict(data: dict[str, Any]) -> ModelEntry:
    return (
        UnlabelledMetrics.from_dict(data) if data.get("labelled") is False else ModelMetrics.from_dict(data)
    )


def _execution_from_dict(data: dict[str, Any] | None) -> Execution | None:
    if data is None:
        return None
    return Execution(
        data["provider"], data["precision"], dict(data["provider_options"]), data["parallel_runs"]
    )


@dataclass(frozen=True)
class MetricsReport:
    """A report's results: per model (``ModelMetrics``, or ``UnlabelledMetrics`` for a run without
    labels), the published figures, training curves, the models marked as shipped, robustness,
    the shortcut checks and the reporting checklist; after ``cxr evaluate``, the data's hash, the
    execution and the gate's verdict. A section that is None is absent from the file."""

    generated: str
    models: dict[str, ModelEntry]
    val_threshold: ThresholdChoice | None = None
    published: tuple[PublishedResult, ...] = ()
    figures: dict[str, str] = field(default_factory=dict)
    shipped: tuple[str, ...] | None = None
    robustness: dict[str, RobustnessSection] | None = None
    shortcut: tuple[ShortcutCheck, ...] | None = None
    checklist: tuple[ChecklistItem, ...] | None = None
    data_sha256: str | None = None
    execution: Execution | None = None
    gate: GateSummary | None = None

    FILE: ClassVar[str] = "metrics.json"

    @property
    def labelled(self) -> bool:
        return all(entry.labelled for entry in self.models.values())

    def model_names(self) -> list[str]:
        return list(self.models)

    def model(self, name: str | None = None) -> ModelEntry:
        """One model's results: ``name``, or the first."""
        if name is None:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise MetricsReportError(f"metrics.json has no model {name!r} (it has {', '.join(self.models)})")
        return self.models[name]

    def labelled_model(self, name: str | None = None) -> ModelMetrics:
        """One model's results with labels (``name``, or the first); a one-line error for a run without."""
        entry = self.model(name)
        if not isinstance(entry, ModelMetrics):
            raise MetricsReportError("metrics.json lacks at_model_threshold metrics")
        return entry

    def headline(self, name: str | None = None) -> dict[str, float]:
        """The gated metrics: the model's (first model's) metrics at its own threshold."""
        return dict(self.labelled_model(name).at_model_threshold.metrics)

    def robustness_of(self, name: str | None = None) -> RobustnessSection | None:
        """The robustness section of ``name`` (or the first), None where there is none."""
        if not self.robustness:
            return None
        return self.robustness.get(name) if name else next(iter(self.robustness.values()))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"generated": self.generated}
        if not self.labelled:
            data["labelled"] = False
        data.update(
            {
                "val_threshold": None if self.val_threshold is None else self.val_threshold.to_json(),
                "models": {name: entry.to_dict() for name, entry in self.models.items()},
                "published": [pub.to_dict() for pub in self.published],
                "figures": dict(self.figures),
            }
        )
        optional = {
            "shipped": None if self.shipped is None else list(self.shipped),
            "robustness": None
            if self.robustness is None
            else {name: section.to_dict() for name, section in self.robustness.items()},
            "shortcut": None if self.shortcut is None else [check.to_dict() for check in self.shortcut],
            "checklist": None if self.checklist is None else [item.to_dict() for item in self.checklist],
            "data_sha256": self.data_sha256,
            "execution": None if self.execution is None else self.execution.to_json(),
            "gate": None if self.gate is None else self.gate.to_dict(),
        }
        data.update({key: value for key, value in optional.items() if value is not None})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricsReport:
        robustness, shortcut, checklist = data.get("robustness"), data.get("shortcut"), data.get("checklist")
        return cls(
            generated=data["generated"],
            models={name: _entry_from_dict(entry) for name, entry in data["models"].items()},
            val_threshold=threshold_choice_from_dict(data["val_threshold"]),
            published=tuple(PublishedResult.from_dict(pub) for pub in data["published"]),
            figures=dict(data["figures"]),
            shipped=tuple(data["shipped"]) if "shipped" in data else None,
            robustness=None
            if robustness is None
            else {name: RobustnessSection.from_dict(section) for name, section in robustness.items()},
            shortcut=None if shortcut is None else tuple(ShortcutCheck(dict(check)) for check in shortcut),
            checklist=None
            if checklist is None
            else tuple(ChecklistItem.from_dict(item) for item in checklist),
            data_sha256=data.get("data_sha256"),
            execution=_execution_from_dict(data.get("execution")),
            gate=GateSummary.from_dict(data.get("gate")),
        )

    def write(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> MetricsReport:
        """A metrics.json as written by this cxr; a one-line error for anything else."""
        data = _read_models(path)
        try:
            return cls.from_dict(data)
        except KeyError as exc:
            raise MetricsReportError(
                f"{path} is not a complete cxr metrics.json (no {exc.args[0]!r})"
            ) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise MetricsReportError(f"{path} is not a cxr metrics.json of this version ({exc})") from None


def _read_models(path: str | Path) -> dict[str, Any]:
    """The JSON object of a metrics.json that has at least one model."""
    data = read_json_file(path, MetricsReportError)
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict) or not data["models"]:
        raise MetricsReportError(f"{path} is not a cxr metrics.json (no 'models')")
    return data


@dataclass(frozen=True)
class Baseline:
    """What a regression gate compares with: the headline metrics of one model's entry in an
    earlier metrics.json (any cxr version's: only the entry's metrics at its threshold and its
    model hash are read), and the hash of the data that run evaluated (None: not recorded)."""

    model: str
    metrics: dict[str, float]
    data_sha256: str | None = None

    @classmethod
    def read(cls, path: str | Path, metrics: Iterable[str], sha256: str, name: str | None = None) -> Baseline:
        """The entry to compare a model with (``name`` when given, else the one entry scored with
        the model file of this ``sha256``, else the only entry), its ``metrics`` as finite numbers;
        a one-line MetricsReportError otherwise."""
        data = _read_models(path)
        name = _entry_for(data["models"], sha256, name)
        headline = _headline(data["models"][name])
        values = {metric: _finite(headline.get(metric), metric) for metric in metrics}
        return cls(name, values, data.get("data_sha256"))


def _entry_for(models: dict[str, Any], sha256: str, name: str | None) -> str:
    if name is not None:
        if name not in models:
            raise MetricsReportError(f"it has no model {name!r} (it has {', '.join(models)})")
        return name
    matching = [
        key
        for key, entry in models.items()
        if isinstance(entry, dict) and entry.get("model_sha256") == sha256
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


def _headline(entry: object) -> dict[str, object]:
    block = entry.get("at_model_threshold") if isinstance(entry, dict) else None
    if not isinstance(block, dict) or not isinstance(block.get("metrics"), dict):
        raise MetricsReportError("metrics.json lacks at_model_threshold metrics")
    return block["metrics"]


def _finite(value: object, metric: str) -> float:
    """A headline metric as a finite float; a one-line error when it is missing, null or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetricsReportError(
            f"metric {metric!r} is {'missing' if value is None else repr(value)}, not a number"
        )
    if not math.isfinite(value):
        raise MetricsReportError(f"metric {metric!r} is {value}, not a finite number")
    return float(value)
