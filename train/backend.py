"""The Keras backend of a training run: chosen before Keras is imported, recorded in run.json.

``tensorflow`` (the default) keeps the tf.data input pipeline with augmentation mapped in
parallel; ``jax`` and ``torch`` train from a backend-neutral ``keras.utils.PyDataset`` of uint8
batches, with the augmentation as Keras layers inside the training step (on the accelerator).
Either way the exported model holds no augmentation layer: the checkpoint is the classifier alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cxr.errors import InputError

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_bfloat16")


class BackendError(InputError, RuntimeError):
    """The requested backend cannot be used in this process. One-line message."""


def select_backend(name: str | None) -> str:
    """Set KERAS_BACKEND (``name``, else the environment's, else tensorflow) before Keras loads."""
    wanted = name or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if wanted not in BACKENDS:
        raise BackendError(f"unknown Keras backend {wanted!r}; choose one of {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != wanted:
            raise BackendError(
                f"Keras is already loaded with the {keras.backend.backend()} backend in this "
                f"process; start a new one with KERAS_BACKEND={wanted}"
            )
        return wanted
    os.environ["KERAS_BACKEND"] = wanted
    if wanted == "jax":
        use_jax_compilation_cache()
    return wanted


def use_jax_compilation_cache() -> None:
    """JAX's persistent compilation cache, so that a resumed or repeated run with the same model
    and batch shapes compiles nothing again. Building the model and its optimizer runs some
    1,500 small ops eagerly, each compiled once (about 0.1 s each on a CPU, so minutes per run),
    and JAX caches only compilations over 1 s by default: here every one is kept. Set before JAX
    loads, through JAX's own variables, which the environment can override
    (``JAX_COMPILATION_CACHE_DIR``, default ``~/.cache/cxr/jax``)."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path("~/.cache/cxr/jax").expanduser()))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def seed_everything(seed: int) -> None:
    """``keras.utils.set_random_seed`` (Python, NumPy, the backend, Keras' global SeedGenerator).
    On a backend other than TensorFlow it must not import TensorFlow just to seed it (it would,
    whenever TensorFlow happens to be installed), so the import is refused while it runs."""
    import keras

    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    sys.modules["tensorflow"] = None  # type: ignore[assignment] - makes `import tensorflow` fail here
    try:
        keras.utils.set_random_seed(seed)
    finally:
        del sys.modules["tensorflow"]


def active_backend() -> str:
    import keras

    return keras.backend.backend()


def set_precision(precision: str) -> None:
    """The global Keras dtype policy for building a model (the head's output stays float32)."""
    import keras

    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    keras.mixed_precision.set_global_policy(precision)


def float32_copy(model):
    """The same network and weights with every layer in float32 (what a checkpoint holds after
    mixed-precision training, so export and inference never see bfloat16)."""

    def strip(value):
        if isinstance(value, dict):
            if value.get("class_name") == "DTypePolicy" or value.get("class_name") == "FloatDTypePolicy":
                return "float32"
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return "float32" if value in ("mixed_bfloat16", "mixed_float16") else value

    copy = model.__class__.from_config(strip(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy
