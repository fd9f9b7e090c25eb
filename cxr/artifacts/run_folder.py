"""The training run folder: what ``cxr train`` writes and export, recalibrate-bn and resume read.

best.keras           the best checkpoint (lowest val_loss)
config.json          the resolved training config
run.json             facts: seed, versions, manifest sha256, parameter counts, epochs, backend, ...
history.csv          one row per epoch (Keras CSVLogger)
val_predictions.csv  the best checkpoint on the validation split, in the Predictions schema
curves.png, augment_grid.png
backup/              while a run is unfinished (Keras BackupAndRestore)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.errors import InputError
from cxr.files import write_json_atomic


class RunFolderError(InputError, ValueError):
    """A run folder that is missing, foreign or unreadable. One-line message."""


# Runs made before config.json recorded the augmentation policy used the original notebook's table.
UNRECORDED_AUGMENT_POLICY = "seed"


def augment_policy_of(config: dict[str, Any]) -> str:
    """The augmentation policy a run's (resolved) config names; ``seed`` where it names none."""
    return str(config.get("augment_policy") or UNRECORDED_AUGMENT_POLICY)


@dataclass(frozen=True)
class RunFolder:
    path: Path

    BEST = "best.keras"
    CONFIG = "config.json"
    INFO = "run.json"
    HISTORY = "history.csv"
    VAL_PREDICTIONS = "val_predictions.csv"
    CURVES = "curves.png"
    AUGMENT_GRID = "augment_grid.png"
    BACKUP = "backup"
    COPIED_ON_RECALIBRATION = (CONFIG, HISTORY, CURVES, AUGMENT_GRID)

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def backup(self) -> Path:
        return self.path / self.BACKUP

    @property
    def history_path(self) -> Path:
        return self.path / self.HISTORY

    @property
    def val_predictions(self) -> Path:
        return self.path / self.VAL_PREDICTIONS

    def has_config(self) -> bool:
        return self.file(self.CONFIG).is_file()

    def require(self, *names: str) -> None:
        for name in names:
            if not self.file(name).is_file():
                raise RunFolderError(f"{self.path} is not a training run with a checkpoint: {name} is missing")

    def _read_json(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads(self.file(name).read_text(encoding="utf-8"))
        except OSError as exc:
            raise RunFolderError(f"{self.file(name)}: {exc.strerror or exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunFolderError(f"{self.file(name)}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise RunFolderError(f"{self.file(name)}: expected a JSON object")
        return data

    def read_config(self) -> dict[str, Any]:
        return self._read_json(self.CONFIG)

    def write_config(self, config: dict[str, Any]) -> None:
        write_json_atomic(self.file(self.CONFIG), config)

    def read_info(self) -> dict[str, Any]:
        """run.json, or {} when the run has none yet."""
        return self._read_json(self.INFO) if self.file(self.INFO).is_file() else {}

    def write_info(self, info: dict[str, Any]) -> None:
        write_json_atomic(self.file(self.INFO), info)

    def read_history(self) -> pd.DataFrame | None:
        """history.csv, or None when it is absent or has no finished epoch."""
        if not self.history_path.is_file():
            return None
        try:
            frame = pd.read_csv(self.history_path)
        except pd.errors.EmptyDataError:
            return None
        return frame if len(frame) and "val_loss" in frame else None

    def history_facts(self) -> dict[str, Any]:
        """Epochs run, the 1-based epoch with the lowest val_loss, and that loss ({} without history)."""
        history = self.read_history()
        if history is None:
            return {}
        best_row = history["val_loss"].idxmin()
        return {
            "epochs_run": int(len(history)),
            "best_epoch": int(history.loc[best_row, "epoch"]) + 1,
            "best_val_loss": float(history.loc[best_row, "val_loss"]),
        }

    def export_facts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config, run facts) of a run with a checkpoint. A run stopped early (no 'finished')
        still exports its best checkpoint; its epoch count then comes from history.csv."""
        self.require(self.BEST, self.CONFIG, self.INFO)
        config, info = self.read_config(), self.read_info()
        for key, value in self.history_facts().items():
            info.setdefault(key, value)
        info.setdefault("finished", False)
        return config, info

    def write_val_predictions(self, rows: pd.DataFrame, probabilities: np.ndarray, classes: list[str]) -> Path:
        """The checkpoint's validation predictions (``rows``: path, label, patient_id) in the
        Predictions schema, threshold 0.5."""
        from cxr.artifacts.predictions import Predictions

        frame = Predictions.frame_from_scores(
            rows["path"].tolist(),
            np.asarray(probabilities, dtype=np.float64),
            classes,
            0.5,
            true_labels=rows["label"].tolist(),
            patient_ids=rows["patient_id"].tolist(),
            model=self.BEST,
        )
        return Predictions.write_csv(frame, self.val_predictions)
