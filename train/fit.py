"""Training stage core: ``fit_variant`` trains one variant and writes its run folder
(``cxr.artifacts.RunFolder``: best.keras, history.csv, config.json, run.json,
val_predictions.csv, curves.png, augment_grid.png, and backup/ while a run is unfinished).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.artifacts import RunFolder
from cxr.artifacts.run_facts import ModelFacts, RunFacts
from cxr.artifacts.training_config import TrainingConfig
from cxr.data import load_manifest
from cxr.environment import package_versions
from cxr.files import sha256_file
from cxr.train.backend import active_backend, float32_copy, seed_everything, set_precision
from cxr.train.errors import RunAlreadyFinished, RunStateError
from cxr.train.history import MonitorState, monitor_state

FROZEN_RANDOM_WARNING = (
    "WARNING: {n} base layers are frozen but the base is randomly initialised "
    "(weights=none); frozen random features cannot learn. Use pretrained weights "
    "(--weights imagenet|PATH, or --backbone efficientnet_lite2) or expect poor results."
)


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    run_info: RunFacts
    history: pd.DataFrame


def balanced_class_weight(labels: np.ndarray) -> dict[int, float]:
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights)}


def _split_arrays(manifest: pd.DataFrame, images: np.ndarray, classes: list[str], split: str):
    mask = (manifest["split"] == split).to_numpy()
    labels = manifest.loc[mask, "label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    if np.isnan(labels.astype(float)).any():
        raise ValueError(f"{split} split holds labels outside {classes}")
    return images[mask], labels.astype(np.int64), manifest.loc[mask].reset_index(drop=True)


def split_arrays(
    manifest_path: str | Path,
    classes: list[str],
    size: int,
    cache_dir: str | Path | None,
    splits: tuple[str, ...],
) -> dict[str, tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
    """(images, label indices, manifest rows) of each split, decoded once into the image cache."""
    from cxr.train import dataset

    manifest = load_manifest(manifest_path)
    images = dataset.cached_images(
        manifest["abspath"].tolist(), size, sha256_file(manifest_path), cache_dir or dataset.DEFAULT_CACHE_DIR
    )
    return {split: _split_arrays(manifest, images, classes, split) for split in splits}


def _prepare_run_dir(run: RunFolder, resume: bool) -> None:
    if resume:
        if not run.has_config():
            raise RunStateError(f"nothing to resume in {run.path} (no config.json)")
        info = run.read_info()
        if info is not None and info.finished:
            raise RunAlreadyFinished(
                f"{run.path} already finished ({info.epochs_run} epochs, {info.stopped_reason}); "
                "nothing to resume"
            )
        started_with, now = info.backend if info else "tensorflow", active_backend()
        if started_with != now:
            raise RunStateError(
                f"{run.path} was trained with the {started_with} backend and this process runs "
                f"{now}; its optimizer state is backend-specific, so resume with "
                f"--backend {started_with} (or KERAS_BACKEND={started_with})"
            )
        return
    if run.has_config() or run.backup.exists():
        raise RunStateError(
            f"{run.path} already holds a run; pass --resume to continue it or choose another --out"
        )
    run.path.mkdir(parents=True, exist_ok=True)


def _time_budget_callback(budget_minutes: float):
    """Stop after the epoch that would otherwise run past ``max_minutes`` (a clean finish:
    checkpoint, history, curves and validation predictions are written; --resume continues)."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        max_minutes = budget_minutes

        def on_train_begin(self, logs=None):
            self.started, self.stopped_epoch = time.time(), None

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.time() - self.started
            per_epoch = elapsed / max(1, epoch + 1 - (self.params.get("initial_epoch") or 0))
            if elapsed + per_epoch > budget_minutes * 60:
                self.model.stop_training, self.stopped_epoch = True, epoch + 1

    return TimeBudget()


def _save_best_classifier(classifier, path: Path, initial_best: float | None, mixed: bool):
    """ModelCheckpoint(save_best_only) for the classifier alone: the fitted model may wrap it with
    the augmentation layers (non-TensorFlow backends), which must never reach the checkpoint.
    After mixed-precision training the checkpoint is a float32 copy."""
    import keras

    class SaveBestClassifier(keras.callbacks.Callback):
        best = np.inf if initial_best is None else initial_best

        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("val_loss")
            if loss is not None and np.less(loss, self.best):
                self.best = loss
                (float32_copy(classifier) if mixed else classifier).save(path)

    return SaveBestClassifier()


def _callbacks(config: TrainingConfig, run_dir: Path, resume: bool, classifier) -> list:
    """The seed's callbacks (checkpoint of ``classifier``, ReduceLROnPlateau, EarlyStopping) plus
    backup and CSV log; a resumed run continues their state from history.csv."""
    import keras

    cb = config.callbacks
    run = RunFolder(run_dir)
    history = run.read_history() if resume else None
    state = (
        monitor_state(history, reduce_lr_patience=cb.reduce_lr_patience, min_lr=cb.min_lr)
        if history is not None
        else None
    )
    reduce_lr = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss",
        factor=cb.reduce_lr_factor,
        patience=cb.reduce_lr_patience,
        min_lr=cb.min_lr,
        verbose=1,
    )
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=cb.early_stopping_patience, restore_best_weights=True, verbose=1
    )
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run.backup), delete_checkpoint=False),  # removed when finished
        _save_best_classifier(
            classifier,
            run.best,
            state.early_stopping_best if state else None,
            config.precision != "float32",
        ),
        reduce_lr,
        early_stopping,
        keras.callbacks.CSVLogger(str(run.history_path), append=resume),
    ]
    if state is not None:  # after the two callbacks it sets: they reset themselves in on_train_begin
        callbacks.append(_restore_monitor_state(state, early_stopping, reduce_lr, run.best, classifier))
    return callbacks


def _restore_monitor_state(
    state: MonitorState, early_stopping, reduce_lr, best_checkpoint: Path, classifier=None
):
    """A resumed fit continues the val_loss patience counters of the run so far, and early
    stopping restores the best checkpoint's weights, as the uninterrupted run would."""
    import keras

    class RestoreMonitorState(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            early_stopping.best, early_stopping.wait = state.early_stopping_best, state.early_stopping_wait
            early_stopping.best_epoch = state.early_stopping_best_epoch
            if best_checkpoint.is_file():
                best = keras.models.load_model(best_checkpoint, compile=False).get_weights()
                weights = self.model.get_weights()  # a wrapper holds the augmenter's state first
                early_stopping.best_weights = weights[: len(weights) - len(best)] + best
            reduce_lr.best, reduce_lr.wait = state.reduce_lr_best, state.reduce_lr_wait

    return RestoreMonitorState()


def compile_classifier(model, learning_rate: float) -> None:
    """Adam, binary cross-entropy and the logged metrics (the seed's compile)."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=[
            "accuracy",
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ],
    )


def _run_info(
    config: TrainingConfig,
    facts: ModelFacts,
    manifest_path: str | Path,
    warnings: list[str],
    class_weight: dict[int, float],
    n_train: int,
    n_val: int,
) -> RunFacts:
    import keras

    backend = keras.backend.backend()
    return RunFacts(
        variant=config.variant,
        backbone=config.backbone,
        weights=str(config.weights),
        freeze_bn=config.freeze_bn,
        seed=config.seed,
        augment_policy=config.augment_policy,
        backend=backend,
        precision=config.precision,
        input_pipeline="tf.data"
        if backend == "tensorflow"
        else "PyDataset, augmentation in the training step",
        config_sha256=config.sha256(),
        manifest=str(manifest_path),
        manifest_sha256=sha256_file(manifest_path),
        classes=config.classes,
        input_size=config.input_size,
        class_weight=class_weight,
        n_train=n_train,
        n_val=n_val,
        model=facts,
        warnings=tuple(warnings),
        versions=package_versions(),
    )


def _build_and_describe(config: TrainingConfig, log) -> tuple[object, ModelFacts, list[str]]:
    """The classifier, its facts, and the warnings about its setup (logged)."""
    from cxr.train.model import build_classifier

    model, facts = build_classifier(config)
    warnings = []
    if config.weights in ("none", "None", "") and facts.frozen_base_layers > 0:
        warnings.append(FROZEN_RANDOM_WARNING.format(n=facts.frozen_base_layers))
    for warning in warnings:
        log(warning)
    log(
        f"{config.variant}: {facts.params.trainable:,} trainable / "
        f"{facts.params.non_trainable:,} non-trainable params; "
        f"{facts.frozen_base_layers}/{facts.base_layers} base layers frozen"
    )
    return model, facts, warnings


def fit_inputs(model, augmenter, arrays, batch_size: int, seed: int, pipeline: str | None = None):
    """(model to fit, training data, validation data, the classifier inside). ``pipeline``:
    'tf.data' (augmentation mapped in tf.data; the TensorFlow default) or 'in-model'
    (PyDataset batches, augmentation inside the training step; every other backend)."""
    import keras

    from cxr.train import dataset

    (x_train, y_train, _), (x_val, y_val, _) = arrays["train"], arrays["val"]
    pipeline = pipeline or ("tf.data" if keras.backend.backend() == "tensorflow" else "in-model")
    if pipeline == "tf.data":
        return (
            model,
            dataset.train_dataset(x_train, y_train, batch_size, augmenter, seed),
            dataset.eval_dataset(x_val, y_val, batch_size),
            model,
        )
    size = x_train.shape[1]
    wrapper = keras.Sequential(
        [keras.Input((size, size, 3)), augmenter, model], name=f"{model.name}_training"
    )
    return (
        wrapper,
        dataset.ShuffledBatches(x_train, y_train, batch_size, seed),
        dataset.ShuffledBatches(x_val, y_val, batch_size, shuffle=False),
        model,
    )


def _run_fit(
    model,
    config: TrainingConfig,
    run: RunFolder,
    arrays,
    class_weight,
    resume: bool,
    max_minutes,
    verbose: int,
):
    """model.fit with the seed's callbacks; returns the time-budget callback (or None)."""
    from cxr.plots import save_image_grid
    from cxr.train.augment import make_augmenter

    augmenter = make_augmenter(config, config.seed)
    save_image_grid(
        augmenter(arrays["train"][0][:16].astype("float32"), training=True),
        run.file(run.AUGMENT_GRID),
        title=f"training augmentation samples ({config.augment_policy} policy)",
    )
    fitted, train_data, val_data, classifier = fit_inputs(
        model, augmenter, arrays, config.batch_size, config.seed
    )
    compile_classifier(fitted, float(config.learning_rate))
    budget = _time_budget_callback(max_minutes) if max_minutes else None
    callbacks = _callbacks(config, run.path, resume, classifier)
    fitted.fit(
        train_data,
        validation_data=val_data,
        epochs=int(config.epochs),
        class_weight=class_weight,
        callbacks=callbacks + ([budget] if budget else []),
        verbose=verbose,
        shuffle=False,
    )
    return budget


def _finish_run(
    model, config: TrainingConfig, run: RunFolder, val_split, info: RunFacts, budget, started: float
):
    """Curves, the best checkpoint's validation predictions, and the final run.json."""
    import keras

    from cxr.plots import plot_history

    history = run.read_history()
    plot_history(history, run.file(run.CURVES), title=f"{config.variant} ({config.backbone})")
    best = keras.models.load_model(run.best) if run.best.is_file() else model
    x_val, _, val_rows = val_split
    probs = best.predict(x_val.astype("float32"), batch_size=64, verbose=0).reshape(-1)
    run.write_val_predictions(val_rows, probs, list(config.classes))
    stopped_by_budget = bool(budget and budget.stopped_epoch)
    if not stopped_by_budget:
        shutil.rmtree(run.backup, ignore_errors=True)
    if stopped_by_budget:
        reason = f"time budget of {budget.max_minutes} min (resume to continue)"
    else:
        reason = "early stopping" if len(history) < int(config.epochs) else "all epochs"
    info = info.ended(run.history_facts(), round(time.time() - started, 1), not stopped_by_budget, reason)
    run.write_info(info)
    return info


def fit_variant(
    config: TrainingConfig,
    manifest_path: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    verbose: int = 2,
    log=print,
    max_minutes: float | None = None,
) -> FitResult:
    """Train one resolved variant config on the manifest's train split (val for callbacks).

    ``max_minutes``: stop cleanly after the last epoch that fits in this many minutes
    (the run can be continued later with ``resume=True``)."""
    run = RunFolder(run_dir)
    _prepare_run_dir(run, resume)
    seed_everything(config.seed)
    set_precision(config.precision)
    arrays = split_arrays(manifest_path, list(config.classes), config.input_size, cache_dir, ("train", "val"))
    model, facts, warnings = _build_and_describe(config, log)
    class_weight = balanced_class_weight(arrays["train"][1])
    info = _run_info(
        config, facts, manifest_path, warnings, class_weight, len(arrays["train"][1]), len(arrays["val"][1])
    )
    if not resume:
        run.write_config(config)
    run.write_info(info)
    started = time.time()
    budget = _run_fit(model, config, run, arrays, class_weight, resume, max_minutes, verbose)
    info = _finish_run(model, config, run, arrays["val"], info, budget, started)
    return FitResult(run.path, info, run.read_history())
