"""run.json of a training run: the facts ``cxr train`` records (what it trained, with what, on which
manifest, how it ended) and ``cxr recalibrate-bn`` adds to; export, resume and the model card read
them. One typed record, ``RunFacts``; a run.json from an older cxr reads with the values those runs
had (``tensorflow``, ``float32``) where it lacks a fact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cxr.errors import InputError


class RunFactsError(InputError, ValueError):
    """A run.json that lacks what export needs. One-line message."""


@dataclass(frozen=True)
class ParamCounts:
    trainable: int
    non_trainable: int
    total: int


@dataclass(frozen=True)
class ModelFacts:
    """The built classifier: its base's layers, how many are frozen, and its parameter counts."""

    base_layers: int
    frozen_base_layers: int
    params: ParamCounts


@dataclass(frozen=True)
class HistoryFacts:
    """From history.csv: epochs run, the 1-based epoch with the lowest val_loss, and that loss."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float


@dataclass(frozen=True)
class Spread:
    """Validation ROC AUC and the spread of the probabilities."""

    roc_auc: float
    p_min: float
    p_max: float
    p_std: float


@dataclass(frozen=True)
class ModeGap:
    """Validation figures with BatchNorm on its moving averages (inference) and on batch statistics."""

    n: int
    batch_size: int
    moving_averages: Spread
    batch_statistics: Spread

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModeGap:
        return cls(
            int(data["n"]),
            int(data["batch_size"]),
            Spread(**data["moving_averages"]),
            Spread(**data["batch_statistics"]),
        )


@dataclass(frozen=True)
class BnRecalibration:
    """``cxr recalibrate-bn``: the run it copied, on how many training images, in what batches, how
    many BatchNorm layers, and the validation gap before and after."""

    source_run: str
    images: int
    batch_size: int
    seed: int
    layers: int
    val_before: ModeGap
    val_after: ModeGap

    def summary(self) -> dict[str, str | int]:
        """What an exported model records of it (the validation figures stay in run.json)."""
        return {
            "source_run": self.source_run,
            "images": self.images,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "layers": self.layers,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BnRecalibration:
        return cls(
            str(data["source_run"]),
            int(data["images"]),
            int(data["batch_size"]),
            int(data["seed"]),
            int(data["layers"]),
            ModeGap.from_json(data["val_before"]),
            ModeGap.from_json(data["val_after"]),
        )


@dataclass(frozen=True)
class RunFacts:
    """What a training run records: the variant, backbone, weights and seed; the augmentation policy,
    backend, dtype policy and input pipeline; the config and manifest (path and hashes); classes and
    input size; class weights and split sizes; the model built; warnings and package versions; once
    it ends (or is cut by the time budget), the history's facts and how it ended; after
    recalibration, that."""

    variant: str
    backbone: str
    weights: str
    freeze_bn: bool
    seed: int
    augment_policy: str
    config_sha256: str
    manifest_sha256: str
    classes: tuple[str, ...]
    input_size: int
    backend: str = "tensorflow"
    precision: str = "float32"
    input_pipeline: str = ""
    manifest: str | None = None
    class_weight: dict[int, float] = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    model: ModelFacts | None = None
    warnings: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    history: HistoryFacts | None = None
    fit_seconds_this_session: float | None = None
    finished: bool = False
    stopped_reason: str | None = None
    bn_recalibration: BnRecalibration | None = None

    @property
    def epochs_run(self) -> int | None:
        return self.history.epochs_run if self.history else None

    @property
    def best_epoch(self) -> int | None:
        return self.history.best_epoch if self.history else None

    @property
    def best_val_loss(self) -> float | None:
        return self.history.best_val_loss if self.history else None

    def ended(
        self, history: HistoryFacts | None, seconds: float, finished: bool, stopped_reason: str
    ) -> RunFacts:
        return replace(
            self,
            history=history,
            fit_seconds_this_session=seconds,
            finished=finished,
            stopped_reason=stopped_reason,
        )

    def to_json(self) -> dict[str, Any]:
        """run.json, in its key order; what a run has not reached yet is left out."""
        data: dict[str, Any] = {
            "variant": self.variant,
            "backbone": self.backbone,
            "weights": self.weights,
            "freeze_bn": self.freeze_bn,
            "seed": self.seed,
            "augment_policy": self.augment_policy,
            "backend": self.backend,
            "precision": self.precision,
            "input_pipeline": self.input_pipeline,
            "config_sha256": self.config_sha256,
            "manifest": self.manifest,
            "manifest_sha256": self.manifest_sha256,
            "classes": list(self.classes),
            "input_size": self.input_size,
            "class_weight": {str(k): v for k, v in self.class_weight.items()},
            "n_train": self.n_train,
            "n_val": self.n_val,
            **(asdict(self.model) if self.model else {}),
            "warnings": list(self.warnings),
            "versions": dict(self.versions),
        }
        if self.history is not None:
            data.update(asdict(self.history))
        if self.stopped_reason is not None:
            data.update(
                {
                    "fit_seconds_this_session": self.fit_seconds_this_session,
                    "finished": self.finished,
                    "stopped_reason": self.stopped_reason,
                }
            )
        if self.bn_recalibration is not None:
            data["bn_recalibration"] = asdict(self.bn_recalibration)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "run.json") -> RunFacts:
        missing = [key for key in ("variant", "config_sha256", "manifest_sha256") if key not in data]
        if missing:
            raise RunFactsError(f"{where}: not a training run's facts (no {', '.join(missing)})")
        history = None
        if all(data.get(key) is not None for key in ("epochs_run", "best_epoch", "best_val_loss")):
            history = HistoryFacts(
                int(data["epochs_run"]), int(data["best_epoch"]), float(data["best_val_loss"])
            )
        model = None
        if all(key in data for key in ("base_layers", "frozen_base_layers", "params")):
            model = ModelFacts(
                int(data["base_layers"]), int(data["frozen_base_layers"]), ParamCounts(**data["params"])
            )
        recalibration = data.get("bn_recalibration")
        return cls(
            variant=str(data["variant"]),
            backbone=str(data.get("backbone", "")),
            weights=str(data.get("weights", "")),
            freeze_bn=bool(data.get("freeze_bn", False)),
            seed=int(data.get("seed", 0)),
            augment_policy=str(data.get("augment_policy") or "seed"),
            config_sha256=str(data["config_sha256"]),
            manifest_sha256=str(data["manifest_sha256"]),
            classes=tuple(data.get("classes") or ()),
            input_size=int(data.get("input_size", 0)),
            backend=str(data.get("backend", "tensorflow")),
            precision=str(data.get("precision", "float32")),
            input_pipeline=str(data.get("input_pipeline", "")),
            manifest=data.get("manifest"),
            class_weight={int(k): float(v) for k, v in (data.get("class_weight") or {}).items()},
            n_train=int(data.get("n_train", 0)),
            n_val=int(data.get("n_val", 0)),
            model=model,
            warnings=tuple(data.get("warnings") or ()),
            versions=dict(data.get("versions") or {}),
            history=history,
            fit_seconds_this_session=data.get("fit_seconds_this_session"),
            finished=bool(data.get("finished", False)),
            stopped_reason=data.get("stopped_reason"),
            bn_recalibration=BnRecalibration.from_json(recalibration)
            if isinstance(recalibration, dict)
            else None,
        )
