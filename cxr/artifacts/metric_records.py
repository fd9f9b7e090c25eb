"""The parts of one model's entry in metrics.json (see ``metrics_report``): a block of metrics at
one threshold with their intervals, the threshold trade-off, subgroups, the failure analysis,
the domain guard's section, the settings the predictions were made with, and the validation
threshold. Each record writes the same JSON it was read from (``to_dict`` / ``from_dict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cxr.artifacts.scoring_settings import CalibrationSettings, GuardSettings
from cxr.shift import ShiftVerdict
from cxr.thresholds import ThresholdChoice

Interval = tuple[float, float]  # a 95% interval (low, high)


def _interval(value: list[float] | None) -> Interval | None:
    return None if value is None else (value[0], value[1])


def _intervals_to_json(ci95: dict[str, Interval | None]) -> dict[str, list[float] | None]:
    return {name: None if ci is None else list(ci) for name, ci in ci95.items()}


def _intervals_from_json(data: dict[str, list[float] | None]) -> dict[str, Interval | None]:
    return {name: _interval(ci) for name, ci in data.items()}


@dataclass(frozen=True)
class MetricBlock:
    """The headline metrics at one threshold ("at_0.5", "at_model_threshold", ...), each with its
    95% interval (None: too few images) and how it was computed; ``n`` (the images it covers) is
    written only where a block says it (the in-domain block)."""

    threshold: float
    metrics: dict[str, float]
    ci95: dict[str, Interval | None]
    ci_method: dict[str, str]
    n_positive: int
    n_negative: int
    n: int | None = None

    def to_dict(self) -> dict[str, Any]:
        head = {} if self.n is None else {"n": self.n}
        return {
            **head,
            "threshold": self.threshold,
            "metrics": dict(self.metrics),
            "ci95": _intervals_to_json(self.ci95),
            "ci_method": dict(self.ci_method),
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricBlock:
        return cls(
            threshold=data["threshold"],
            metrics=dict(data["metrics"]),
            ci95=_intervals_from_json(data["ci95"]),
            ci_method=dict(data["ci_method"]),
            n_positive=data["n_positive"],
            n_negative=data["n_negative"],
            n=data.get("n"),
        )


@dataclass(frozen=True)
class BootstrapSpec:
    """How the bootstrap intervals were drawn."""

    n: int
    seed: int
    unit: str = "patient"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BootstrapSpec:
        return cls(data["n"], data["seed"], data["unit"])


@dataclass(frozen=True)
class ThresholdRow:
    """One row of the threshold trade-off table."""

    threshold: float
    recall: float
    specificity: float
    precision: float
    f1: float
    accuracy: float

    COLUMNS = ("threshold", "recall", "specificity", "precision", "f1", "accuracy")

    def values(self) -> tuple[float, ...]:
        return tuple(getattr(self, name) for name in self.COLUMNS)

    def to_dict(self) -> dict[str, Any]:
        return dict(zip(self.COLUMNS, self.values()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThresholdRow:
        return cls(*(data[name] for name in cls.COLUMNS))


@dataclass(frozen=True)
class SubgroupRow:
    """A subgroup's counts and metrics at the model's threshold; ``flag`` says why an interval is
    missing. Subgroup intervals carry no method (Wilson for proportions, bootstrap for ROC AUC)."""

    factor: str
    group: str
    n_images: int
    n_patients: int
    n_positive: int
    n_negative: int
    metrics: dict[str, float]
    ci95: dict[str, Interval | None]
    flag: str = ""

    @property
    def ci_method(self) -> dict[str, str]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "group": self.group,
            "n_images": self.n_images,
            "n_patients": self.n_patients,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "metrics": dict(self.metrics),
            "ci95": _intervals_to_json(self.ci95),
            "flag": self.flag,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubgroupRow:
        return cls(
            factor=data["factor"],
            group=data["group"],
            n_images=data["n_images"],
            n_patients=data["n_patients"],
            n_positive=data["n_positive"],
            n_negative=data["n_negative"],
            metrics=dict(data["metrics"]),
            ci95=_intervals_from_json(data["ci95"]),
            flag=data["flag"],
        )


@dataclass(frozen=True)
class FailureDirection:
    """The errors of one direction (false positives or false negatives): how many, where their
    probabilities lie, and the subgroups they fall in (factor -> group -> count)."""

    description: str
    n: int
    p_quantiles: dict[str, float]
    p_values: tuple[float, ...]
    subgroups: dict[str, dict[str, int]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "n": self.n,
            "p_quantiles": dict(self.p_quantiles),
            "p_values": list(self.p_values),
            "subgroups": {factor: dict(counts) for factor, counts in self.subgroups.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailureDirection:
        return cls(
            description=data["description"],
            n=data["n"],
            p_quantiles=dict(data["p_quantiles"]),
            p_values=tuple(data["p_values"]),
            subgroups={factor: dict(counts) for factor, counts in data["subgroups"].items()},
        )


@dataclass(frozen=True)
class FlaggedImage:
    """An image the domain guard flagged: its score and P(positive) (None: left unscored)."""

    path: str
    domain_score: float
    p: float | None
    qc: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlaggedImage:
        return cls(data["path"], data["domain_score"], data["p"], data["qc"])


def guard_from_dict(data: dict[str, Any] | None) -> GuardSettings | None:
    if not data:
        return None
    return GuardSettings(data["method"], data["threshold"], data.get("false_flag_rate", 0.0))


def calibration_from_dict(data: dict[str, Any] | None) -> CalibrationSettings | None:
    if not data:
        return None
    return CalibrationSettings(data["method"], data["a"], data["b"])


@dataclass(frozen=True)
class DomainSection:
    """What the domain guard said about a set of predictions: how many images had a score and how
    many it flagged, the set-level shift verdict, the flagged images (highest score first) and,
    when some were flagged, the metrics on the in-domain images alone."""

    guard: GuardSettings
    n_with_score: int
    n_flagged: int
    shift: ShiftVerdict | None
    foreign: str
    flagged: tuple[FlaggedImage, ...]
    in_domain: MetricBlock | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "guard": asdict(self.guard),
            "n_with_score": self.n_with_score,
            "n_flagged": self.n_flagged,
            "shift": None if self.shift is None else self.shift.to_dict(),
            "foreign": self.foreign,
            "flagged": [image.to_dict() for image in self.flagged],
        }
        if self.in_domain is not None:
            data["in_domain"] = self.in_domain.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DomainSection | None:
        if data is None:
            return None
        return cls(
            guard=guard_from_dict(data["guard"]),
            n_with_score=data["n_with_score"],
            n_flagged=data["n_flagged"],
            shift=ShiftVerdict.from_dict(data.get("shift")),
            foreign=data["foreign"],
            flagged=tuple(FlaggedImage.from_dict(item) for item in data["flagged"]),
            in_domain=MetricBlock.from_dict(data["in_domain"]) if "in_domain" in data else None,
        )


@dataclass(frozen=True)
class RunSettings:
    """The settings a predictions file was made with (its sidecar, ``predictions.meta.json``, whose
    meaning ``ScoringSettings`` owns), as a report carries them: verbatim, so that a file from an
    older cxr is written back unchanged, and read through the typed properties below."""

    data: dict[str, Any] = field(default_factory=dict)

    @property
    def recorded(self) -> bool:
        """Whether the predictions came with settings at all."""
        return bool(self.data)

    def _text(self, key: str) -> str:
        value = self.data.get(key)
        return "" if value is None else str(value)

    @property
    def model(self) -> str:
        return self._text("model")

    @property
    def model_sha256(self) -> str:
        return self._text("model_sha256")

    @property
    def cxr_version(self) -> str:
        return self._text("cxr_version")

    @property
    def source(self) -> str:
        return self._text("source")

    @property
    def labels_source(self) -> str:
        return self._text("labels_source")

    @property
    def foreign(self) -> str:
        return self.data.get("foreign", "flag")

    @property
    def n_qc_flagged(self) -> int:
        return self.data.get("n_qc_flagged") or 0

    @property
    def n_outside_domain(self) -> int:
        return self.data.get("n_outside_domain") or 0

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.data.get("classes") or ())

    @property
    def guard(self) -> GuardSettings | None:
        return guard_from_dict(self.data.get("guard"))

    @property
    def calibration(self) -> CalibrationSettings | None:
        return calibration_from_dict(self.data.get("calibration"))

    @property
    def shift(self) -> ShiftVerdict | None:
        return ShiftVerdict.from_dict(self.data.get("shift"))

    @property
    def threshold_rule(self) -> dict[str, Any]:
        """The facts of the rule that chose the model's threshold (``describe_rule``'s input), or {}."""
        return dict(self.data.get("threshold_rule") or {})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


def threshold_choice_from_dict(data: dict[str, Any] | None) -> ThresholdChoice | None:
    """The validation threshold a report recorded (``ThresholdChoice.to_json``), or None."""
    if data is None:
        return None
    values = {name: data.get(name) for name in ThresholdChoice.__dataclass_fields__}
    return ThresholdChoice(**{**values, "val_recall_wilson95": _interval(values["val_recall_wilson95"])})


@dataclass(frozen=True)
class SuspiciousImage:
    """An image of a run without labels, listed for review (highest P(positive) first)."""

    path: str
    p: float
    qc: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuspiciousImage:
        return cls(data["path"], data["p"], data["qc"])
