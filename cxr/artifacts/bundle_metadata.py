"""<model>.metadata.json: MONAI-bundle-style metadata beside a shipped model, which ``cxr card``
writes (validated against ``cxr/schemas/bundle_metadata.schema.json``) for tools outside cxr.

    {"schema", "version", "changelog", "authors", "references", "eval_metrics", "name", "task",
     "description", "intended_use", "data_source", "data_type", "image_classes", "sha256",
     "network_data_format": {"inputs": {NAME: TENSOR}, "outputs": {NAME: TENSOR}}}
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cxr.files import write_json_atomic

SCHEMA = "cxr/schemas/bundle_metadata.schema.json"


@dataclass(frozen=True)
class TensorFormat:
    """One input or output tensor as MONAI's ``network_data_format`` describes it; the fields a
    tensor does not have (None) are left out of the file."""

    type: str
    format: str
    num_channels: int
    spatial_shape: tuple[int, ...]
    dtype: str
    value_range: tuple[float, float]
    modality: str | None = None
    is_patch_data: bool | None = None
    is_onehot: bool | None = None
    layout: str | None = None
    resize_rule: str | None = None
    channel_def: dict[str, str] | None = None
    threshold: float | None = None
    description: str | None = None

    ORDER = (
        "type",
        "format",
        "modality",
        "num_channels",
        "spatial_shape",
        "dtype",
        "value_range",
        "is_patch_data",
        "is_onehot",
        "layout",
        "resize_rule",
        "channel_def",
        "threshold",
        "description",
    )

    def to_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.ORDER}
        data = {name: value for name, value in values.items() if value is not None}
        return {
            **data,
            "spatial_shape": list(self.spatial_shape),
            "value_range": list(self.value_range),
            **({"channel_def": dict(self.channel_def)} if self.channel_def is not None else {}),
        }


@dataclass(frozen=True)
class BundleMetadata:
    """A shipped model's bundle metadata: version and changelog, authors and references, the test
    metrics, what it does and on which data, its classes and hash, and its tensors."""

    version: str
    changelog: dict[str, str]
    authors: str
    references: tuple[str, ...]
    eval_metrics: dict[str, float]
    name: str
    task: str
    description: str
    intended_use: str
    data_source: str
    data_type: str
    image_classes: tuple[str, ...]
    sha256: str
    inputs: dict[str, TensorFormat]
    outputs: dict[str, TensorFormat]

    @staticmethod
    def path_for(model_path: str | Path) -> Path:
        return Path(model_path).with_suffix(".metadata.json")

    def to_dict(self) -> dict[str, Any]:
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("inputs", "outputs")}
        return {
            "schema": SCHEMA,
            **plain,
            "references": list(self.references),
            "image_classes": list(self.image_classes),
            "network_data_format": {
                "inputs": {name: tensor.to_dict() for name, tensor in self.inputs.items()},
                "outputs": {name: tensor.to_dict() for name, tensor in self.outputs.items()},
            },
        }

    def write(self, model_path: str | Path) -> Path:
        """``<model>.metadata.json`` beside the model."""
        return write_json_atomic(self.path_for(model_path), self.to_dict())
