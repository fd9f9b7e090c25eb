"""Loading an exported cxr ONNX model with onnxruntime. No TensorFlow here.

Everything needed to use the model (classes, threshold, input size, resize rule,
training config) is read from the model's metadata, never from constants.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.files import sha256_file

METADATA_PREFIX = "cxr."
OUTPUT_NAME, CAM_NAME = "probability", "cam"  # the exported graph's outputs (cxr.export writes them)
REQUIRED_METADATA = ("classes", "threshold", "input_size", "input_layout", "input_dtype", "resize_rule")


class ModelLoadError(ValueError):
    """The model file is missing, not ONNX, or not a cxr model. One-line message."""


class ProviderError(RuntimeError):
    """The requested execution provider cannot be had. One-line message."""


@dataclass
class ModelInfo:
    path: Path
    sha256: str
    classes: list[str]
    threshold: float
    input_size: int
    input_dtype: str
    resize_rule: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def positive_class(self) -> str:
        return self.classes[1]


def _parse_metadata(raw: dict[str, str], path: Path) -> dict[str, Any]:
    meta = {k[len(METADATA_PREFIX):]: v for k, v in raw.items() if k.startswith(METADATA_PREFIX)}
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelLoadError(f"{path} is not a cxr model: metadata lacks {', '.join(missing)} (export it with `cxr export`)")
    parsed = {}
    for key, value in meta.items():
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def default_thread_count() -> int:
    """Intra-op threads: the CPUs this process may use (respects affinity / cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def choose_providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise ProviderError("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu (extra [gpu])")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if has_cuda else ["CPUExecutionProvider"]


class OnnxClassifier:
    """An onnxruntime session over a cxr model: ``predict(uint8 NHWC batch) -> P(positive)``."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_thread_count()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = choose_providers(device)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own assorted types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load {self.path} as an ONNX model: {first[:300]}") from None
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise ProviderError(f"--device cuda: onnxruntime fell back to {self.provider} (no usable GPU/CUDA libraries)")
        meta = _parse_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.info = ModelInfo(self.path, sha256_file(self.path), list(meta["classes"]), float(meta["threshold"]),
                              int(meta["input_size"]), str(meta["input_dtype"]), str(meta["resize_rule"]), meta)
        self._check_input()
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
        self.has_cam = CAM_NAME in outputs

    def _check_input(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.path}: expected one input, found {len(inputs)}")
        shape = inputs[0].shape
        size = self.info.input_size
        if len(shape) != 4 or list(shape[1:]) != [size, size, 3]:
            raise ModelLoadError(f"{self.path}: input shape {shape} does not match its metadata "
                                 f"(NHWC {size}x{size}x3)")
        want = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}.get(self.info.input_dtype)
        if inputs[0].type != want:
            raise ModelLoadError(f"{self.path}: input type {inputs[0].type} does not match its metadata "
                                 f"({self.info.input_dtype})")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """P(positive class) for a (N, size, size, 3) uint8 batch of 0-255 pixels."""
        batch = np.ascontiguousarray(batch, dtype=np.uint8 if self.info.input_dtype == "uint8" else np.float32)
        return self.session.run([self.output_name], {self.input_name: batch})[0].reshape(-1).astype(np.float64)

    def explain(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(positive), Grad-CAM maps (N, h, w) in 0..1) from a model exported with its 'cam' output."""
        if not self.has_cam:
            raise ModelLoadError(f"{self.path} has no 'cam' output (re-export it with this version of cxr)")
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        p, cam = self.session.run([self.output_name, CAM_NAME], {self.input_name: batch})
        return p.reshape(-1).astype(np.float64), cam


def tta_views(batch: np.ndarray, shift: int) -> list[np.ndarray]:
    """Test-time augmentation views of a uint8 NHWC batch: identity, horizontal flip, and
    shifts of ``shift`` pixels left/right/up/down (edges replicated)."""
    views = [batch, batch[:, :, ::-1]]
    padded = np.pad(batch, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    h, w = batch.shape[1:3]
    for dy, dx in ((0, -shift), (0, shift), (-shift, 0), (shift, 0)):
        views.append(padded[:, shift + dy:shift + dy + h, shift + dx:shift + dx + w])
    return views


def predict_tta(model: "OnnxClassifier", batch: np.ndarray) -> np.ndarray:
    """Mean P(positive) over the TTA views (6 model calls per batch)."""
    shift = max(1, model.info.input_size // 32)
    return np.mean([model.predict(view) for view in tta_views(batch, shift)], axis=0)
