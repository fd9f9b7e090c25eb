"""Training configuration: one precedence, resolved in one place (``resolve_config``), as timm's
``resolve_data_config``: the command line over the config file over the defaults.

- defaults: ``cxr.artifacts.TrainingConfig``'s fields, the one source of every default setting;
- the config file: TOML with ``[common]`` and a table per variant (``[model2.robust]`` overrides only
  the keys it names); default the shipped ``train/config.toml``;
- the command line: a ``TrainingOverrides``, where a None means "not given".

The resolved record is what a run trains with and writes as its config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from cxr.artifacts.training_config import (  # noqa: F401 - re-exported: the choices the command line offers
    BACKBONES,
    VARIANTS,
    TrainingConfig,
    TrainingConfigError,
)


class ConfigError(TrainingConfigError):
    """A bad training configuration. The message is one line."""


@dataclass(frozen=True)
class ConfigFile:
    """A TOML training config: the ``[common]`` table and each variant's own, as parsed (the file's
    layer of the precedence), and where it came from."""

    source: str
    tables: dict[str, Any]

    def layers(self, variant: str) -> list[tuple[str, dict]]:
        """(where, table) of ``[common]`` then ``[variant]``, in the order they apply."""
        return [(f"{self.source} [{name}]", self.tables.get(name, {})) for name in ("common", variant)]


@dataclass(frozen=True)
class TrainingOverrides:
    """The settings given on the command line (None: not given, the config file's or the default holds)."""

    backbone: str | None = None
    weights: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    input_size: int | None = None
    augment_policy: str | None = None
    equalise_sigma: float | None = None
    freeze_bn: bool | None = None
    precision: str | None = None
    seed: int | None = None

    def given(self) -> dict[str, str | int | float | bool]:
        """The settings that were given, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def load_config(path: str | Path | None = None) -> ConfigFile:
    """Read the TOML config (default: the one shipped in cxr.train)."""
    if path is None:
        source, text = (
            "train/config.toml",
            resources.files("cxr.train").joinpath("config.toml").read_text("utf-8"),
        )
    else:
        try:
            source, text = str(path), Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(exc)) from None
    try:
        return ConfigFile(source, tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"bad config {path}: {exc}") from None


def resolve_config(
    variant: str, config_file: ConfigFile | None = None, cli: TrainingOverrides | None = None
) -> TrainingConfig:
    """The settings ``variant`` trains with: the command line over the config file over the defaults."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    config = TrainingConfig(variant)
    try:
        for where, table in (config_file or load_config()).layers(variant):
            config = config.layered(table, where)
        return config.layered((cli or TrainingOverrides()).given(), "command line").check()
    except TrainingConfigError as exc:
        raise ConfigError(str(exc)) from None


def resolve_variant(
    config_file: ConfigFile,
    variant: str,
    overrides: TrainingOverrides | dict[str, str | int | float] | None = None,
) -> TrainingConfig:
    """``resolve_config`` with the overrides as a record or by name (None values: not given)."""
    if isinstance(overrides, dict):
        overrides = TrainingOverrides(**{k: v for k, v in overrides.items() if v is not None})
    return resolve_config(variant, config_file, overrides)
