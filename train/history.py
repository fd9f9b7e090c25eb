"""The state the val_loss callbacks had reached after a run's history.csv (read by
``RunFolder.read_history``), so a resumed run stops and lowers the learning rate exactly
when the uninterrupted run would have."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
