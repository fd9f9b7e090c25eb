"""Inference stage core: ``score_folder`` scores every image under a folder with an ONNX model.

Two plans, both overlapped and bounded in memory on any folder size:

- a GPU (or an explicit ``threads`` count): a process pool decodes (the shared preprocessing)
  and a thread gathers its output into batches; a second thread runs onnxruntime (which
  releases the GIL); the calling thread writes rows, with bounded queues between them;
- CPUs only (the default there): each worker process decodes a batch and scores it with its own
  single-threaded onnxruntime session, one process per core, and the calling thread writes.
  Nothing then fights over a core (intra-op threads wait at a barrier after each of the graph's
  hundreds of ops, so a core taken by a decoder stalls them all), and only probabilities cross
  between processes. Every file found gets exactly one row in ``predictions.csv`` (the
``cxr.artifacts.Predictions`` schema): a prediction or an error message.

Rows go to ``predictions.partial.jsonl`` as batches finish, so ``resume=True`` continues an
interrupted run; it refuses when the interrupted run used other settings (model, TTA,
labels, threshold, preprocessing, precision). The final CSV and its ``predictions.meta.json``
are renamed into place atomically. Listing, resume and finishing are linear in the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr import __version__
from cxr.artifacts import Predictions, PredictionsError, escape_path, unescape_path
from cxr.artifacts.predictions import settings_differences
from cxr.data import patient_id_from_name
from cxr.imaging import decode_pool, decoded_stream, list_images
from cxr.infer.batch import errors_and_flags, predict_batch, score_paths
from cxr.infer.model import ModelLoadError, OnnxClassifier, default_thread_count
from cxr.messages import first_line
from cxr.shift import shift_test

ProgressFn = Callable[[int, int], None]  # (files just finished, total files)
RESUME_KEYS = ("model_sha256", "tta", "threshold", "classes", "input_size", "resize_rule", "precision",
               "labels_sha256", "selection_sha256", "foreign")
FOREIGN_POLICIES = ("flag", "skip")  # an image outside the training domain: scored and flagged, or left unscored
DEFAULT_BATCH = {"CPUExecutionProvider": 32, "CUDAExecutionProvider": 256}
QUEUE_BATCHES = 4


class ScoreInputError(ValueError):
    """Bad arguments to scoring (missing folder, bad labels file, a resume that would mix
    settings). One-line message."""


class RunInterrupted(RuntimeError):
    """Scoring stopped mid-run for a reason outside cxr and the user's input (a worker process
    killed by the system, a cluster that failed); the rows so far are kept for --resume. One line."""


@dataclass
class GroundTruth:
    """Labels and patient ids by escaped relative path (or bare file name), and where they came from."""
    labels: dict[str, str] | None = None
    patient_ids: dict[str, str] = field(default_factory=dict)
    source: str = "folder names"

    def label_for(self, rel: str, classes: list[str]) -> str:
        if self.labels is not None:
            return self.labels.get(rel, self.labels.get(rel.rsplit("/", 1)[-1], ""))
        by_case = {name.casefold(): name for name in classes}  # normal/, Pneumonia/ and NORMAL/ alike
        for part in reversed(rel.split("/")[:-1]):
            if part.casefold() in by_case:
                return by_case[part.casefold()]
        return ""

    def patient_for(self, rel: str) -> str:
        return self.patient_ids.get(rel) or patient_id_from_name(rel.rsplit("/", 1)[-1])  # escaped: CSV-safe

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.source, sorted((self.labels or {}).items())]).encode()).hexdigest()


@dataclass
class ScoreResult:
    csv_path: Path
    n_files: int
    n_errors: int
    n_scored_now: int
    provider: str
    seconds: float
    predictions: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    already_complete: bool = False

    @property
    def images_per_second(self) -> float:
        return self.n_scored_now / self.seconds if self.seconds > 0 else float("nan")


def read_labels_csv(path: str | Path, classes: list[str]) -> GroundTruth:
    """``path,label`` CSV (path relative to the scored folder, or a bare file name)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ScoreInputError(f"cannot read labels file {path}: {first_line(exc)}") from None
    if not {"path", "label"} <= set(frame.columns):
        raise ScoreInputError(f"labels file {path} needs columns 'path' and 'label'")
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise ScoreInputError(f"labels file {path} has labels {unknown} outside the model's classes {classes}")
    conflicting = frame.groupby("path")["label"].nunique()
    conflicting = conflicting[conflicting > 1]
    if len(conflicting):
        raise ScoreInputError(f"labels file {path} gives {len(conflicting)} path(s) two different labels (first: "
                              f"{conflicting.index[0]}); keep one label per path")
    return GroundTruth(dict(zip(frame["path"], frame["label"])), {}, f"labels file {Path(path).name}")


def check_labels_match(truth: GroundTruth, rels: list[str], classes: list[str], source: str) -> int:
    """How many of ``rels`` the labels file labels; a ScoreInputError when it labels none of them."""
    if truth.labels is None or not rels:
        return len(rels)
    matched = sum(1 for rel in rels if truth.label_for(rel, classes))
    if matched == 0:
        example = next(iter(truth.labels))
        raise ScoreInputError(f"the {truth.source} labels none of the {len(rels)} files under {source} (its paths, "
                              f"e.g. {example!r}, must be relative to that folder, or bare file names)")
    return matched


def scoring_settings(model: OnnxClassifier, tta: bool, truth: GroundTruth, selection: list[str] | None,
                     foreign: str = "flag", source: str = "") -> dict[str, Any]:
    info = model.info
    chosen = hashlib.sha256("\n".join(selection).encode("utf-8", "surrogateescape")).hexdigest() if selection \
        is not None else "whole folder"
    return {"format": 2, "cxr_version": __version__, "source": source, "model": info.path.name,
            "model_sha256": info.sha256,
            "tta": bool(tta), "threshold": info.threshold, "threshold_rule": info.contract.threshold_rule,
            "classes": info.classes, "input_size": info.input_size, "resize_rule": info.resize_rule,
            "precision": model.precision, "labels_source": truth.source, "labels_sha256": truth.sha256(),
            "selection_sha256": chosen, "foreign": foreign,
            "guard": None if model.guard is None else {"method": model.guard.method,
                                                       "threshold": model.guard.threshold,
                                                       "false_flag_rate": model.guard.false_flag_rate},
            "calibration": None if model.info.contract.calibration is None else {
                "method": model.info.contract.calibration.method, "a": model.info.contract.calibration.a,
                "b": model.info.contract.calibration.b},
            **{k: v for k, v in model.execution.items() if k != "precision"}}


def list_targets(folder: Path, only: list[str] | None, exclude: Path | None) -> tuple[list[str], list[Path]]:
    """(escaped relative paths, file system paths) to score, in order."""
    if only is None:
        paths = list_images(folder, exclude=exclude)
        return [escape_path(p.relative_to(folder).as_posix()) for p in paths], paths
    rels = sorted(dict.fromkeys(only), key=lambda r: os.fsencode(unescape_path(r)))
    return rels, [folder / unescape_path(rel) for rel in rels]


def other_engine(out_csv: Path, resume: bool, ours: str) -> None:
    """An interrupted run of the other engine in the same folder: with --resume, refuse in one line
    (its rows are in the other engine's format); without, remove what it left."""
    theirs = "ray" if ours == "local" else "local"
    left = Predictions.shards_path(out_csv) if theirs == "ray" else Predictions.partial_path(out_csv)
    if not left.exists():
        return
    if resume:
        raise ScoreInputError(f"--resume: the interrupted run in {out_csv.parent} used --engine {theirs} "
                              f"({left.name} is its unfinished work); resume it with --engine {theirs}, or rerun "
                              "without --resume")
    if left.is_dir():
        shutil.rmtree(left, ignore_errors=True)
    else:
        left.unlink(missing_ok=True)


def file_stamps(paths: list[Path] | list[str]) -> list[str]:
    """``size:mtime_ns`` of each file ('' for one that cannot be read, or a URI): what tells a
    resumed run that a file changed since it was scored."""
    stamps = []
    for path in paths:
        try:
            info = os.stat(path)
            stamps.append(f"{info.st_size}:{info.st_mtime_ns}")
        except (OSError, ValueError, TypeError):
            stamps.append("")
    return stamps


def listing_sha256(rels: list[str], stamps: list[str]) -> str:
    text = "\n".join(f"{rel}\t{stamp}" for rel, stamp in zip(rels, stamps))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _resume_rows(partial: Path, out_csv: Path, settings: dict[str, Any], stamps: dict[str, str],
                 resume: bool) -> dict[str, dict]:
    """The rows an earlier run left that are still good: from the interrupted run's partial file,
    else from the finished CSV; only for files still there and unchanged (same size and time)."""
    if not resume:
        return {}
    before, rows = Predictions.read_partial(partial)
    if before is None:
        before, rows = finished_rows(out_csv)
    kept = kept_rows(before, rows, settings, set(stamps))
    recorded = (before or {}).get("file_stamps") or {}
    return {rel: row for rel, row in kept.items()
            if row.get("_stamp", recorded.get(rel)) in (stamps[rel], None) or not stamps[rel]}


def finished_rows(out_csv: Path) -> tuple[dict[str, Any] | None, dict[str, dict]]:
    """(settings, rows by path) of a finished predictions CSV, or (None, {}) without one."""
    before = Predictions.read_settings(out_csv)
    if before is None or not out_csv.is_file():
        return None, {}
    try:
        frame, _ = Predictions.read(out_csv)
    except PredictionsError:
        return None, {}
    return before, {row["path"]: row for row in frame.to_dict("records")}


def kept_rows(before: dict[str, Any] | None, rows: dict[str, dict], settings: dict[str, Any],
              rel_set: set[str]) -> dict[str, dict]:
    """The rows an interrupted run left (both engines) that ``--resume`` keeps: none without its
    settings, a ScoreInputError when they differ from this run's, else those still to be scored."""
    if before is None:
        return {}
    differences = settings_differences(before, settings, RESUME_KEYS)
    if differences:
        raise ScoreInputError(f"--resume: the interrupted run used other settings ({'; '.join(differences)}); "
                              "rerun without --resume, or with the same settings")
    return {rel: row for rel, row in rows.items() if rel in rel_set}


def already_complete(out_csv: Path, settings: dict[str, Any], n_files: int) -> pd.DataFrame | None:
    """The finished CSV when a resumed run has nothing left to do: same settings, and the same files
    (paths, sizes and times) as when it finished."""
    before = Predictions.read_settings(out_csv)
    if before is None or not out_csv.is_file() or settings_differences(before, settings, RESUME_KEYS):
        return None
    if before.get("listing_sha256") != settings.get("listing_sha256"):
        return None
    try:
        frame, _ = Predictions.read(out_csv)
    except PredictionsError:
        return None
    return frame if len(frame) == n_files else None


def _threaded(items: Iterable, maxsize: int) -> Iterator:
    """Iterate ``items`` in a background thread, through a queue of at most ``maxsize``
    (exceptions re-raised here)."""
    box: queue.Queue = queue.Queue(maxsize)
    done = object()
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            box.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while (item := box.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _batches(indices: list[int], paths: list[Path], size: int, workers: int, batch_size: int):
    stream = decoded_stream([paths[i] for i in indices], size, workers)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        yield chunk, [next(stream) for _ in chunk]


# (indices, probabilities, domain scores, errors, qc flags)
ScoredBatch = tuple[list[int], np.ndarray, np.ndarray, list[str], list[str]]


def _scored_on_gpu_plan(model: OnnxClassifier, paths: list[Path], todo: list[int], batch_size: int, workers: int,
                        tta: bool) -> Iterator[ScoredBatch]:
    """Decode pool -> batching thread -> session thread; the caller's thread takes the results."""
    batches = _threaded(_batches(todo, paths, model.info.input_size, workers, batch_size), QUEUE_BATCHES)
    scored = _threaded(((chunk, decoded, predict_batch(model, decoded, tta)) for chunk, decoded in batches),
                       QUEUE_BATCHES)
    for chunk, decoded, (probs, domains) in scored:
        yield chunk, probs, domains, *errors_and_flags(decoded, [paths[i] for i in chunk])


def _scored_on_cpu_plan(model: OnnxClassifier, paths: list[Path], todo: list[int], batch_size: int, workers: int,
                        tta: bool) -> Iterator[ScoredBatch]:
    """Each of ``workers`` processes decodes and scores whole batches; at most two batches per
    worker are in flight, and results come back in order."""
    from collections import deque

    model_path, sha256 = str(model.path.resolve()), model.info.sha256
    pool = decode_pool(workers)
    pending: deque = deque()
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            pending.append((chunk, pool.submit(score_paths, (model_path, sha256, [str(paths[i]) for i in chunk], tta))))
            if len(pending) >= 2 * workers:
                chunk, future = pending.popleft()
                yield chunk, *future.result()
        while pending:
            chunk, future = pending.popleft()
            yield chunk, *future.result()
    except BaseException:  # an error or an interrupt: do not wait for the batches in flight
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def plan_facts(cpu_plan: bool, workers: int) -> dict[str, Any]:
    """How a run was scheduled, for its settings record."""
    if cpu_plan:
        return {"plan": "cpu: each worker process decodes and scores (1 intra-op thread)", "workers": workers,
                "parallel_runs": workers}
    return {"plan": "decode pool, session thread, writer", "workers": workers}


def uses_cpu_plan(model: OnnxClassifier, workers: int) -> bool:
    """The CPU plan (one decode-and-score process per core) applies on CPUs when onnxruntime's
    threads were left to cxr and there are worker processes."""
    return model.provider == "CPUExecutionProvider" and model.parallel_runs > 1 and workers >= 1


def model_label(model: OnnxClassifier, tta: bool) -> str:
    """The ``model`` column: the file name, with ``+tta`` when test-time augmentation was used."""
    return model.info.path.name + ("+tta" if tta else "")


def prediction_rows(model: OnnxClassifier, rels: list[str], probs: np.ndarray, domains: np.ndarray,
                    errors: list[str], qcs: list[str], truth: GroundTruth, tta: bool,
                    foreign: str = "flag") -> list[dict[str, str]]:
    """The predictions rows of scored files (both engines): a probability, or an error message. An
    image the domain guard flags gets the reason in ``qc``, and with ``foreign='skip'`` no probability."""
    info, classes = model.info, model.info.classes
    name = model_label(model, tta)
    rows = []
    for rel, p, domain, error, qc in zip(rels, probs, domains, errors, qcs):
        outside = model.guard is not None and not error and model.guard.is_foreign(float(domain))
        if outside:
            qc = "; ".join(f for f in (qc, model.guard.reason(float(domain))) if f)
        keep = not error and not (outside and foreign == "skip")
        rows.append(Predictions.row(rel, float(p) if keep else None, classes, info.threshold,
                                    true_label=truth.label_for(rel, classes), patient_id=truth.patient_for(rel),
                                    error=error, qc=qc, model=name, model_sha256=info.sha256,
                                    domain_score=None if error else float(domain)))
    return rows


def score_folder(folder: str | Path, model: OnnxClassifier, out_csv: str | Path, *, batch_size: int | None = None,
                 workers: int | None = None, truth: GroundTruth | None = None, resume: bool = False,
                 progress: ProgressFn | None = None, only: list[str] | None = None, tta: bool = False,
                 exclude: str | Path | None = None, foreign: str = "flag") -> ScoreResult:
    """Score all images under ``folder`` (or just the escaped relative paths in ``only``); write
    ``out_csv`` and its settings sidecar. ``exclude``: a folder inside ``folder`` not to score
    (the output folder). A listed file that is missing gets an error row."""
    folder, out_csv = Path(folder), Path(out_csv)
    if not folder.is_dir():
        raise ScoreInputError(f"folder not found: {folder}")
    truth = truth or GroundTruth()
    rels, paths = list_targets(folder, only, Path(exclude) if exclude else None)
    stamps = dict(zip(rels, file_stamps(paths)))
    workers = effective_workers(workers)
    settings = {**scoring_settings(model, tta, truth, only, foreign, str(folder)),
                "listing_sha256": listing_sha256(rels, list(stamps.values()))}
    if resume and (complete := already_complete(out_csv, settings, len(rels))) is not None:
        n_errors = int((complete["error"] != "").sum())
        return ScoreResult(out_csv, len(rels), n_errors, 0, model.provider, 0.0, complete, settings, True)
    partial = Predictions.partial_path(out_csv)
    other_engine(out_csv, resume, ours="local")
    done = _resume_rows(partial, out_csv, settings, stamps, resume)
    todo = [i for i, rel in enumerate(rels) if rel not in done]
    batch_size = batch_size or DEFAULT_BATCH.get(model.provider, 32)
    # One batch is scored in-process: starting worker sessions would cost more than it saves.
    cpu_plan = uses_cpu_plan(model, workers) and len(todo) > batch_size
    settings.update(plan_facts(cpu_plan, workers))
    Predictions.start_partial(partial, settings, [{**row, "_stamp": stamps[rel]} for rel, row in done.items()])
    if progress:
        progress(len(done), len(rels))
    plan = _scored_on_cpu_plan if cpu_plan else _scored_on_gpu_plan
    started = time.perf_counter()
    with open(partial, "a", encoding="utf-8", newline="\n") as handle:
        try:
            for chunk, probs, domains, errors, qcs in plan(model, paths, todo, batch_size, workers, tta):
                rows = prediction_rows(model, [rels[i] for i in chunk], probs, domains, errors, qcs, truth, tta,
                                       foreign)
                Predictions.append_rows(handle, [{**row, "_stamp": stamps[row["path"]]} for row in rows])
                if progress:
                    progress(len(chunk), len(rels))
        except ModelLoadError as exc:  # from a CPU-plan worker
            raise ScoreInputError(str(exc)) from None
        except BrokenProcessPool:
            raise RunInterrupted("a worker process died (killed by the system, perhaps out of memory); the rows "
                             "scored so far are kept: rerun with --resume (fewer --workers need less memory)") from None
    seconds = time.perf_counter() - started
    settings["file_stamps"] = stamps
    predictions = _finalise(partial, out_csv, rels, model.info.positive_class, settings, model.guard)
    n_errors = int((predictions["error"] != "").sum())
    return ScoreResult(out_csv, len(rels), n_errors, len(todo), model.provider, seconds, predictions, settings)


def effective_workers(requested: int | None) -> int:
    """Worker processes: the CPUs this process may use (affinity, cgroup pinning) by default, and
    never more (more only fight for the cores, and on CPUs each holds a model session)."""
    cpus = default_thread_count()
    return cpus if requested is None else min(cpus, max(0, requested))


def write_predictions(rows: dict[str, dict[str, str]], out_csv: Path, rels: list[str], positive: str,
                      settings: dict[str, Any], guard=None) -> pd.DataFrame:
    """The final CSV (one row per file, in ``rels`` order) and its settings sidecar, atomically;
    both engines end here. With the model's ``guard``, the set-level shift test joins the sidecar."""
    missing = [rel for rel in rels if rel not in rows]
    if missing:  # a bug, never a user's mistake: the partial rows stay for --resume
        raise RuntimeError(f"{len(missing)} of {len(rels)} files have no row (first: {missing[0]})")
    frame = pd.DataFrame([rows[rel] for rel in rels], columns=Predictions.columns(positive))
    Predictions.write_csv(frame, out_csv)
    counts = {"n_files": len(rels), "n_errors": int((frame["error"] != "").sum()),
              "n_qc_flagged": int((frame["qc"] != "").sum()),
              "n_outside_domain": int(frame["qc"].str.contains("outside training domain", regex=False).sum())}
    if guard is not None:
        verdict = shift_test(pd.to_numeric(frame["domain_score"], errors="coerce").to_numpy(), guard.reference_scores,
                             guard.threshold, guard.false_flag_rate)
        counts["shift"] = verdict.to_dict() if verdict else None
    Predictions.write_settings(out_csv, {**settings, **counts})
    return frame


def _finalise(partial: Path, out_csv: Path, rels: list[str], positive: str, settings: dict[str, Any],
              guard=None) -> pd.DataFrame:
    _, rows = Predictions.read_partial(partial)
    frame = write_predictions(rows, out_csv, rels, positive, settings, guard)
    partial.unlink()
    return frame
