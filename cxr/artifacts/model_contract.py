"""The exported model's contract: graph interface names and the ``cxr.*`` metadata, one schema.

Export writes it (``ModelContract.to_metadata``); inference, cards and reports read it
(``ModelContract.from_metadata``), validated on load by ``cxr/schemas/model_metadata.schema.json``
plus the checks a JSON schema cannot say (finite threshold, positive class = classes[1]).
The Grad-CAM layer names tie the training head to the exported ``cam`` output.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from cxr.errors import InputError
from cxr.imaging import RESIZE_RULE

METADATA_PREFIX = "cxr."
INPUT_NAME = "pixels"  # uint8 NHWC 0-255
OUTPUT_NAME = "probability"  # P(classes[1]), shape (N,)
DOMAIN_NAME = "domain_score"  # the domain guard's score, shape (N,): higher = less like the training images
CAM_NAME = "cam"  # Grad-CAM of the positive logit, (N, h, w) in 0..1
FEATURE_LAYER = "top_activation"  # the backbone's last feature map
HEAD_LAYERS = ("head_dense128", "head_dense64", "p_positive")  # the seed's head, in order
RESIZE_RULES = (RESIZE_RULE,)


class ModelContractError(InputError, ValueError):
    """Metadata that breaks the contract. One-line message."""


@lru_cache(maxsize=1)
def metadata_schema() -> dict[str, Any]:
    text = resources.files("cxr").joinpath("schemas/model_metadata.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def validate_metadata(meta: dict[str, Any], source: str = "model") -> None:
    """Raise ModelContractError (one line) unless ``meta`` (decoded values) keeps the contract."""
    import jsonschema

    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(metadata_schema()).iter_errors(meta)
    )
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "metadata"
        raise ModelContractError(f"{source}: bad cxr metadata {where}: {error.message[:200]}")
    if not math.isfinite(float(meta["threshold"])):
        raise ModelContractError(
            f"{source}: bad cxr metadata threshold: {meta['threshold']} is not a number in (0, 1)"
        )
    guard = meta.get("guard")
    if isinstance(guard, dict):
        numbers = [
            guard.get("threshold"),
            guard.get("false_flag_rate"),
            *(guard.get("reference_scores") or []),
        ]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
            raise ModelContractError(
                f"{source}: bad cxr metadata guard: its threshold, false-flag rate and "
                "reference scores must be finite numbers"
            )
    calibration = meta.get("calibration")
    if isinstance(calibration, dict) and not all(
        isinstance(calibration.get(k), (int, float)) and math.isfinite(calibration[k]) for k in ("a", "b")
    ):
        raise ModelContractError(f"{source}: bad cxr metadata calibration: a and b must be finite numbers")
    if meta["positive_class"] != meta["classes"][1]:
        raise ModelContractError(
            f"{source}: bad cxr metadata: positive_class {meta['positive_class']!r} is not "
            f"classes[1] {meta['classes'][1]!r}"
        )


@dataclass(frozen=True)
class DomainGuard:
    """The domain guard a model carries: its score output, the threshold above which an image is
    flagged as outside the training domain, and the validation images' scores (the reference of the
    set-level shift test)."""

    method: str
    threshold: float
    false_flag_rate: float
    reference_scores: tuple[float, ...]
    facts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any] | None) -> DomainGuard | None:
        if not meta:
            return None
        known = {"method", "threshold", "false_flag_rate", "reference_scores", "output"}
        return cls(
            str(meta["method"]),
            float(meta["threshold"]),
            float(meta["false_flag_rate"]),
            tuple(float(v) for v in meta["reference_scores"]),
            {k: v for k, v in meta.items() if k not in known},
        )

    def is_foreign(self, score: float) -> bool:
        return bool(score > self.threshold)

    def reason(self, score: float) -> str:
        """The ``qc`` text of a flagged image."""
        return f"outside training domain (score {score:.3f} > {self.threshold:.3f})"


@dataclass(frozen=True)
class Calibration:
    """Probability = sigmoid(a * logit + b), fitted on the validation split, folded into the graph."""

    method: str
    a: float
    b: float
    facts: dict[str, Any] = field(default_factory=dict)  # ECE before/after, where it was fitted

    @classmethod
    def from_metadata(cls, meta: dict[str, Any] | None) -> Calibration | None:
        if not meta:
            return None
        return cls(
            str(meta["method"]),
            float(meta["a"]),
            float(meta["b"]),
            {k: v for k, v in meta.items() if k not in {"method", "a", "b"}},
        )


@dataclass(frozen=True)
class Quantization:
    """An INT8 copy made by ``cxr quantize``: its format and method, the calibration set (hash of its
    sorted paths and count), the accuracy gate's figures and the fp32 file it came from."""

    dtype: str
    format: str
    method: str
    calibration_set: dict[str, Any]
    gate: dict[str, Any]
    source_sha256: str
    facts: dict[str, Any] = field(
        default_factory=dict
    )  # float groups, onnxruntime version, calibration check

    @classmethod
    def from_metadata(cls, meta: dict[str, Any] | None) -> Quantization | None:
        if not meta:
            return None
        known = {"dtype", "format", "method", "calibration_set", "gate"}
        return cls(
            str(meta["dtype"]),
            str(meta["format"]),
            str(meta["method"]),
            dict(meta["calibration_set"]),
            dict(meta["gate"]),
            str(meta["source"]["sha256"]),
            {k: v for k, v in meta.items() if k not in known},
        )


@dataclass(frozen=True)
class ModelContract:
    classes: tuple[str, str]
    threshold: float
    input_size: int
    input_dtype: str = "uint8"
    resize_rule: str = RESIZE_RULE
    threshold_rule: dict[str, Any] = field(default_factory=lambda: {"rule": "fixed"})
    facts: dict[str, Any] = field(
        default_factory=dict
    )  # variant, backbone, weights, backend, config, versions...

    @property
    def guard(self) -> DomainGuard | None:
        return DomainGuard.from_metadata(self.facts.get("guard"))

    @property
    def calibration(self) -> Calibration | None:
        return Calibration.from_metadata(self.facts.get("calibration"))

    @property
    def quantization(self) -> Quantization | None:
        return Quantization.from_metadata(self.facts.get("quantization"))

    @property
    def positive_class(self) -> str:
        return self.classes[1]

    @property
    def negative_class(self) -> str:
        return self.classes[0]

    def metadata(self) -> dict[str, Any]:
        """Every field, decoded (what the schema validates)."""
        return {
            **self.facts,
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "input_size": self.input_size,
            "input_layout": "NHWC",
            "input_dtype": self.input_dtype,
            "pixel_range": [0, 255],
            "resize_rule": self.resize_rule,
            "output": f"P({self.positive_class})",
        }

    def to_metadata(self) -> dict[str, str]:
        """ONNX metadata_props: ``cxr.<key>`` -> JSON text (plain text for strings)."""
        meta = self.metadata()
        validate_metadata(meta, "export")
        return {
            f"{METADATA_PREFIX}{k}": v if isinstance(v, str) else json.dumps(v, default=str)
            for k, v in meta.items()
        }

    @classmethod
    def from_metadata(cls, raw: dict[str, str], source: str = "model") -> ModelContract:
        meta = {
            k[len(METADATA_PREFIX) :]: _decode(v) for k, v in raw.items() if k.startswith(METADATA_PREFIX)
        }
        if "classes" not in meta or "threshold" not in meta:
            raise ModelContractError(
                f"{source} is not a cxr model: it has no cxr metadata (export it with `cxr export`)"
            )
        validate_metadata(meta, source)
        known = {
            "classes",
            "positive_class",
            "threshold",
            "threshold_rule",
            "input_size",
            "input_layout",
            "input_dtype",
            "pixel_range",
            "resize_rule",
            "output",
        }
        return cls(
            tuple(meta["classes"]),
            float(meta["threshold"]),
            int(meta["input_size"]),
            meta["input_dtype"],
            meta["resize_rule"],
            meta.get("threshold_rule") or {"rule": "unrecorded"},
            {k: v for k, v in meta.items() if k not in known},
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelContract:
        """The contract of an exported .onnx file (read with onnxruntime, CPU)."""
        import onnxruntime as ort

        from cxr.messages import first_line

        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own assorted types
            raise ModelContractError(
                f"cannot load {path} as an ONNX model: {first_line(exc)[:300]}"
            ) from None
        return cls.from_metadata(session.get_modelmeta().custom_metadata_map, str(path))

    def freezing(self) -> str:
        """What the training config froze, in words."""
        config = self.facts.get("training_config") or {}
        if "freeze_layers" in config:
            return f"first {config['freeze_layers']} base layers frozen"
        if "freeze_fraction" in config:
            return f"first {float(config['freeze_fraction']):.0%} of the base layers frozen"
        return "freezing not recorded"

    def label_for(self, probability: float) -> str:
        return self.classes[int(probability >= self.threshold)]
