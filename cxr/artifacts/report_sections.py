"""The report-wide sections of metrics.json (see ``metrics_report``): published figures, the
reporting checklist, the evaluation gate's verdict, the robustness suite's results (the layout of
robustness.json, which ``cxr robustness`` writes) and the shortcut check of the data. Each record
writes the same JSON it was read from (``to_dict`` / ``from_dict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PublishedResult:
    """Figures published for this task on other data splits, shown for context."""

    name: str
    split: str
    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float

    def metric(self, name: str) -> float:
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PublishedResult:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ChecklistItem:
    """A reporting-guideline item (TRIPOD+AI, CLAIM) and this run's answer to it."""

    item: str
    guideline: str
    answer: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChecklistItem:
        return cls(data["item"], data["guideline"], data["answer"])


@dataclass(frozen=True)
class GateSummary:
    """What ``cxr evaluate``'s gate decided, and against which baseline file (None: no baseline)."""

    passed: bool
    verdict: str
    messages: tuple[str, ...]
    baseline: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "messages": list(self.messages)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GateSummary | None:
        if data is None:
            return None
        return cls(data["passed"], data["verdict"], tuple(data["messages"]), data["baseline"])


@dataclass(frozen=True)
class ClassRates:
    """Under one perturbation, for the images of one true class: how many, the share whose label
    flips against the clean image and the share called the other class."""

    n: int
    flip_rate: float
    called_other: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassRates:
        return cls(data["n"], data["flip_rate"], data["called_other"])


@dataclass(frozen=True)
class PerturbationRow:
    """How the model's outputs moved under one perturbation (or none: the clean row)."""

    description: str
    roc_auc: float
    mean_abs_dp: float
    p95_abs_dp: float
    max_flip_rate: float
    classes: dict[str, ClassRates]

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "roc_auc": self.roc_auc,
            "mean_abs_dp": self.mean_abs_dp,
            "p95_abs_dp": self.p95_abs_dp,
            "max_flip_rate": self.max_flip_rate,
            "classes": {name: rates.to_dict() for name, rates in self.classes.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerturbationRow:
        return cls(
            description=data["description"],
            roc_auc=data["roc_auc"],
            mean_abs_dp=data["mean_abs_dp"],
            p95_abs_dp=data["p95_abs_dp"],
            max_flip_rate=data["max_flip_rate"],
            classes={name: ClassRates.from_dict(rates) for name, rates in data["classes"].items()},
        )


@dataclass(frozen=True)
class RobustnessGate:
    """``cxr robustness --max-flip``: the limits per perturbation, what was compared, the outcome."""

    limits: dict[str, float]
    messages: tuple[str, ...]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"limits": dict(self.limits), "messages": list(self.messages), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RobustnessGate | None:
        if data is None:
            return None
        return cls(dict(data["limits"]), tuple(data["messages"]), data["passed"])


ROBUSTNESS_RESULTS = ("threshold", "classes", "n_images", "perturbations")


@dataclass(frozen=True)
class RobustnessSection:
    """The robustness suite on one model: per perturbation (and clean) the ROC AUC, |dp| and the
    flip rates per true class at the model's threshold. ``facts`` holds what the run recorded beside
    them (model, model_sha256, seed, skipped and left-out files, execution), verbatim; ``figure``
    is the report's plot of it."""

    threshold: float
    classes: tuple[str, ...]
    n_images: int
    perturbations: dict[str, PerturbationRow]
    facts: dict[str, Any] = field(default_factory=dict)
    gate: RobustnessGate | None = None
    figure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "threshold": self.threshold,
            "classes": list(self.classes),
            "n_images": self.n_images,
            "perturbations": {name: row.to_dict() for name, row in self.perturbations.items()},
            **self.facts,
        }
        if self.gate is not None:
            data["gate"] = self.gate.to_dict()
        if self.figure is not None:
            data["figure"] = self.figure
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobustnessSection:
        known = (*ROBUSTNESS_RESULTS, "gate", "figure")
        return cls(
            threshold=data["threshold"],
            classes=tuple(data["classes"]),
            n_images=data["n_images"],
            perturbations={
                name: PerturbationRow.from_dict(row) for name, row in data["perturbations"].items()
            },
            facts={key: value for key, value in data.items() if key not in known},
            gate=RobustnessGate.from_dict(data.get("gate")),
            figure=data.get("figure"),
        )


@dataclass(frozen=True)
class ShortcutGroup:
    """One group of trivial image statistics: the cross-validated ROC AUC with which they alone
    separate the classes (None, with a ``note`` why, where it could not be computed) and the
    class medians of each feature."""

    features: tuple[str, ...]
    cv_auc: float | None
    note: str
    median_negative: dict[str, float]
    median_positive: dict[str, float]


@dataclass(frozen=True)
class ShortcutCheck:
    """The shortcut check of a data set (``cxr.shortcut``, in ``cxr data prepare``'s summary.json),
    with the folder it came from and how the set was split. Carried verbatim (its layout belongs to
    ``cxr.shortcut``) and read through the typed properties below."""

    data: dict[str, Any]

    @property
    def source(self) -> str:
        return str(self.data.get("source", ""))

    @property
    def split_by(self) -> str:
        return str(self.data.get("split_by", ""))

    @property
    def n_images(self) -> int:
        return self.data["n_images"]

    @property
    def classes(self) -> tuple[str, str]:
        negative, positive = self.data["classes"]
        return negative, positive

    @property
    def method(self) -> str:
        return self.data["method"]

    @property
    def verdict(self) -> str:
        return str(self.data.get("verdict", ""))

    @property
    def findings(self) -> tuple[str, ...]:
        return tuple(self.data.get("findings", ()))

    @property
    def cause(self) -> str:
        return str(self.data.get("cause") or "")

    @property
    def groups(self) -> dict[str, ShortcutGroup]:
        return {
            name: ShortcutGroup(
                features=tuple(group.get("features", ())),
                cv_auc=group.get("cv_auc"),
                note=group.get("note", ""),
                median_negative=dict(group.get("median_negative") or {}),
                median_positive=dict(group.get("median_positive") or {}),
            )
            for name, group in self.data["groups"].items()
        }

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)
