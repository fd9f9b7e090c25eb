"""Loading an exported cxr ONNX model with onnxruntime. No TensorFlow here.

Everything needed to use the model (classes, threshold, input size, resize rule,
training config) is read from the model's metadata, never from constants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.artifacts.model_contract import (
    CAM_NAME,
    DOMAIN_NAME,
    OUTPUT_NAME,
    ModelContract,
    ModelContractError,
)
from cxr.artifacts.scoring_settings import Execution
from cxr.errors import InputError
from cxr.files import sha256_file
from cxr.messages import first_line

PRECISIONS = ("fp32", "tf32")
OUTPUT_TOLERANCE = 1e-6  # a probability may exceed [0, 1] by float rounding, no more


class ModelLoadError(InputError, ValueError):
    """The model file is missing, not ONNX, or not a cxr model. One-line message."""


class ProviderError(InputError, RuntimeError):
    """The requested execution provider cannot be had. One-line message."""


class ModelOutputError(InputError, ValueError):
    """The model produced something that is not a probability. One-line message."""


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model file: its path, content hash and contract (the validated metadata)."""

    path: Path
    sha256: str
    contract: ModelContract

    @property
    def classes(self) -> list[str]:
        return list(self.contract.classes)

    @property
    def positive_class(self) -> str:
        return self.contract.positive_class

    @property
    def threshold(self) -> float:
        return self.contract.threshold

    @property
    def input_size(self) -> int:
        return self.contract.input_size

    @property
    def input_dtype(self) -> str:
        return self.contract.input_dtype

    @property
    def resize_rule(self) -> str:
        return self.contract.resize_rule

    @property
    def metadata(self) -> dict[str, Any]:
        return self.contract.metadata()


def default_thread_count() -> int:
    """Intra-op threads: the CPUs this process may use (respects affinity / cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def cuda_provider_options(precision: str = "fp32") -> dict[str, str]:
    """CUDA execution provider options: TF32 off unless asked for (TF32 convolutions differ from
    CPU results by up to about 1e-2), and exhaustive cuDNN algorithm search (the default search
    was 20 times slower on an H200)."""
    if precision not in PRECISIONS:
        raise ProviderError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    return {"use_tf32": "1" if precision == "tf32" else "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}


def choose_providers(device: str, precision: str = "fp32") -> list:
    """onnxruntime providers for ``device`` (auto, cpu, cuda), CUDA with its options."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise ProviderError(
            "--device cuda: this onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu (extra [gpu])"
        )
    if not has_cuda:
        return ["CPUExecutionProvider"]
    if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21: CUDA/cuDNN from the nvidia-* wheels
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - a failed preload leaves the system libraries to try
            pass
    return [("CUDAExecutionProvider", cuda_provider_options(precision)), "CPUExecutionProvider"]


class OnnxClassifier:
    """An onnxruntime session over a cxr model: ``predict(uint8 NHWC batch) -> P(positive)``."""

    def __init__(
        self, path: str | Path, device: str = "auto", threads: int | None = None, precision: str = "fp32"
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        providers = choose_providers(device, precision)
        # On CPUs, by default: single-threaded runs, one per core, at the same time (Run is thread-safe),
        # instead of one run split over every core. Intra-op threads meet at a barrier after each of
        # the graph's hundreds of ops, so a core taken by a decode worker stalls them all; whole runs
        # side by side share the cores with the decoders without waiting on each other.
        self.parallel_runs = (
            default_thread_count() if threads is None and providers == ["CPUExecutionProvider"] else 1
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if self.parallel_runs > 1 else (threads or default_thread_count())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # The scorer's decode workers share the cores: idle intra-op threads must sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._pool = None
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own assorted types
            raise ModelLoadError(
                f"cannot load {self.path} as an ONNX model: {first_line(exc)[:300]}"
            ) from None
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise ProviderError(
                f"--device cuda: onnxruntime fell back to {self.provider} (no usable GPU/CUDA libraries)"
            )
        self.provider_options = self.session.get_provider_options().get(self.provider, {})
        self.precision = precision if self.provider == "CUDAExecutionProvider" else "fp32"
        try:
            contract = ModelContract.from_metadata(
                self.session.get_modelmeta().custom_metadata_map, str(self.path)
            )
        except ModelContractError as exc:
            raise ModelLoadError(str(exc)) from None
        self.info = ModelInfo(self.path, sha256_file(self.path), contract)
        self._check_input()
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
        self.has_cam = CAM_NAME in outputs
        self.guard = contract.guard
        if (self.guard is not None) != (DOMAIN_NAME in outputs):
            raise ModelLoadError(
                f"{self.path}: its metadata and its graph disagree about the domain guard "
                f"('{DOMAIN_NAME}' output {'missing' if self.guard else 'without metadata'})"
            )

    @property
    def execution(self) -> Execution:
        """The provider facts a run records (metrics.json, evaluation history, predictions.meta.json)."""
        keep = ("use_tf32", "cudnn_conv_algo_search", "device_id")
        return Execution(
            self.provider,
            self.precision,
            {k: v for k, v in self.provider_options.items() if k in keep},
            self.parallel_runs,
        )

    def _run(self, names: list[str], batch: np.ndarray) -> list[np.ndarray]:
        """``session.run`` on ``batch``; with ``parallel_runs > 1`` split into that many parts
        run side by side on threads (onnxruntime releases the GIL), outputs joined in order."""
        feeds = {self.input_name: batch}
        if self.parallel_runs <= 1 or len(batch) < 2:
            return self.session.run(names, feeds)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.parallel_runs, thread_name_prefix="cxr-onnxruntime")
        parts = np.array_split(batch, min(self.parallel_runs, len(batch)))
        results = list(self._pool.map(lambda part: self.session.run(names, {self.input_name: part}), parts))
        return [np.concatenate([result[i] for result in results]) for i in range(len(names))]

    def _check_input(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.path}: expected one input, found {len(inputs)}")
        shape = inputs[0].shape
        size = self.info.input_size
        if len(shape) != 4 or list(shape[1:]) != [size, size, 3]:
            raise ModelLoadError(
                f"{self.path}: input shape {shape} does not match its metadata (NHWC {size}x{size}x3)"
            )
        want = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}.get(self.info.input_dtype)
        if inputs[0].type != want:
            raise ModelLoadError(
                f"{self.path}: input type {inputs[0].type} does not match its metadata "
                f"({self.info.input_dtype})"
            )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """P(positive class) for a (N, size, size, 3) uint8 batch of 0-255 pixels."""
        batch = np.ascontiguousarray(
            batch, dtype=np.uint8 if self.info.input_dtype == "uint8" else np.float32
        )
        out = self._run([self.output_name], batch)[0].reshape(-1).astype(np.float64)
        return checked_probabilities(out, len(batch), self.path)

    def predict_with_domain(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(positive), domain guard score) per image; the score is NaN for a model without a guard."""
        if self.guard is None:
            return self.predict(batch), np.full(len(batch), np.nan)
        batch = np.ascontiguousarray(
            batch, dtype=np.uint8 if self.info.input_dtype == "uint8" else np.float32
        )
        p, domain = self._run([self.output_name, DOMAIN_NAME], batch)
        return (
            checked_probabilities(p.reshape(-1).astype(np.float64), len(batch), self.path),
            domain.reshape(-1).astype(np.float64),
        )

    def explain(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(positive), Grad-CAM maps (N, h, w) in 0..1) from a model exported with its 'cam' output."""
        if not self.has_cam:
            raise ModelLoadError(f"{self.path} has no 'cam' output (re-export it with this version of cxr)")
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        p, cam = self._run([self.output_name, CAM_NAME], batch)
        return checked_probabilities(p.reshape(-1).astype(np.float64), len(batch), self.path), cam


def checked_probabilities(p: np.ndarray, n: int, source: Path) -> np.ndarray:
    """``p`` clipped to [0, 1] when it is a probability per image; ModelOutputError otherwise."""
    if p.shape != (n,):
        raise ModelOutputError(f"{source} returned {p.size} values for {n} images; not a cxr model output")
    bad = ~np.isfinite(p) | (p < -OUTPUT_TOLERANCE) | (p > 1 + OUTPUT_TOLERANCE)
    if bad.any():
        raise ModelOutputError(
            f"{source} returned {p[bad][0]:.6g}, which is not a probability in [0, 1]; "
            "its graph does not match its cxr metadata"
        )
    return np.clip(p, 0.0, 1.0)


def tta_views(batch: np.ndarray, shift: int) -> list[np.ndarray]:
    """Test-time augmentation views of a uint8 NHWC batch: identity, horizontal flip, and
    shifts of ``shift`` pixels left/right/up/down (edges replicated)."""
    views = [batch, batch[:, :, ::-1]]
    padded = np.pad(batch, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    h, w = batch.shape[1:3]
    for dy, dx in ((0, -shift), (0, shift), (-shift, 0), (shift, 0)):
        views.append(padded[:, shift + dy : shift + dy + h, shift + dx : shift + dx + w])
    return views


def predict_tta(model: OnnxClassifier, batch: np.ndarray) -> np.ndarray:
    """Mean P(positive) over the TTA views (6 model calls per batch)."""
    shift = max(1, model.info.input_size // 32)
    return np.mean([model.predict(view) for view in tta_views(batch, shift)], axis=0)


def predict_with_domain(model: OnnxClassifier, batch: np.ndarray, tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """(P(positive), domain score): with TTA the probability is the mean over the views and the domain
    score is the unaltered image's."""
    p, domain = model.predict_with_domain(batch)
    if tta:
        shift = max(1, model.info.input_size // 32)
        p = np.mean([p] + [model.predict(view) for view in tta_views(batch, shift)[1:]], axis=0)
    return p, domain
