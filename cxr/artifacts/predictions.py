"""The predictions artifact: ``predictions.csv``, its settings sidecar and the resumable partial file.

``predictions.csv`` has one row per file found, in path order::

    path, p_<POSITIVE>, pred_label, threshold, true_label, patient_id, error, qc, domain_score, model,
    model_sha256

- ``path`` is relative to the scored folder, in the *escaped* form of ``escape_path``: bytes
  that are not UTF-8 (old Samba or PACS exports) become ``\\xHH`` and a literal backslash
  becomes ``\\\\``, so every name fits a UTF-8 CSV and ``unescape_path`` gives the exact bytes back.
- ``p_<POSITIVE>`` has 9 significant digits (a float32 probability round-trips, so ranks survive).
- ``error`` is empty for a scored file, or one line saying why it could not be scored.
- ``qc`` flags scored images that are suspect, with the reasons joined by "; " (uniform, colour,
  tiny, an extreme aspect ratio, a DICOM header against the model, or outside the training domain).
- ``domain_score`` is the model's domain guard score (empty for a model without a guard): about 1
  for a typical training image, higher for an image less like them. With ``--foreign skip`` an
  image outside the training domain keeps its row and its ``qc`` reason, but no probability.

``predictions.meta.json`` beside it records the settings the rows were made with (model sha256,
TTA, labels source, threshold, preprocessing, provider) and the counts. ``--resume`` compares
settings and refuses a mix. While a run is going, rows are appended to
``predictions.partial.jsonl`` (its first line holds the settings): one JSON object a line, so a
line cut by a kill or a full disk is recognised and dropped, whatever the file names hold.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxr.errors import InputError
from cxr.files import atomic_path, write_json_atomic
from cxr.messages import first_line

if TYPE_CHECKING:
    from cxr.artifacts.scoring_settings import ScoringSettings

SHA256 = re.compile(r"^[0-9a-f]{64}$")
PROBABILITY_FORMAT = "{:.9f}"  # fixed decimals (no 6.49e-05 in a spreadsheet); 9 places keep float32 ranks
DOMAIN_FORMAT = "{:.4f}"


class PredictionsError(InputError, ValueError):
    """A predictions file that cannot be read as one. One-line message."""


def escape_path(path: str | os.PathLike) -> str:
    """A relative path as text for the CSV: reversible, UTF-8 safe (see the module docstring)."""
    raw = os.fsencode(path)
    return raw.replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")


_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def unescape_path(text: str) -> str:
    """The file system path (``os.fsdecode`` form) of an escaped CSV path."""
    out, pos = bytearray(), 0
    for match in _ESCAPE.finditer(text):
        out += text[pos : match.start()].encode("utf-8")
        token = match.group(1)
        out += b"\\" if token == "\\" else bytes([int(token[1:], 16)])
        pos = match.end()
    out += text[pos:].encode("utf-8")
    return os.fsdecode(bytes(out))


class Predictions:
    """The schema and the readers and writers of the predictions files."""

    SETTINGS_SUFFIX = ".meta.json"
    PARTIAL_SUFFIX = ".partial.jsonl"

    @staticmethod
    def columns(positive_class: str) -> list[str]:
        return [
            "path",
            f"p_{positive_class}",
            "pred_label",
            "threshold",
            "true_label",
            "patient_id",
            "error",
            "qc",
            "domain_score",
            "model",
            "model_sha256",
        ]

    @staticmethod
    def probability_column(positive_class: str) -> str:
        return f"p_{positive_class}"

    @staticmethod
    def format_probability(p: float) -> str:
        return PROBABILITY_FORMAT.format(float(p))

    @classmethod
    def row(
        cls,
        path: str,
        probability: float | None,
        classes: list[str] | tuple[str, ...],
        threshold: float,
        *,
        true_label: str = "",
        patient_id: str = "",
        error: str = "",
        qc: str = "",
        model: str = "",
        model_sha256: str = "",
        domain_score: float | None = None,
    ) -> dict[str, str]:
        scored = probability is not None and not error and not np.isnan(probability)
        has_domain = domain_score is not None and not error and not np.isnan(domain_score)
        return {
            "path": path,
            f"p_{classes[1]}": cls.format_probability(probability) if scored else "",
            "pred_label": classes[int(probability >= threshold)] if scored else "",
            "threshold": repr(float(threshold)),
            "true_label": true_label,
            "patient_id": patient_id,
            "error": " ".join(error.split()),
            "qc": qc,
            "domain_score": DOMAIN_FORMAT.format(domain_score) if has_domain else "",
            "model": model,
            "model_sha256": model_sha256,
        }

    @classmethod
    def frame_from_scores(
        cls,
        paths: list[str],
        probabilities: np.ndarray,
        classes: list[str],
        threshold: float,
        *,
        true_labels: list[str],
        patient_ids: list[str],
        model: str,
    ) -> pd.DataFrame:
        rows = [
            cls.row(p, float(prob), classes, threshold, true_label=t, patient_id=pid, model=model)
            for p, prob, t, pid in zip(paths, probabilities, true_labels, patient_ids)
        ]
        return pd.DataFrame(rows, columns=cls.columns(classes[1]))

    @staticmethod
    def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8")
        return Path(path)

    @staticmethod
    def read(path: str | Path) -> tuple[pd.DataFrame, str]:
        """A predictions CSV (or a run's val_predictions.csv) and its probability column name.
        Older files without ``patient_id`` or ``qc`` get them empty; a training run's legacy
        ``label`` column is read as ``true_label``."""
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise PredictionsError(
                f"cannot read predictions {path}: {first_line(exc) if str(exc) else exc}"
            ) from None
        if "true_label" not in frame.columns and "label" in frame.columns:
            frame = frame.rename(columns={"label": "true_label"})
        for column in ("error", "qc", "patient_id", "threshold", "model", "model_sha256", "domain_score"):
            if column not in frame.columns:
                frame[column] = ""
        prob_cols = [c for c in frame.columns if c.startswith("p_")]
        if len(prob_cols) != 1 or not {"path", "true_label"} <= set(frame.columns):
            raise PredictionsError(f"{path} is not a cxr predictions CSV (needs path, p_<class>, true_label)")
        scored = frame.loc[(frame["error"] == "") & (frame[prob_cols[0]] != ""), prob_cols[0]]
        try:
            values = scored.astype(float)
        except ValueError:
            raise PredictionsError(
                f"{path}: column {prob_cols[0]} holds values that are not numbers"
            ) from None
        if len(values) and not values.between(0.0, 1.0).all():
            raise PredictionsError(f"{path}: column {prob_cols[0]} holds values outside [0, 1]")
        return frame, prob_cols[0]

    # -- settings sidecar ------------------------------------------------------------------------------------

    @classmethod
    def settings_path(cls, csv_path: str | Path) -> Path:
        csv_path = Path(csv_path)
        return csv_path.with_name(csv_path.stem + cls.SETTINGS_SUFFIX)

    @classmethod
    def write_settings(cls, csv_path: str | Path, settings: dict[str, Any]) -> Path:
        return write_json_atomic(cls.settings_path(csv_path), settings)

    @classmethod
    def read_settings(cls, csv_path: str | Path) -> dict[str, Any] | None:
        path = cls.settings_path(csv_path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # -- partial file ----------------------------------------------------------------------------------------

    @classmethod
    def partial_path(cls, csv_path: str | Path) -> Path:
        csv_path = Path(csv_path)
        return csv_path.with_name(csv_path.stem + cls.PARTIAL_SUFFIX)

    @staticmethod
    def read_partial(partial: Path) -> tuple[ScoringSettings | None, dict[str, dict[str, str]]]:
        """(settings of the interrupted run, its complete rows by path). Lines cut short, or
        rows without a model sha256, are dropped: those files are scored again."""
        from cxr.artifacts.scoring_settings import ScoringSettings

        if not partial.is_file():
            return None, {}
        settings, rows = None, {}
        with open(partial, "rb") as handle:
            for number, raw in enumerate(handle):
                try:
                    item = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    continue
                if not isinstance(item, dict):
                    continue
                if number == 0 and "settings" in item:
                    settings = ScoringSettings.from_json(item["settings"])
                elif isinstance(item.get("path"), str) and SHA256.match(str(item.get("model_sha256", ""))):
                    rows[item["path"]] = {str(k): str(v) for k, v in item.items()}
        return settings, rows

    @staticmethod
    def start_partial(partial: Path, settings: ScoringSettings, rows: Iterable[dict[str, str]]) -> None:
        """(Re)write the partial file: the settings line, then the rows kept from before."""
        with atomic_path(partial) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(json.dumps({"settings": settings.to_json()}, ensure_ascii=True) + "\n")
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=True) + "\n")

    @staticmethod
    def append_rows(handle, rows: Iterable[dict[str, str]]) -> None:
        handle.write("".join(json.dumps(row, ensure_ascii=True) + "\n" for row in rows))
        handle.flush()

    # -- shards (the ray engine's partial rows: one Parquet file per finished block) -------------------------

    SHARDS_DIR = "shards"
    SHARD_SETTINGS = "settings.json"

    @classmethod
    def shards_path(cls, csv_path: str | Path) -> Path:
        return Path(csv_path).parent / cls.SHARDS_DIR

    @classmethod
    def read_shard_settings(cls, shards: Path) -> ScoringSettings | None:
        """The settings of the run whose shards these are (None without them); a ValueError or an
        OSError when the file cannot be read as JSON."""
        from cxr.artifacts.scoring_settings import ScoringSettings

        settings_file = shards / cls.SHARD_SETTINGS
        if not settings_file.is_file():
            return None
        return ScoringSettings.from_json(json.loads(settings_file.read_text(encoding="utf-8")))

    @staticmethod
    def read_shard(shard: Path) -> dict[str, dict[str, str]]:
        """One shard's rows by path (pyarrow's errors for a damaged file)."""
        frame = pd.read_parquet(shard).fillna("")
        return {
            row["path"]: {str(key): str(value) for key, value in row.items()}
            for row in frame.to_dict("records")
        }

    @classmethod
    def shard_files(cls, shards: Path) -> list[Path]:
        """The finished shards, in the order they were written (a half-written one keeps its
        temporary name)."""
        return sorted(shards.glob("shard-*.parquet"))

    @classmethod
    def read_shards(cls, shards: Path) -> tuple[ScoringSettings | None, dict[str, dict[str, str]]]:
        """(settings of the interrupted run, the rows of its finished shards by path), as
        ``read_partial``."""
        settings = cls.read_shard_settings(shards)
        if settings is None:
            return None, {}
        rows: dict[str, dict[str, str]] = {}
        for shard in cls.shard_files(shards):
            rows.update(cls.read_shard(shard))
        return settings, rows

    @classmethod
    def start_shards(cls, shards: Path, settings: ScoringSettings) -> None:
        """An empty shard folder that holds only the run's settings."""
        if shards.is_dir():
            for old in shards.glob("*"):
                old.unlink()
        shards.mkdir(parents=True, exist_ok=True)
        write_json_atomic(shards / cls.SHARD_SETTINGS, settings.to_json())

    @classmethod
    def write_shard(cls, shards: Path, rows: list[dict[str, str]], positive_class: str) -> Path:
        """One finished block's rows as a Parquet shard (temporary name, then an atomic rename)."""
        import time
        import uuid

        target = shards / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_path(target) as temporary:
            pd.DataFrame(rows, columns=cls.columns(positive_class)).to_parquet(temporary, index=False)
        return target

    @classmethod
    def remove_shards(cls, shards: Path) -> None:
        for shard in shards.glob("*"):
            shard.unlink()
        shards.rmdir()
