"""What a run's history.csv says: its epoch count and best epoch, and the state the
val_loss callbacks had reached, so a resumed run stops and lowers the learning rate exactly
when the uninterrupted run would have."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# keras.callbacks.ReduceLROnPlateau's default: an epoch counts as better only by this much.
REDUCE_LR_MIN_DELTA = 1e-4


@dataclass(frozen=True)
class MonitorState:
    """val_loss bookkeeping after the epochs in a history, as Keras' callbacks keep it."""
    early_stopping_best: float | None
    early_stopping_wait: int
    early_stopping_best_epoch: int
    reduce_lr_best: float | None
    reduce_lr_wait: int


def read_history(run_dir: str | Path) -> pd.DataFrame | None:
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    return frame if len(frame) and "val_loss" in frame else None


def history_facts(history: pd.DataFrame) -> dict:
    """Epochs run, the 1-based epoch with the lowest val_loss, and that loss."""
    best_row = history["val_loss"].idxmin()
    return {"epochs_run": int(len(history)), "best_epoch": int(history.loc[best_row, "epoch"]) + 1,
            "best_val_loss": float(history.loc[best_row, "val_loss"])}


def monitor_state(history: pd.DataFrame, *, reduce_lr_patience: int, min_lr: float) -> MonitorState:
    """Replay EarlyStopping (min_delta 0) and ReduceLROnPlateau (min_delta 1e-4, no cooldown)
    over the logged val_loss; learning_rate is the rate each epoch ran with."""
    es_best = lr_best = None
    es_wait = lr_wait = es_best_epoch = 0
    rates = history["learning_rate"] if "learning_rate" in history else [math.inf] * len(history)
    for epoch, (loss, rate) in enumerate(zip(history["val_loss"].astype(float), rates)):
        es_wait += 1
        if es_best is None or loss < es_best:
            es_best, es_wait, es_best_epoch = loss, 0, epoch
        if lr_best is None or loss + REDUCE_LR_MIN_DELTA < lr_best:
            lr_best, lr_wait = loss, 0
            continue
        lr_wait += 1
        if lr_wait >= reduce_lr_patience and float(rate) > np.float32(min_lr):
            lr_wait = 0
    return MonitorState(es_best, es_wait, es_best_epoch, lr_best, lr_wait)
