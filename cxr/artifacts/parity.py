"""<model>.parity.json: the export's parity gate (Keras against onnxruntime on the same images),
written by ``cxr export`` and read by the model card."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr.files import write_json_atomic


@dataclass(frozen=True)
class Parity:
    """How far the exported model's probabilities (and Grad-CAM) lie from Keras' on ``n_images``."""

    n_images: int
    max_abs_diff: float
    mean_abs_diff: float
    labels_differ: int
    tolerance: float
    threshold: float
    passed: bool
    source: str = ""
    opset: int | None = None
    model: str = ""
    run: str = ""
    model_sha256: str = ""
    cam_max_abs_diff: float | None = None
    cam_tolerance: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def path_for(model_path: str | Path) -> Path:
        return Path(model_path).with_suffix(".parity.json")

    def write(self, path: str | Path) -> Path:
        values = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        return write_json_atomic(path, {**values, **self.extra})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Parity:
        names = set(cls.__dataclass_fields__) - {"extra"}
        return cls(
            **{k: v for k, v in data.items() if k in names},
            extra={k: v for k, v in data.items() if k not in names},
        )

    @classmethod
    def read(cls, model_path: str | Path) -> Parity | None:
        """The parity record beside a model, or None where there is none (a model exported elsewhere)."""
        path = cls.path_for(model_path)
        if not path.is_file():
            return None
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
