"""Read a legacy (non-zip) PyTorch ``.pth`` state dict into numpy arrays, without PyTorch.

The legacy format is: a magic-number pickle, a protocol pickle, a sys-info pickle,
the state-dict pickle (tensors refer to storages by persistent id), a pickle of the
storage keys, then each storage as an int64 element count followed by raw bytes.

Only the classes a state dict needs are allowed; anything else in the pickle is
refused, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a class a state dict does not need."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _TensorRef:
    """A tensor waiting for its storage bytes."""

    def __init__(self, storage_key: str, offset: int, size: tuple, stride: tuple):
        self.storage_key, self.offset, self.size, self.stride = (
            storage_key,
            offset,
            tuple(size),
            tuple(stride),
        )


class _StorageRef:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


def _rebuild_tensor(storage: _StorageRef, storage_offset: int, size, stride, *_ignored) -> _TensorRef:
    return _TensorRef(storage.key, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    }

    def __init__(self, handle: BinaryIO, storages: dict[str, _StorageRef]):
        super().__init__(handle)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(f"refusing to unpickle {module}.{name}: not part of a state dict")

    def persistent_load(self, saved_id):
        typename, storage_type, key, _location, numel, *view = saved_id
        if typename != "storage" or not isinstance(storage_type, _StorageType) or view[0] is not None:
            raise UnsafePickleError(f"unsupported persistent id {saved_id[:2]}")
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _safe_load(handle: BinaryIO) -> Any:
    return _RestrictedUnpickler(handle, {}).load()


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict of a legacy PyTorch file as {name: numpy array} (copies, C-contiguous)."""
    with open(path, "rb") as handle:
        if _safe_load(handle) != LEGACY_MAGIC:
            raise ValueError(f"{path} is not a legacy PyTorch file (wrong magic number)")
        _safe_load(handle)  # protocol version
        _safe_load(handle)  # sys info
        storages: dict[str, _StorageRef] = {}
        state = _RestrictedUnpickler(handle, storages).load()
        keys = _safe_load(handle)
        raw = {}
        for key in keys:
            ref = storages[key]
            numel = int(np.frombuffer(handle.read(8), dtype="<i8")[0])
            raw[key] = np.frombuffer(handle.read(numel * ref.dtype.itemsize), dtype=ref.dtype)
    arrays = {}
    for name, tensor in state.items():
        data = raw[tensor.storage_key]
        itemsize = data.dtype.itemsize
        arrays[name] = np.lib.stride_tricks.as_strided(
            data[tensor.offset :], shape=tensor.size, strides=[s * itemsize for s in tensor.stride]
        ).copy()
    return arrays
