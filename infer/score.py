"""The ``local`` engine (``LocalEngine``; ``score_folder``): every image under a folder, scored on
this machine with an ONNX model. What both engines share is in ``cxr.infer.engine``.

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

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from cxr.artifacts import Predictions
from cxr.artifacts.scoring_settings import ScoringSettings
from cxr.imaging import decode_pool, decoded_stream
from cxr.infer.batch import errors_and_flags, predict_batch, score_paths
from cxr.infer.engine import (  # noqa: F401 - re-exported
    FOREIGN_POLICIES,
    RESUME_KEYS,
    Engine,
    GroundTruth,
    Job,
    ProgressFn,
    RunInterrupted,
    ScoreInputError,
    ScoreResult,
    ScoringOptions,
    Targets,
    already_complete,
    check_labels_match,
    file_stamps,
    finish,
    finished_rows,
    kept_rows,
    list_targets,
    listing_sha256,
    model_label,
    other_engine,
    prediction_rows,
    read_labels_csv,
    scoring_settings,
    write_predictions,
)
from cxr.infer.model import ModelLoadError, OnnxClassifier, default_thread_count

DEFAULT_BATCH = {"CPUExecutionProvider": 32, "CUDAExecutionProvider": 256}
QUEUE_BATCHES = 4


@dataclass(frozen=True)
class LocalEngine(Engine):
    """This machine: ``workers`` processes (default: the CPUs this process may use) decode, or on
    CPUs decode and score; see the module's docstring for the two plans."""

    workers: int | None = None
    name: ClassVar[str] = "local"

    def _list(self, source: str | Path, only: list[str] | None, exclude: Path | None) -> Targets:
        folder = Path(source)
        if not folder.is_dir():
            raise ScoreInputError(f"folder not found: {folder}")
        rels, paths = list_targets(folder, only, exclude)
        return Targets(rels, [str(p) for p in paths], str(folder), file_stamps(paths))

    def _settings(self, settings: ScoringSettings, targets: Targets) -> ScoringSettings:
        return settings.with_engine(listing_sha256=listing_sha256(targets.rels, targets.stamps or []))

    def _score(self, job: Job) -> ScoreResult:
        workers, partial = effective_workers(self.workers), Predictions.partial_path(job.out_csv)
        stamps = dict(zip(job.targets.rels, job.targets.stamps or []))
        done = _resume_rows(partial, job.out_csv, job.settings, stamps, job.options.resume)
        todo = [i for i, rel in enumerate(job.targets.rels) if rel not in done]
        batch_size = job.options.batch_size or DEFAULT_BATCH.get(job.model.provider, 32)
        # One batch is scored in-process: starting worker sessions would cost more than it saves.
        cpu_plan = uses_cpu_plan(job.model, workers) and len(todo) > batch_size
        settings = job.settings.with_engine(**plan_facts(cpu_plan, workers))
        Predictions.start_partial(
            partial, settings, [{**row, "_stamp": stamps[rel]} for rel, row in done.items()]
        )
        job.tick(len(done))
        started = time.perf_counter()
        _write_scored(job, partial, stamps, todo, batch_size, workers, cpu_plan)
        seconds = time.perf_counter() - started
        _, rows = Predictions.read_partial(partial)
        result = finish(
            job, rows, len(todo), seconds, job.model.provider, settings.with_engine(file_stamps=stamps)
        )
        partial.unlink()
        return result


def _write_scored(
    job: Job,
    partial: Path,
    stamps: dict[str, str],
    todo: list[int],
    batch_size: int,
    workers: int,
    cpu_plan: bool,
) -> None:
    """Score the ``todo`` files on the chosen plan, appending their rows to ``partial`` as batches finish."""
    plan = _scored_on_cpu_plan if cpu_plan else _scored_on_gpu_plan
    rels, paths, options = job.targets.rels, [Path(p) for p in job.targets.locations], job.options
    with open(partial, "a", encoding="utf-8", newline="\n") as handle:
        try:
            for chunk, probs, domains, errors, qcs in plan(
                job.model, paths, todo, batch_size, workers, options.tta
            ):
                rows = prediction_rows(
                    job.model,
                    [rels[i] for i in chunk],
                    probs,
                    domains,
                    errors,
                    qcs,
                    options.truth,
                    options.tta,
                    options.foreign,
                )
                Predictions.append_rows(handle, [{**row, "_stamp": stamps[row["path"]]} for row in rows])
                job.tick(len(chunk))
        except ModelLoadError as exc:  # from a CPU-plan worker
            raise ScoreInputError(str(exc)) from None
        except BrokenProcessPool:
            raise RunInterrupted(
                "a worker process died (killed by the system, perhaps out of memory); the rows "
                "scored so far are kept: rerun with --resume (fewer --workers need less "
                "memory)"
            ) from None


def score_folder(
    folder: str | Path,
    model: OnnxClassifier,
    out_csv: str | Path,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    truth: GroundTruth | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    only: list[str] | None = None,
    tta: bool = False,
    exclude: str | Path | None = None,
    foreign: str = "flag",
) -> ScoreResult:
    """Score all images under ``folder`` (or just the escaped relative paths in ``only``); write
    ``out_csv`` and its settings sidecar. ``exclude``: a folder inside ``folder`` not to score
    (the output folder). A listed file that is missing gets an error row."""
    options = ScoringOptions(
        batch_size=batch_size,
        truth=truth or GroundTruth(),
        only=only,
        resume=resume,
        tta=tta,
        foreign=foreign,
        exclude=Path(exclude) if exclude else None,
    )
    return LocalEngine(workers=workers).score(folder, model, out_csv, options, progress)


def _resume_rows(
    partial: Path, out_csv: Path, settings: ScoringSettings, stamps: dict[str, str], resume: bool
) -> dict[str, dict[str, str]]:
    """The rows an earlier run left that are still good: from the interrupted run's partial file,
    else from the finished CSV; only for files still there and unchanged (same size and time)."""
    if not resume:
        return {}
    before, rows = Predictions.read_partial(partial)
    if before is None:
        before, rows = finished_rows(out_csv)
    kept = kept_rows(before, rows, settings, set(stamps))
    recorded = (before.file_stamps if before else None) or {}
    return {
        rel: row
        for rel, row in kept.items()
        if row.get("_stamp", recorded.get(rel)) in (stamps[rel], None) or not stamps[rel]
    }


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
        chunk = indices[start : start + batch_size]
        yield chunk, [next(stream) for _ in chunk]


# (indices, probabilities, domain scores, errors, qc flags)
ScoredBatch = tuple[list[int], np.ndarray, np.ndarray, list[str], list[str]]


def _scored_on_gpu_plan(
    model: OnnxClassifier, paths: list[Path], todo: list[int], batch_size: int, workers: int, tta: bool
) -> Iterator[ScoredBatch]:
    """Decode pool -> batching thread -> session thread; the caller's thread takes the results."""
    batches = _threaded(_batches(todo, paths, model.info.input_size, workers, batch_size), QUEUE_BATCHES)
    scored = _threaded(
        ((chunk, decoded, predict_batch(model, decoded, tta)) for chunk, decoded in batches), QUEUE_BATCHES
    )
    for chunk, decoded, (probs, domains) in scored:
        yield chunk, probs, domains, *errors_and_flags(decoded, [paths[i] for i in chunk])


def _scored_on_cpu_plan(
    model: OnnxClassifier, paths: list[Path], todo: list[int], batch_size: int, workers: int, tta: bool
) -> Iterator[ScoredBatch]:
    """Each of ``workers`` processes decodes and scores whole batches; at most two batches per
    worker are in flight, and results come back in order."""
    from collections import deque

    model_path, sha256 = str(model.path.resolve()), model.info.sha256
    pool = decode_pool(workers)
    pending: deque = deque()
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            pending.append(
                (chunk, pool.submit(score_paths, (model_path, sha256, [str(paths[i]) for i in chunk], tta)))
            )
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


def plan_facts(cpu_plan: bool, workers: int) -> dict[str, str | int]:
    """How a run was scheduled: the settings' ``plan`` and ``workers`` (and ``parallel_runs`` on
    the CPU plan)."""
    if cpu_plan:
        return {
            "plan": "cpu: each worker process decodes and scores (1 intra-op thread)",
            "workers": workers,
            "parallel_runs": workers,
        }
    return {"plan": "decode pool, session thread, writer", "workers": workers}


def uses_cpu_plan(model: OnnxClassifier, workers: int) -> bool:
    """The CPU plan (one decode-and-score process per core) applies on CPUs when onnxruntime's
    threads were left to cxr and there are worker processes."""
    return model.provider == "CPUExecutionProvider" and model.parallel_runs > 1 and workers >= 1


def effective_workers(requested: int | None) -> int:
    """Worker processes: the CPUs this process may use (affinity, cgroup pinning) by default, and
    never more (more only fight for the cores, and on CPUs each holds a model session)."""
    cpus = default_thread_count()
    return cpus if requested is None else min(cpus, max(0, requested))
