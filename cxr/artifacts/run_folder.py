"""The training run folder: what ``cxr train`` writes and export, recalibrate-bn and resume read.

best.keras           the best checkpoint (lowest val_loss)
config.json          the resolved training config (``TrainingConfig``)
run.json             facts: seed, versions, manifest sha256, parameter counts, epochs, backend, ...
                     (``RunFacts``)
history.csv          one row per epoch (Keras CSVLogger)
val_predictions.csv  the best checkpoint on the validation split, in the Predictions schema
curves.png, augment_grid.png
backup/              while a run is unfinished (Keras BackupAndRestore)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.artifacts.run_facts import HistoryFacts, RunFacts, RunFactsError
from cxr.artifacts.training_config import RECORDED_BEFORE, TrainingConfig, TrainingConfigError
from cxr.errors import InputError
from cxr.files import write_json_atomic


class RunFolderError(InputError, ValueError):
    """A run folder that is missing, foreign or unreadable. One-line message."""


def augment_policy_of(recorded: dict[str, Any]) -> str:
    """The augmentation policy a recorded config (or a model's metadata) names; where it names none,
    the one runs used before it was recorded."""
    return str(recorded.get("augment_policy") or RECORDED_BEFORE["augment_policy"])


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
                raise RunFolderError(
                    f"{self.path} is not a training run with a checkpoint: {name} is missing"
                )

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

    def read_config(self) -> TrainingConfig:
        try:
            return TrainingConfig.from_json(self._read_json(self.CONFIG), where=str(self.file(self.CONFIG)))
        except TrainingConfigError as exc:
            raise RunFolderError(str(exc)) from None

    def write_config(self, config: TrainingConfig) -> None:
        write_json_atomic(self.file(self.CONFIG), config.to_json())

    def read_info(self) -> RunFacts | None:
        """run.json, or None when the run has none yet."""
        if not self.file(self.INFO).is_file():
            return None
        try:
            return RunFacts.from_json(self._read_json(self.INFO), where=str(self.file(self.INFO)))
        except RunFactsError as exc:
            raise RunFolderError(str(exc)) from None

    def write_info(self, info: RunFacts) -> None:
        write_json_atomic(self.file(self.INFO), info.to_json())

    def read_history(self) -> pd.DataFrame | None:
        """history.csv, or None when it is absent or has no finished epoch."""
        if not self.history_path.is_file():
            return None
        try:
            frame = pd.read_csv(self.history_path)
        except pd.errors.EmptyDataError:
            return None
        return frame if len(frame) and "val_loss" in frame else None

    def history_facts(self) -> HistoryFacts | None:
        """Epochs run, the 1-based epoch with the lowest val_loss, and that loss (None without history)."""
        history = self.read_history()
        if history is None:
            return None
        best_row = history["val_loss"].idxmin()
        return HistoryFacts(
            int(len(history)),
            int(history.loc[best_row, "epoch"]) + 1,
            float(history.loc[best_row, "val_loss"]),
        )

    def export_facts(self) -> tuple[TrainingConfig, RunFacts]:
        """(config, run facts) of a run with a checkpoint. A run stopped early (never finished)
        still exports its best checkpoint; its epoch count then comes from history.csv."""
        self.require(self.BEST, self.CONFIG, self.INFO)
        config, info = self.read_config(), self.read_info()
        if info.history is None:
            info = replace(info, history=self.history_facts())
        return config, info

    def write_val_predictions(
        self, rows: pd.DataFrame, probabilities: np.ndarray, classes: list[str]
    ) -> Path:
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
