"""Inference stage core: ``score_folder`` scores every image under a folder with an ONNX model.

A process pool decodes (the shared preprocessing) while the main process runs
onnxruntime on batches. Every file found gets exactly one CSV row: a prediction or
an error message. Rows are appended to ``<out>.partial`` as batches finish, so
``resume=True`` can continue an interrupted run; the final CSV is sorted and
renamed into place atomically.
"""

from __future__ import annotations

import csv
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.files import atomic_path
from cxr.imaging import decode_or_error, decode_pool, list_images
from cxr.infer.model import OnnxClassifier, predict_tta

ProgressFn = Callable[[int, int], None]  # (files just finished, total files)


class ScoreInputError(ValueError):
    """Bad arguments to scoring (missing folder, bad labels file). One-line message."""


@dataclass
class ScoreResult:
    csv_path: Path
    n_files: int
    n_errors: int
    n_scored_now: int
    provider: str
    seconds: float
    predictions: pd.DataFrame

    @property
    def images_per_second(self) -> float:
        return self.n_scored_now / self.seconds if self.seconds > 0 else float("nan")


def columns_for(positive_class: str) -> list[str]:
    return ["path", f"p_{positive_class}", "pred_label", "threshold", "true_label", "error", "model",
            "model_sha256"]


def read_labels_csv(path: str | Path, classes: list[str]) -> dict[str, str]:
    """``path,label`` CSV (path relative to the scored folder, or a bare file name)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ScoreInputError(f"cannot read labels file {path}: {exc}") from None
    if not {"path", "label"} <= set(frame.columns):
        raise ScoreInputError(f"labels file {path} needs columns 'path' and 'label'")
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise ScoreInputError(f"labels file {path} has labels {unknown} outside the model's classes {classes}")
    return dict(zip(frame["path"], frame["label"]))


def manifest_split(manifest_path: str | Path, split: str, classes: list[str]) -> tuple[list[str], dict[str, str]]:
    """(relative paths, labels) of one split of a `cxr data prepare` manifest."""
    try:
        frame = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ScoreInputError(f"cannot read manifest {manifest_path}: {exc}") from None
    if not {"path", "label", "split"} <= set(frame.columns):
        raise ScoreInputError(f"{manifest_path} is not a split manifest (needs path, label, split)")
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise ScoreInputError(f"{manifest_path} has no '{split}' rows")
    unknown = sorted(set(rows["label"]) - set(classes))
    if unknown:
        raise ScoreInputError(f"{manifest_path} has labels {unknown} outside the model's classes {classes}")
    return rows["path"].tolist(), dict(zip(rows["path"], rows["label"]))


def true_label_for(rel_path: str, classes: list[str], labels: dict[str, str] | None) -> str:
    if labels is not None:
        return labels.get(rel_path, labels.get(Path(rel_path).name, ""))
    for part in reversed(Path(rel_path).parts[:-1]):
        if part in classes:
            return part
    return ""


def _decode_chunk(args: tuple[list[str], int]) -> list[tuple[np.ndarray | None, str]]:
    paths, size = args
    return [decode_or_error(p, size) for p in paths]


def decoded_stream(paths: list[Path], size: int, workers: int, chunk: int = 8,
                   max_chunks_in_flight: int | None = None) -> Iterator[tuple[np.ndarray | None, str]]:
    """Decoded images in input order from a pool of ``workers`` processes (0: in-process).

    At most ``max_chunks_in_flight`` chunks are queued or held at once, so memory stays
    bounded on folders of any size.
    """
    chunks = [([str(p) for p in paths[i:i + chunk]], size) for i in range(0, len(paths), chunk)]
    if workers <= 0 or len(chunks) < 2:
        for job in chunks:
            yield from _decode_chunk(job)
        return
    limit = max_chunks_in_flight or workers * 4
    with decode_pool(workers) as pool:
        pending: deque = deque()
        for job in chunks:
            pending.append(pool.submit(_decode_chunk, job))
            if len(pending) >= limit:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _done_rows(partial: Path, columns: list[str]) -> pd.DataFrame:
    if not partial.is_file():
        return pd.DataFrame(columns=columns)
    try:
        frame = pd.read_csv(partial, dtype=str, keep_default_na=False, on_bad_lines="skip")
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=columns)
    if list(frame.columns) != columns:
        return pd.DataFrame(columns=columns)
    # a row cut off by a kill has too few fields or no sha; drop it so that file is scored again
    return frame[frame["model_sha256"].str.len() == 64].drop_duplicates("path", keep="last")


def _rewrite_partial(partial: Path, done: pd.DataFrame) -> None:
    with atomic_path(partial) as tmp:
        done.to_csv(tmp, index=False, lineterminator="\n")


def score_folder(folder: str | Path, model: OnnxClassifier, out_csv: str | Path, *, batch_size: int = 32,
                 workers: int | None = None, labels: dict[str, str] | None = None, resume: bool = False,
                 progress: ProgressFn | None = None, only: list[str] | None = None, tta: bool = False) -> ScoreResult:
    """Score all images under ``folder`` (or just the relative paths in ``only``); write ``out_csv``.
    Returns counts and the predictions. A listed file that is missing gets an error row."""
    folder, out_csv = Path(folder), Path(out_csv)
    if not folder.is_dir():
        raise ScoreInputError(f"folder not found: {folder}")
    info = model.info
    columns = columns_for(info.positive_class)
    if only is None:
        paths = list_images(folder)
        rel_paths = [p.relative_to(folder).as_posix() for p in paths]
    else:
        rel_paths = sorted(dict.fromkeys(only))
        paths = [folder / rel for rel in rel_paths]
    partial = out_csv.with_name(out_csv.name + ".partial")
    done = _done_rows(partial, columns) if resume else pd.DataFrame(columns=columns)
    done = done[done["path"].isin(set(rel_paths)) & (done["model_sha256"] == info.sha256)]
    _rewrite_partial(partial, done)
    todo = [i for i, rel in enumerate(rel_paths) if rel not in set(done["path"])]
    if progress:
        progress(len(done), len(rel_paths))
    workers = (os.cpu_count() or 1) if workers is None else workers
    started = time.perf_counter()
    with open(partial, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        stream = decoded_stream([paths[i] for i in todo], info.input_size, workers)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            decoded = [next(stream) for _ in chunk]
            writer.writerows(_score_batch(model, [rel_paths[i] for i in chunk], decoded, labels, tta))
            handle.flush()
            if progress:
                progress(len(chunk), len(rel_paths))
    seconds = time.perf_counter() - started
    predictions = _finalise(partial, out_csv, rel_paths, columns)
    n_errors = int((predictions["error"] != "").sum())
    return ScoreResult(out_csv, len(rel_paths), n_errors, len(todo), model.provider, seconds, predictions)


def _score_batch(model: OnnxClassifier, rels: list[str], decoded: list, labels, tta: bool = False) -> list[list]:
    info = model.info
    ok = [i for i, (arr, _) in enumerate(decoded) if arr is not None]
    probs = np.full(len(rels), np.nan)
    error = ""
    if ok:
        try:
            batch = np.stack([decoded[i][0] for i in ok])
            probs[ok] = predict_tta(model, batch) if tta else model.predict(batch)
        except Exception as exc:  # noqa: BLE001 - a failing batch becomes error rows, the run goes on
            error = f"inference failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    rows = []
    for i, rel in enumerate(rels):
        message = decoded[i][1] or (error if i in ok else "")
        p = "" if message else f"{probs[i]:.6f}"
        pred = "" if message else info.classes[int(probs[i] >= info.threshold)]
        rows.append([rel, p, pred, info.threshold, true_label_for(rel, info.classes, labels), message,
                     info.path.name + ("+tta" if tta else ""), info.sha256])
    return rows


def _finalise(partial: Path, out_csv: Path, rel_paths: list[str], columns: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(partial, dtype=str, keep_default_na=False).drop_duplicates("path", keep="last")
    order = {rel: i for i, rel in enumerate(rel_paths)}
    frame = frame[frame["path"].isin(order)].sort_values("path", key=lambda s: s.map(order))
    if len(frame) != len(rel_paths):
        raise RuntimeError(f"internal error: {len(frame)} rows for {len(rel_paths)} files")
    with atomic_path(out_csv) as tmp:
        frame[columns].to_csv(tmp, index=False, lineterminator="\n")
    partial.unlink()
    return frame.reset_index(drop=True)
