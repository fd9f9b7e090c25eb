"""BatchNorm statistics of a trained run: measure the train/inference gap, and recalibrate.

Keras' BatchNormalization normalises with the batch's statistics while training and with
its moving averages at inference (and in the exported model). When those averages are far
from what the layers see, as in a briefly trained randomly initialised base, inference
outputs collapse to nearly one value although the training metrics improve.

- ``batchnorm_mode_gap``: validation ROC AUC and spread with moving averages vs batch
  statistics (dropout off in both), so the gap is measured, not guessed.
- ``recalibrate_run``: "precise BatchNorm": the trainable BatchNorm layers' moving averages
  are replaced by the mean of the batch statistics over the (un-augmented) training split.
  No weight is trained; the result is a new run folder that ``cxr export`` takes as is.

    python -m cxr.train.batchnorm runs/b2/model2
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from cxr.artifacts import RunFolder, RunFolderError
from cxr.artifacts.run_facts import BnRecalibration, ModeGap, Spread
from cxr.artifacts.training_config import TrainingConfig


def _all_layers(model) -> Iterator:
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


@contextlib.contextmanager
def _dropout_off(model) -> Iterator[None]:
    """training=True for BatchNorm only: Keras' Dropout passes inputs through at rate 0."""
    import keras

    dropouts = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    for layer in dropouts:
        layer.rate = 0.0
    try:
        yield
    finally:
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate


@contextlib.contextmanager
def _averages_kept(model) -> Iterator[None]:
    """Scoring with training=True makes Keras update every trainable BatchNorm layer's moving
    averages; put them back, so measuring the gap never changes the model."""
    import keras

    layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(np.array(layer.moving_mean), np.array(layer.moving_variance)) for layer in layers]
    try:
        yield
    finally:
        for layer, (mean, variance) in zip(layers, saved):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)


def _predict(model, images: np.ndarray, batch_size: int, batch_statistics: bool) -> np.ndarray:
    chunks = [
        np.asarray(model(images[i : i + batch_size].astype("float32"), training=batch_statistics))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks).reshape(-1)


def _spread(probs: np.ndarray, labels: np.ndarray) -> Spread:
    from sklearn.metrics import roc_auc_score

    return Spread(
        float(roc_auc_score(labels, probs)), float(probs.min()), float(probs.max()), float(probs.std())
    )


def _run_arrays(
    run_dir: Path, splits: tuple[str, ...], cache_dir: str | Path | None
) -> tuple[TrainingConfig, dict]:
    """The run's config and its (images, labels, rows) per split, from its manifest and the image cache."""
    from cxr.train.fit import split_arrays

    run = RunFolder(run_dir)
    config, info = run.read_config(), run.read_info()
    if info is None or not info.manifest:
        raise RunFolderError(f"{run.path} records no manifest (run.json)")
    return config, split_arrays(info.manifest, list(config.classes), config.input_size, cache_dir, splits)


def _mode_gap(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
) -> tuple[ModeGap, np.ndarray]:
    """The gap summary, and the inference-mode probabilities in the images' order (they do not
    depend on how images are batched; batch statistics do, so those batches are shuffled)."""
    order = np.random.default_rng(seed).permutation(len(labels))  # mixed batches, as in training
    with _dropout_off(model):
        inference = _predict(model, images, batch_size, False)
        with _averages_kept(model):
            batch_stats = _predict(model, images[order], batch_size, True)
    gap = ModeGap(
        int(len(labels)), batch_size, _spread(inference, labels), _spread(batch_stats, labels[order])
    )
    return gap, inference


def batchnorm_mode_gap(
    run_dir: str | Path, batch_size: int = 64, seed: int = 0, cache_dir: str | Path | None = None
) -> ModeGap:
    """Validation ROC AUC and probability spread of the run's best.keras with BatchNormalization
    using moving averages (inference, as exported) and batch statistics (as in training)."""
    run_dir = Path(run_dir)
    _, arrays = _run_arrays(run_dir, ("val",), cache_dir)
    x_val, y_val, _ = arrays["val"]
    import keras

    model = keras.models.load_model(RunFolder(run_dir).best, compile=False)
    return _mode_gap(model, x_val, y_val, batch_size, seed)[0]


def recalibrate_batchnorm(model, images: np.ndarray, batch_size: int = 64, seed: int = 0) -> int:
    """Set each trainable BatchNorm layer's moving mean/variance to the average of its batch
    statistics over ``images`` (full shuffled batches, dropout off). Returns the layer count."""
    import keras

    layers = [
        layer
        for layer in _all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    momenta = [layer.momentum for layer in layers]
    order = np.random.default_rng(seed).permutation(len(images))
    batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    try:
        with _dropout_off(model):
            for k, batch in enumerate(batches):
                for layer in layers:  # running mean over batches: new = old * k/(k+1) + batch/(k+1)
                    layer.momentum = k / (k + 1)
                model(images[np.sort(batch)].astype("float32"), training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)


def recalibrate_run(
    run_dir: str | Path,
    out_dir: str | Path,
    batch_size: int = 64,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> BnRecalibration:
    """A copy of the run in ``out_dir`` whose best.keras has recalibrated BatchNorm averages;
    run.json records it, with the validation gap before and after."""
    import keras

    source = RunFolder(run_dir)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunFolderError(f"{out_dir} is not empty")
    config, arrays = _run_arrays(run_dir, ("train", "val"), cache_dir)
    x_train, (x_val, y_val, val_rows) = arrays["train"][0], arrays["val"]
    model = keras.models.load_model(source.best)
    before, _ = _mode_gap(model, x_val, y_val, batch_size, seed)
    n_layers = recalibrate_batchnorm(model, x_train, batch_size, seed)
    after, val_probs = _mode_gap(model, x_val, y_val, batch_size, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = RunFolder(out_dir)
    for name in RunFolder.COPIED_ON_RECALIBRATION:
        if source.file(name).is_file():
            shutil.copy2(source.file(name), target.file(name))
    model.save(target.best)
    target.write_val_predictions(val_rows, val_probs, list(config.classes))
    record = BnRecalibration(str(run_dir), int(len(x_train)), batch_size, seed, n_layers, before, after)
    target.write_info(replace(source.read_info(), bn_recalibration=record))
    return record


if __name__ == "__main__":
    import sys

    for run in sys.argv[1:]:
        print(json.dumps({"run": run, **asdict(batchnorm_mode_gap(run))}, indent=2))
