"""config.json of a training run: the resolved training settings of one variant, as one typed record
(like timm's ``PretrainedCfg``). ``cxr train`` resolves it (``cxr.train.config.resolve_config``:
command line over config file over the defaults here) and writes it; export, recalibrate-bn, explain
and resume read it, and every exported model carries it (metadata ``training_config``).

The defaults below are the one source of every default training setting; ``train/config.toml`` is
the shipped config file laid over them (it restates them, with the reasons). A config.json written
before a setting existed reads as that setting's value then (``RECORDED_BEFORE``): runs from before
the augmentation policy was recorded used the original notebook's table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from cxr import CLASS_NAMES_DEFAULT
from cxr.errors import InputError
from cxr.files import sha256_text

VARIANTS = ("model1", "model2")
BACKBONES = ("efficientnet_b2", "efficientnet_lite2")
AUGMENT_POLICIES = ("seed", "robust")
DTYPE_POLICIES = ("float32", "mixed_bfloat16")
DEFAULT_AUGMENT_POLICY = "robust"
# What a config.json that lacks a setting was trained with: the notebook's augmentation table.
RECORDED_BEFORE = {"augment_policy": "seed"}


class TrainingConfigError(InputError, ValueError):
    """A training configuration that does not hold (an unknown key or value, a wrong type). One line."""


@dataclass(frozen=True)
class AugmentTable:
    """The original notebook's ImageDataGenerator table (training data only). ImageDataGenerator's
    shear_range is an angle in degrees; ``zoom`` draws x and y independently in [1 - zoom, 1 + zoom]."""

    rotation_degrees: float = 30
    width_shift: float = 0.2
    height_shift: float = 0.2
    shear_degrees: float = 0.2
    zoom: float = 0.2
    horizontal_flip: bool = True
    fill_mode: str = "nearest"


@dataclass(frozen=True)
class RobustAugment:
    """The ``robust`` policy's photometric and acquisition changes, after the notebook's table."""

    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: float = 0.15
    brightness: float = 0.1
    smooth_probability: float = 0.5
    blur_sigma: float = 1.0
    downscale: float = 0.5
    noise_probability: float = 0.8
    noise_max_sd: float = 8.0


@dataclass(frozen=True)
class CallbackSettings:
    """ReduceLROnPlateau and EarlyStopping on val_loss, as in the notebook."""

    reduce_lr_factor: float = 0.2
    reduce_lr_patience: int = 10
    min_lr: float = 1e-5
    early_stopping_patience: int = 10


@dataclass(frozen=True)
class TrainingConfig:
    """Everything one variant is trained with. Exactly one of ``freeze_layers`` (the first N layers
    of the base) and ``freeze_fraction`` (that share of them) is set; ``precision`` is the Keras
    dtype policy."""

    variant: str
    backbone: str = "efficientnet_b2"
    weights: str = "imagenet"  # imagenet | none | a weights file
    input_size: int = 128
    classes: tuple[str, str] = CLASS_NAMES_DEFAULT
    epochs: int = 30
    learning_rate: float = 1e-4
    batch_size: int = 64
    class_weight: str = "balanced"
    freeze_bn: bool = False
    seed: int = 42
    augment_policy: str = DEFAULT_AUGMENT_POLICY
    equalise_sigma: float = 0.0
    freeze_layers: int | None = None
    freeze_fraction: float | None = None
    precision: str = "float32"
    augment: AugmentTable = field(default_factory=AugmentTable)
    robust: RobustAugment = field(default_factory=RobustAugment)
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)

    def check(self) -> TrainingConfig:
        """A TrainingConfigError (one line) unless the settings are ones cxr can train with."""
        choices = (
            ("variant", VARIANTS),
            ("backbone", BACKBONES),
            ("augment_policy", AUGMENT_POLICIES),
            ("precision", DTYPE_POLICIES),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise TrainingConfigError(f"unknown {name} {getattr(self, name)!r}; choose one of {allowed}")
        if (self.freeze_layers is None) == (self.freeze_fraction is None):
            raise TrainingConfigError(f"{self.variant}: set exactly one of freeze_layers or freeze_fraction")
        if len(self.classes) != 2:
            raise TrainingConfigError(
                f"classes must name two classes, negative first, not {list(self.classes)}"
            )
        return self

    @property
    def positive_class(self) -> str:
        return self.classes[1]

    def frozen_layer_count(self, n_base_layers: int) -> int:
        """How many of the base's ``n_base_layers`` layers are frozen."""
        if self.freeze_layers is not None:
            return min(int(self.freeze_layers), n_base_layers)
        return int(n_base_layers * float(self.freeze_fraction))

    def to_json(self) -> dict[str, Any]:
        """config.json: every setting (the freezing that is not used left out)."""
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["robust"]["gamma"] = list(self.robust.gamma)
        for name in ("freeze_layers", "freeze_fraction"):
            if data[name] is None:
                del data[name]
        return data

    def sha256(self) -> str:
        return sha256_text(json.dumps(self.to_json(), sort_keys=True))

    @classmethod
    def from_json(cls, data: dict[str, Any], *, where: str = "config") -> TrainingConfig:
        """A recorded config (config.json, a model's training_config); keys it lacks take the value
        they had before they were recorded (``RECORDED_BEFORE``), else their default; a key cxr
        does not know, or a value it cannot train with, is a TrainingConfigError."""
        if not isinstance(data, dict) or "variant" not in data:
            raise TrainingConfigError(f"{where}: not a training config (no variant)")
        return cls(str(data["variant"])).layered({**RECORDED_BEFORE, **data}, where).check()

    def layered(self, settings: dict[str, Any], where: str = "config") -> TrainingConfig:
        """These settings with ``settings`` laid over them: a table (``augment``, ``robust``,
        ``callbacks``) overrides only the keys it names. An unknown key is a TrainingConfigError."""
        changes = _known(type(self), settings, where)
        for name, value in changes.items():
            if name in TABLES:
                if not isinstance(value, dict):
                    raise TrainingConfigError(f"{where}: [{name}] must be a table")
                changes[name] = replace(
                    getattr(self, name), **_known(TABLES[name], value, f"{where} [{name}]")
                )
        if "classes" in changes:
            changes["classes"] = tuple(changes["classes"])
        if "robust" in changes:
            changes["robust"] = replace(changes["robust"], gamma=tuple(changes["robust"].gamma))
        return replace(self, **changes)


TABLES = {"augment": AugmentTable, "robust": RobustAugment, "callbacks": CallbackSettings}


def _known(record: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` whose keys are fields of ``record``; an unknown one is a TrainingConfigError."""
    names = {f.name for f in fields(record)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TrainingConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})"
        )
    return dict(values)
