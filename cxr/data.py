"""Data preparation stage: merge the source splits, drop duplicates, split 60/20/20 by patient.

Core function: ``prepare_splits``. It writes a split manifest CSV
(``path,label,split,patient_id,sha256``; paths relative to the source root) and a
summary JSON that accounts for every file found (their owner: ``cxr.artifacts.manifest``).
Images are not copied.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import CLASS_NAMES_DEFAULT
from cxr.artifacts.manifest import (
    SPLITS,
    DroppedFile,
    Manifest,
    ManifestError,
    ManifestSplit,
    SkippedFile,
    SplitSettings,
    SplitSummary,
)
from cxr.artifacts.predictions import escape_path, unescape_path
from cxr.errors import InputError
from cxr.files import sha256_file
from cxr.imaging import decode_or_error, is_image_file

MANIFEST_COLUMNS = list(Manifest.COLUMNS)
DEFAULT_SOURCE = Path("../shared/data/chest_xray")

_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_TRAILING_INDEX = re.compile(r"(-\d+)+$")


class DataPrepError(InputError, ValueError):
    """Bad input for data preparation. The message is one line."""


def patient_id_from_name(filename: str) -> str:
    """Patient id from a Kermany file name.

    ``person123_bacteria_45.jpeg`` -> ``person123``; ``IM-0115-0001.jpeg`` -> ``IM-0115``;
    ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``. Other names: the stem.
    """
    stem = Path(filename).stem
    match = _PERSON.match(stem)
    if match:
        return match.group(1)
    im_pos = stem.upper().find("IM-")
    if im_pos >= 0:
        head, tail = stem[: im_pos + 3], stem[im_pos + 3 :]
        # keep the first number after "IM-", drop the trailing "-0001" image indices
        number, _, _ = tail.partition("-")
        return head + number
    return _TRAILING_INDEX.sub("", stem) or stem


@dataclass(frozen=True)
class PrepareResult:
    manifest: pd.DataFrame
    summary: SplitSummary
    manifest_path: Path
    summary_path: Path
    warnings: list[str] = field(default_factory=list)


def _scan(
    root: Path, classes: tuple[str, ...], check_decode: bool
) -> tuple[list[dict], list[SkippedFile], int]:
    records, skipped, hidden = [], [], 0
    for path in sorted(root.rglob("*"), key=lambda p: p.as_posix()):
        if not path.is_file():
            continue
        rel = escape_path(path.relative_to(root).as_posix())
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            hidden += 1
            continue
        if not is_image_file(path):
            skipped.append(SkippedFile(rel, "not an image file extension"))
            continue
        label = path.parent.name if path.parent != root else None
        if label not in classes:
            reason = "not inside a class folder" if label is None else f"unknown class folder '{label}'"
            skipped.append(SkippedFile(rel, reason))
            continue
        if check_decode:
            image, error = decode_or_error(path, 32)
            if image is None:
                skipped.append(SkippedFile(rel, f"unreadable: {error}"))
                continue
        records.append(
            {
                "path": rel,
                "label": label,
                "patient_id": patient_id_from_name(escape_path(path.name)),
                "sha256": sha256_file(path),
            }
        )
    return records, skipped, hidden


def _drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[DroppedFile]]:
    """Keep the first file (by path) of each content hash. Groups whose copies carry
    different labels are dropped entirely, since their label is unknowable."""
    frame = frame.sort_values("path", kind="stable")
    dropped = []
    conflicting = frame.groupby("sha256")["label"].transform("nunique") > 1
    for row in frame[conflicting].itertuples():
        dropped.append(DroppedFile(row.path, None, "identical file under another class"))
    frame = frame[~conflicting]
    duplicated = frame.duplicated("sha256", keep="first")
    first_by_hash = frame[~duplicated].set_index("sha256")["path"]
    for row in frame[duplicated].itertuples():
        dropped.append(DroppedFile(row.path, first_by_hash[row.sha256], "duplicate content"))
    return frame[~duplicated].reset_index(drop=True), dropped


def _split_by_patient(frame: pd.DataFrame, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Stratified (by class) and grouped (by patient) 60/20/20 split via StratifiedGroupKFold.

    The folds are 1/n of the data each; ``fractions`` must be multiples of 1/n (n <= 20).
    """
    unit = min(fractions)
    n_splits = round(1 / unit)
    counts = [round(f * n_splits) for f in fractions]
    if (
        n_splits > 20
        or sum(counts) != n_splits
        or any(abs(c / n_splits - f) > 1e-9 for c, f in zip(counts, fractions))
    ):
        raise DataPrepError(f"fractions {fractions} must be multiples of one common 1/n (n <= 20)")
    patients = frame.groupby("label")["patient_id"].nunique()
    if patients.min() < n_splits:
        raise DataPrepError(
            f"a patient-grouped {n_splits}-fold split needs at least {n_splits} patients per class; "
            f"found {', '.join(f'{c} {n}' for c, n in patients.items())} "
            "(add data, or use --split-by image)"
        )
    from sklearn.model_selection import (
        StratifiedGroupKFold,  # here: scoring imports this module, not sklearn
    )

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold_of = np.empty(len(frame), dtype=int)
    for fold, (_, idx) in enumerate(splitter.split(frame, frame["label"], groups=frame["patient_id"])):
        fold_of[idx] = fold
    # folds [0, n_test) -> test, next n_val -> val, rest -> train
    _, n_val, n_test = counts
    split = np.where(fold_of < n_test, "test", np.where(fold_of < n_test + n_val, "val", "train"))
    return split


def _split_by_image(frame: pd.DataFrame, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """The seed's image-level random split, stratified by class (patients can leak)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(frame))
    train_idx, rest = train_test_split(
        idx, train_size=fractions[0], stratify=frame["label"], random_state=seed
    )
    val_share = fractions[1] / (fractions[1] + fractions[2])
    val_idx, test_idx = train_test_split(
        rest, train_size=val_share, stratify=frame["label"].iloc[rest], random_state=seed
    )
    split = np.empty(len(frame), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    return split


def patients_on_several_splits(manifest: pd.DataFrame) -> int:
    return int((manifest.groupby("patient_id")["split"].nunique() > 1).sum())


def _summarise(
    manifest: pd.DataFrame,
    found: int,
    dropped: list[DroppedFile],
    skipped: list[SkippedFile],
    hidden: int,
    settings: SplitSettings,
) -> SplitSummary:
    counts = manifest.groupby(["split", "label"]).size()
    per_split = {s: {c: int(counts.get((s, c), 0)) for c in settings.classes} for s in SPLITS}
    class_totals = manifest["label"].value_counts()
    fractions = {
        s: {
            c: round(per_split[s][c] / int(class_totals[c]), 4) for c in settings.classes if c in class_totals
        }
        for s in SPLITS
    }
    return SplitSummary(
        settings=settings,
        files_found=found + hidden,
        hidden_files_ignored=hidden,
        images_kept=int(len(manifest)),
        dropped_duplicates=tuple(dropped),
        skipped_files=tuple(skipped),
        counts=per_split,
        class_fractions=fractions,
        patients={s: int(manifest.loc[manifest["split"] == s, "patient_id"].nunique()) for s in SPLITS},
        patients_on_several_splits=patients_on_several_splits(manifest),
    )


def prepare_splits(
    source: str | Path,
    out_dir: str | Path,
    *,
    classes: tuple[str, ...] = CLASS_NAMES_DEFAULT,
    split_by: str = "patient",
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 42,
    check_decode: bool = True,
    shortcut: bool = True,
    workers: int | None = None,
) -> PrepareResult:
    """Scan ``source`` (Kaggle layout or class folders), dedupe, split and write the manifest."""
    root = Path(source)
    if not root.is_dir():
        raise DataPrepError(f"source folder not found: {root}")
    if split_by not in ("patient", "image"):
        raise DataPrepError(f"split_by must be 'patient' or 'image', not {split_by!r}")
    records, skipped, hidden = _scan(root, tuple(classes), check_decode)
    if not records:
        raise DataPrepError(
            f"no usable images of classes {list(classes)} under {root} ({len(skipped)} files skipped)"
        )
    frame, dropped = _drop_duplicates(pd.DataFrame(records))
    missing = [c for c in classes if c not in set(frame["label"])]
    if missing:
        raise DataPrepError(f"no images for class(es) {missing} under {root}")
    splitter = _split_by_patient if split_by == "patient" else _split_by_image
    frame["split"] = splitter(frame, tuple(fractions), seed)
    manifest = frame[MANIFEST_COLUMNS].sort_values("path", kind="stable").reset_index(drop=True)

    out = Path(out_dir)
    manifest_path, summary_path = Manifest.write(manifest, out / "manifest.csv"), out / Manifest.SUMMARY
    settings = SplitSettings(
        root=os.path.relpath(root.resolve(), out.resolve()),
        classes=tuple(classes),
        split_by=split_by,
        fractions=tuple(fractions),
        seed=seed,
        manifest_sha256=sha256_file(manifest_path),
    )
    summary = _summarise(manifest, len(records) + len(skipped), dropped, skipped, hidden, settings)
    if shortcut:
        from dataclasses import replace

        from cxr.shortcut import shortcut_check

        check = shortcut_check(
            [str(root / unescape_path(p)) for p in manifest["path"]],
            manifest["label"].tolist(),
            manifest["patient_id"].tolist(),
            classes,
            seed=seed,
            workers=(os.cpu_count() or 1) if workers is None else workers,
        )
        summary = replace(summary, shortcut_check=check)
    summary.write(summary_path)
    warnings = []
    if summary.patients_on_several_splits:
        warnings.append(
            f"WARNING: the image-level split puts {summary.patients_on_several_splits} patients "
            "on more than one side; their images leak between train, val and test"
        )
    return PrepareResult(manifest, summary, manifest_path, summary_path, warnings)


def load_manifest(manifest_path: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """Read a split manifest and add ``abspath``. The root comes from ``root``, else from
    the summary.json beside the manifest, else the manifest's folder."""
    try:
        return Manifest.read(manifest_path, root).frame
    except ManifestError as exc:
        raise DataPrepError(str(exc)) from None


def manifest_split(
    manifest_path: str | Path, split: str, classes: list[str] | tuple[str, ...]
) -> ManifestSplit:
    """One split of a manifest whose paths are relative to its folder's images (the folder scored)."""
    try:
        return Manifest.read(manifest_path, root=Path(manifest_path).parent).split(split, classes)
    except ManifestError as exc:
        raise DataPrepError(str(exc)) from None
