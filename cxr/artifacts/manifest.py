"""The split manifest and its summary: what ``cxr data prepare`` writes, and training, export (the
guard, calibration and parity images), quantization and scoring with ``--manifest`` read.

``manifest.csv``: ``path,label,split,patient_id,sha256``, one row per image kept, paths escaped
(``escape_path``) and relative to the source root; images are not copied.
``summary.json``: the settings (``root`` relative to the summary's folder, classes, split, seed,
the manifest's sha256), an account of every file found (kept, duplicates dropped, skipped, hidden),
counts per split and class, patients per split, and the shortcut check.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from cxr.artifacts.predictions import unescape_path
from cxr.errors import InputError
from cxr.files import atomic_path, write_json_atomic
from cxr.messages import first_line

if TYPE_CHECKING:
    from cxr.shortcut import ShortcutResult

SPLITS = ("train", "val", "test")


class ManifestError(InputError, ValueError):
    """A manifest that is missing, unreadable or not a split manifest. One-line message."""


@dataclass(frozen=True)
class ManifestSplit:
    """One split of a manifest: its escaped relative paths (in manifest order), and the label and
    patient id of each."""

    paths: list[str]
    labels: dict[str, str]
    patient_ids: dict[str, str]


@dataclass(frozen=True)
class Manifest:
    """A split manifest as read: its rows (the file's columns and ``abspath``, each image's path on
    this machine) and where it came from."""

    path: Path
    root: Path
    frame: pd.DataFrame

    COLUMNS: ClassVar[tuple[str, ...]] = ("path", "label", "split", "patient_id", "sha256")
    SUMMARY: ClassVar[str] = "summary.json"

    @classmethod
    def read(cls, path: str | Path, root: str | Path | None = None) -> Manifest:
        """The manifest at ``path``; image paths under ``root``, else the root its summary.json
        names, else the manifest's folder."""
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"manifest not found: {path}")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise ManifestError(f"cannot read manifest {path}: {first_line(exc)}") from None
        missing = [c for c in cls.COLUMNS if c not in frame.columns]
        if missing:
            raise ManifestError(f"{path} is not a split manifest (missing columns {missing})")
        root = Path(root) if root is not None else SplitSummary.recorded_root(path.parent / cls.SUMMARY)
        frame["abspath"] = [str((root / unescape_path(p)).resolve()) for p in frame["path"]]
        return cls(path, root, frame)

    @classmethod
    def write(cls, frame: pd.DataFrame, path: str | Path) -> Path:
        """The manifest's columns of ``frame``, atomically."""
        with atomic_path(path) as tmp:
            frame[list(cls.COLUMNS)].to_csv(tmp, index=False, lineterminator="\n")
        return Path(path)

    def rows(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split]

    def split(self, split: str, classes: list[str] | tuple[str, ...]) -> ManifestSplit:
        """One split, whose labels must all be ``classes``; a ManifestError without rows or with others."""
        rows = self.rows(split)
        if rows.empty:
            raise ManifestError(f"{self.path} has no '{split}' rows")
        unknown = sorted(set(rows["label"]) - set(classes))
        if unknown:
            raise ManifestError(
                f"{self.path} has labels {unknown} outside the model's classes {list(classes)}"
            )
        paths = rows["path"].tolist()
        return ManifestSplit(paths, dict(zip(paths, rows["label"])), dict(zip(paths, rows["patient_id"])))


@dataclass(frozen=True)
class DroppedFile:
    """A file left out of the manifest as a copy: the copy kept (None when the copies disagree on
    the class, so none is kept), and why."""

    path: str
    kept: str | None
    reason: str


@dataclass(frozen=True)
class SkippedFile:
    """A file that is not a usable image of a known class, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class SplitSettings:
    """How a manifest was made: the source root (relative to the summary's folder), the classes,
    patient or image split, the fractions, the seed, and the manifest's sha256."""

    root: str
    classes: tuple[str, ...]
    split_by: str
    fractions: tuple[float, float, float]
    seed: int
    manifest_sha256: str


@dataclass(frozen=True)
class SplitSummary:
    """summary.json: the settings and an account of every file found."""

    settings: SplitSettings
    files_found: int
    hidden_files_ignored: int
    images_kept: int
    dropped_duplicates: tuple[DroppedFile, ...]
    skipped_files: tuple[SkippedFile, ...]
    counts: dict[str, dict[str, int]]
    class_fractions: dict[str, dict[str, float]]
    patients: dict[str, int]
    patients_on_several_splits: int
    shortcut_check: ShortcutResult | None = None

    @property
    def duplicates_dropped(self) -> int:
        return len(self.dropped_duplicates)

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    @property
    def accounted(self) -> bool:
        """Every file found is kept, dropped as a copy, skipped or hidden."""
        listed = self.images_kept + self.duplicates_dropped + self.skipped + self.hidden_files_ignored
        return listed == self.files_found

    def to_json(self) -> dict[str, Any]:
        data = {
            **asdict(self.settings),
            "classes": list(self.settings.classes),
            "fractions": list(self.settings.fractions),
            "files_found": self.files_found,
            "hidden_files_ignored": self.hidden_files_ignored,
            "images_kept": self.images_kept,
            "duplicates_dropped": self.duplicates_dropped,
            "skipped": self.skipped,
            "accounted": self.accounted,
            "counts": self.counts,
            "class_fractions": self.class_fractions,
            "patients": self.patients,
            "patients_on_several_splits": self.patients_on_several_splits,
            "dropped_duplicates": [asdict(item) for item in self.dropped_duplicates],
            "skipped_files": [asdict(item) for item in self.skipped_files],
        }
        if self.shortcut_check is not None:
            data["shortcut_check"] = self.shortcut_check.to_json()
        return data

    def write(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    @staticmethod
    def recorded_root(path: Path) -> Path:
        """The image root a summary.json at ``path`` names (relative to its folder), else its folder."""
        if not path.is_file():
            return path.parent
        return path.parent / json.loads(path.read_text(encoding="utf-8"))["root"]
