"""The settings a scoring run records and a resume checks, and the counts it ends with.

Written as the first line of ``predictions.partial.jsonl`` (local engine), as ``shards/settings.json``
(ray engine) and, with the counts, as ``predictions.meta.json`` beside ``predictions.csv``::

    {"format": 2, "cxr_version", "source", "model", "model_sha256", "tta", "threshold",
     "threshold_rule", "classes", "input_size", "resize_rule", "jpeg_draft", "precision",
     "labels_source", "labels_sha256", "selection_sha256", "foreign", "guard", "calibration",
     "provider", "provider_options", "parallel_runs",
     "listing_sha256"? "engine"? "plan"? "workers"? "file_stamps"? "providers"?,   (the engine's entries)
     "n_files", "n_errors", "n_qc_flagged", "n_outside_domain", "shift"?}         (the counts)

``Predictions`` owns the files' paths and raw JSON; this module owns what the JSON means. A file
written by an older cxr may lack a key: its field then reads as None, which a resume reports as a
difference rather than guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cxr import __version__
from cxr.shift import ShiftVerdict

SETTINGS_FORMAT = 2
# What a resume must find unchanged before it keeps an interrupted run's rows.
RESUME_KEYS = (
    "model_sha256",
    "tta",
    "threshold",
    "classes",
    "input_size",
    "resize_rule",
    "jpeg_draft",
    "precision",
    "labels_sha256",
    "selection_sha256",
    "foreign",
)
ENGINE_ENTRIES = ("listing_sha256", "engine", "plan", "workers", "file_stamps", "providers")


@dataclass(frozen=True)
class Execution:
    """How a model ran: its onnxruntime provider, the CUDA arithmetic, the provider options a run
    records and how many single-threaded runs go side by side."""

    provider: str
    precision: str
    provider_options: dict[str, str] = field(default_factory=dict)
    parallel_runs: int = 1

    def to_json(self) -> dict[str, str | int | dict[str, str]]:
        return {
            "provider": self.provider,
            "precision": self.precision,
            "provider_options": dict(self.provider_options),
            "parallel_runs": self.parallel_runs,
        }


@dataclass(frozen=True)
class GuardSettings:
    """The domain guard a run scored with."""

    method: str
    threshold: float
    false_flag_rate: float


@dataclass(frozen=True)
class CalibrationSettings:
    """The calibration folded into the model a run scored with."""

    method: str
    a: float
    b: float


@dataclass(frozen=True)
class ScoringSettings:
    """What a scoring run was made with: the model and its contract, the preprocessing, the labels,
    the selection of files, the foreign-image policy and the execution; then the entries of the
    engine that ran it (each None where that engine has none)."""

    source: str
    model: str
    model_sha256: str
    tta: bool
    threshold: float
    threshold_rule: dict[str, Any]
    classes: tuple[str, ...]
    input_size: int
    resize_rule: str
    jpeg_draft: str
    precision: str
    labels_source: str
    labels_sha256: str
    selection_sha256: str
    foreign: str
    guard: GuardSettings | None
    calibration: CalibrationSettings | None
    provider: str
    provider_options: dict[str, str]
    parallel_runs: int
    listing_sha256: str | None = None  # the local engine: the files' paths, sizes and times
    engine: str | None = None  # the ray engine names itself
    plan: str | None = None  # the local engine's schedule
    workers: int | None = None
    file_stamps: dict[str, str] | None = None  # the local engine, once finished: size:mtime_ns by path
    providers: tuple[str, ...] | None = None  # the ray engine, once finished: the actors' providers
    format: int = SETTINGS_FORMAT
    cxr_version: str = __version__

    @property
    def positive_class(self) -> str:
        return self.classes[1]

    def with_engine(self, **entries: str | int | dict[str, str] | tuple[str, ...] | None) -> ScoringSettings:
        """A copy with engine entries (``ENGINE_ENTRIES``, or ``parallel_runs``) set."""
        unknown = set(entries) - {*ENGINE_ENTRIES, "parallel_runs"}
        if unknown:
            raise TypeError(f"not an engine entry: {', '.join(sorted(unknown))}")
        return replace(self, **entries)

    def to_json(self) -> dict[str, Any]:
        """The JSON object, in the file's key order; engine entries only where set."""
        data = {
            "format": self.format,
            "cxr_version": self.cxr_version,
            "source": self.source,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "tta": self.tta,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "classes": None if self.classes is None else list(self.classes),
            "input_size": self.input_size,
            "resize_rule": self.resize_rule,
            "jpeg_draft": self.jpeg_draft,
            "precision": self.precision,
            "labels_source": self.labels_source,
            "labels_sha256": self.labels_sha256,
            "selection_sha256": self.selection_sha256,
            "foreign": self.foreign,
            "guard": None if self.guard is None else asdict(self.guard),
            "calibration": None if self.calibration is None else asdict(self.calibration),
            "provider": self.provider,
            "provider_options": self.provider_options,
            "parallel_runs": self.parallel_runs,
        }
        for name in ENGINE_ENTRIES:
            value = getattr(self, name)
            if value is not None:
                data[name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_json(cls, data: object) -> ScoringSettings | None:
        """The settings a file recorded; None when ``data`` is not a settings object at all."""
        if not isinstance(data, dict):
            return None
        values = {f.name: data.get(f.name) for f in fields(cls)}
        classes, guard, calibration = values["classes"], values["guard"], values["calibration"]
        values["classes"] = tuple(classes) if isinstance(classes, list) else classes
        values["guard"] = _record(GuardSettings, guard)
        values["calibration"] = _record(CalibrationSettings, calibration)
        if isinstance(values["providers"], list):
            values["providers"] = tuple(values["providers"])
        return cls(**values)

    def differences(self, before: ScoringSettings) -> list[str]:
        """What differs between ``before`` (an earlier run's) and these settings, on ``RESUME_KEYS``,
        one phrase each."""
        old, now = before.to_json(), self.to_json()
        changed = [key for key in RESUME_KEYS if old.get(key) != now.get(key)]
        return [f"{key} was {old.get(key)!r}, now {now.get(key)!r}" for key in changed]


def _record(cls: type, data: object) -> GuardSettings | CalibrationSettings | None:
    """A guard or calibration entry as its record; None where the file has none."""
    if not isinstance(data, dict):
        return None
    return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ScoringCounts:
    """How a finished run went: files, error rows, qc flags, images outside the training domain, and
    the set-level shift test (``guarded``: the model has a guard, so the test was run, ``shift`` None
    when too few images had a score)."""

    n_files: int
    n_errors: int
    n_qc_flagged: int
    n_outside_domain: int
    guarded: bool = False
    shift: ShiftVerdict | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "n_files": self.n_files,
            "n_errors": self.n_errors,
            "n_qc_flagged": self.n_qc_flagged,
            "n_outside_domain": self.n_outside_domain,
        }
        if self.guarded:
            data["shift"] = self.shift.to_dict() if self.shift else None
        return data

    @classmethod
    def from_json(cls, data: object) -> ScoringCounts | None:
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), int) for k in ("n_files", "n_errors")
        ):
            return None
        return cls(
            int(data["n_files"]),
            int(data["n_errors"]),
            int(data.get("n_qc_flagged") or 0),
            int(data.get("n_outside_domain") or 0),
            "shift" in data,
            ShiftVerdict.from_dict(data.get("shift")),
        )


@dataclass(frozen=True)
class ScoringRecord:
    """``predictions.meta.json``: the settings a finished run was made with, and its counts."""

    settings: ScoringSettings
    counts: ScoringCounts | None = None

    def write(self, csv_path: str | Path) -> Path:
        from cxr.artifacts.predictions import Predictions

        counts = self.counts.to_json() if self.counts else {}
        return Predictions.write_settings(csv_path, {**self.settings.to_json(), **counts})

    @classmethod
    def read(cls, csv_path: str | Path) -> ScoringRecord | None:
        """The record beside a predictions CSV; None where there is none (or it is not JSON)."""
        from cxr.artifacts.predictions import Predictions

        data = Predictions.read_settings(csv_path)
        settings = ScoringSettings.from_json(data)
        return None if settings is None else cls(settings, ScoringCounts.from_json(data))
