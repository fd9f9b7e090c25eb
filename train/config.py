"""Training configuration: one TOML file for both variants, overridable from the CLI."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from cxr.errors import InputError
from cxr.files import sha256_text

VARIANTS = ("model1", "model2")
BACKBONES = ("efficientnet_b2", "efficientnet_lite2")


class ConfigError(InputError, ValueError):
    """A bad training configuration. The message is one line."""


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read the TOML config (default: the one shipped in cxr.train)."""
    if path is None:
        text = resources.files("cxr.train").joinpath("config.toml").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"bad config {path}: {exc}") from None


def resolve_variant(config: dict[str, Any], variant: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flatten ``[common]`` and ``[variant]`` into one dict (a variant's table, such as
    ``[model2.robust]``, overrides only the keys it names) and apply non-None overrides."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    resolved = merged(config.get("common", {}), config.get(variant, {}))
    resolved["variant"] = variant
    for key, value in (overrides or {}).items():
        if value is not None:
            resolved[key] = value
    if resolved.get("backbone") not in BACKBONES:
        raise ConfigError(f"unknown backbone {resolved.get('backbone')!r}; choose one of {BACKBONES}")
    if ("freeze_layers" in resolved) == ("freeze_fraction" in resolved):
        raise ConfigError(f"{variant}: set exactly one of freeze_layers or freeze_fraction")
    return resolved


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``override`` laid over it, table by table."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def config_sha256(resolved: dict[str, Any]) -> str:
    return sha256_text(json.dumps(resolved, sort_keys=True))


def frozen_layer_count(resolved: dict[str, Any], n_base_layers: int) -> int:
    if "freeze_layers" in resolved:
        return min(int(resolved["freeze_layers"]), n_base_layers)
    return int(n_base_layers * float(resolved["freeze_fraction"]))
