"""A resumed run continues Keras' val_loss callbacks where the history left them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.artifacts import RunFolder
from cxr.train.history import monitor_state

PATIENCE, MIN_LR = 3, 1e-5


def _losses() -> list[float]:
    """Improvements, plateaus long enough to lower the rate, and steps smaller than 1e-4."""
    rng = np.random.default_rng(0)
    base = [0.9, 0.8, 0.81, 0.82, 0.83, 0.84, 0.79, 0.78995, 0.78992, 0.8, 0.81, 0.82, 0.7]
    return base + list(0.7 + rng.normal(0, 0.01, 25))


def _keras_trace(losses: list[float]) -> tuple[pd.DataFrame, list[tuple]]:
    """Drive the real callbacks; record the history rows and their state after each epoch."""
    keras = pytest.importorskip("keras", reason="the [train] extra (Keras) is not installed")

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
    early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=100)
    reduce = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=0.2, patience=PATIENCE, min_lr=MIN_LR
    )
    for callback in (early, reduce):
        callback.set_model(model)
        callback.on_train_begin()
    rows, states = [], []
    for epoch, loss in enumerate(losses):
        logs = {"val_loss": loss}
        reduce.on_epoch_end(epoch, logs)  # adds the rate the epoch ran with, then may lower it
        early.on_epoch_end(epoch, logs)
        rows.append({"epoch": epoch, "learning_rate": logs["learning_rate"], "val_loss": loss})
        states.append((early.best, early.wait, early.best_epoch, reduce.best, reduce.wait))
    return pd.DataFrame(rows), states


@pytest.mark.slow  # imports Keras and TensorFlow: 8 s on 2 cores
def test_replayed_state_matches_keras_after_every_epoch() -> None:
    history, states = _keras_trace(_losses())
    assert history["learning_rate"].nunique() > 2  # the trace does lower the rate, down to the floor
    for n, expected in enumerate(states, start=1):
        state = monitor_state(history.iloc[:n], reduce_lr_patience=PATIENCE, min_lr=MIN_LR)
        got = (
            state.early_stopping_best,
            state.early_stopping_wait,
            state.early_stopping_best_epoch,
            state.reduce_lr_best,
            state.reduce_lr_wait,
        )
        assert got == pytest.approx(expected), f"after epoch {n}"


def test_history_facts_name_the_best_epoch(tmp_path: Path) -> None:
    pd.DataFrame({"epoch": [0, 1, 2, 3], "val_loss": [0.5, 0.3, 0.4, 0.35]}).to_csv(
        tmp_path / "history.csv", index=False
    )
    from cxr.artifacts.run_facts import HistoryFacts

    assert RunFolder(tmp_path).history_facts() == HistoryFacts(epochs_run=4, best_epoch=2, best_val_loss=0.3)


@pytest.mark.slow  # imports Keras and TensorFlow: 8 s on 2 cores
def test_resumed_callbacks_start_from_the_logged_state(tmp_path: Path) -> None:
    pytest.importorskip("keras", reason="the [train] extra (Keras) is not installed")
    from cxr.train.config import load_config, resolve_variant
    from cxr.train.fit import _callbacks

    pd.DataFrame(
        {"epoch": range(5), "learning_rate": [1e-4] * 5, "val_loss": [0.6, 0.5, 0.55, 0.56, 0.57]}
    ).to_csv(tmp_path / "history.csv", index=False)
    callbacks = _callbacks(resolve_variant(load_config(), "model2", {}), tmp_path, True, classifier=None)
    names = [type(c).__name__ for c in callbacks]
    early, reduce = callbacks[names.index("EarlyStopping")], callbacks[names.index("ReduceLROnPlateau")]
    restorer = callbacks[-1]  # Keras calls on_train_begin in list order: the two reset, then the restorer
    assert names.index("EarlyStopping") < len(names) - 1 and names.index("ReduceLROnPlateau") < len(names) - 1
    for callback in (reduce, early, restorer):
        callback.on_train_begin()
    assert (early.best, early.wait, early.best_epoch) == (0.5, 3, 1) and (reduce.best, reduce.wait) == (
        0.5,
        3,
    )
    checkpoint = next(c for c in callbacks if type(c).__name__ == "SaveBestClassifier")
    assert checkpoint.best == 0.5  # a resumed run saves only an epoch that beats the best so far
