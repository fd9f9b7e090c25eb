"""Why a run's validation predictions collapse while its training metrics improve.

Keras' BatchNormalization normalises with the batch's statistics while training and with
its moving averages at inference (and in the exported model). When those averages are far
from the batch statistics, as in a briefly trained randomly initialised base, inference
outputs collapse to nearly one value. ``batchnorm_mode_gap`` scores the run's validation
split both ways (dropout off in both), so the gap is measured, not guessed.

    python -m cxr.train.diagnose runs/b2/model2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _predict(model, images: np.ndarray, batch_size: int, batch_statistics: bool) -> np.ndarray:
    chunks = [np.asarray(model(images[i:i + batch_size].astype("float32"), training=batch_statistics))
              for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks).reshape(-1)


def _spread(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    return {"roc_auc": float(roc_auc_score(labels, probs)), "p_min": float(probs.min()),
            "p_max": float(probs.max()), "p_std": float(probs.std())}


def batchnorm_mode_gap(run_dir: str | Path, batch_size: int = 64, seed: int = 0,
                       cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Validation ROC AUC and probability spread of the run's best.keras with BatchNormalization
    using moving averages (inference, as exported) and batch statistics (as in training)."""
    import keras

    from cxr.data import load_manifest
    from cxr.files import sha256_file
    from cxr.train import dataset
    from cxr.train.fit import _split_arrays

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    manifest_path = json.loads((run_dir / "run.json").read_text())["manifest"]
    manifest = load_manifest(manifest_path)
    size = int(config["input_size"])
    images = dataset.cached_images(manifest["abspath"].tolist(), size, sha256_file(manifest_path),
                                   cache_dir or dataset.DEFAULT_CACHE_DIR)
    x_val, y_val, _ = _split_arrays(manifest, images, list(config["classes"]), "val")
    order = np.random.default_rng(seed).permutation(len(y_val))  # mixed batches, as in training
    x_val, y_val = x_val[order], y_val[order]
    model = keras.models.load_model(run_dir / "best.keras", compile=False)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0  # training=True below is for BatchNormalization only
    return {"run": str(run_dir), "n_val": int(len(y_val)), "batch_size": batch_size,
            "moving_averages": _spread(_predict(model, x_val, batch_size, False), y_val),
            "batch_statistics": _spread(_predict(model, x_val, batch_size, True), y_val)}


if __name__ == "__main__":
    for run in sys.argv[1:]:
        print(json.dumps(batchnorm_mode_gap(run), indent=2))
