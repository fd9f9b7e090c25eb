"""The ``ray`` engine of ``cxr-infer`` (``RayEngine``; ``score_with_ray``): the local engine's
contract on a Ray cluster (Ray Data), through the shared ``cxr.infer.engine.Engine`` interface.

The standard Ray Data shape for offline batch inference:

1. the driver lists the files (the local engine's listing, or a CSV list, or a pyarrow URI);
2. CPU tasks decode them with the project's one preprocessing (``cxr.imaging.decode_or_error``);
   a file that cannot be decoded becomes an error row there, never a retry;
3. ``map_batches`` with a callable class that holds one onnxruntime session per actor
   (``ActorPoolStrategy``; one GPU per actor by default where the cluster has GPUs);
4. the driver turns each finished block into rows (``prediction_rows``, as the local engine)
   and writes it as a Parquet shard in ``OUT/shards/`` (temporary name, then an atomic rename).

``predictions.csv`` and its sidecar are assembled from the shards at the end, atomically, by the
engines' shared writer (``cxr.infer.engine.finish``): one row per file, in the same order, with
the same columns. ``--resume`` skips the files already in finished shards (same settings only).
A killed driver loses no finished shard; a dead worker's blocks are re-run by Ray, and a file is
never written twice.

Ray is imported only here, only when the engine is asked for (the ``[ray]`` extra).
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from cxr.artifacts import Predictions, escape_path, unescape_path
from cxr.artifacts.scoring_settings import ScoringSettings
from cxr.imaging import IMAGE_EXTENSIONS, decode_or_error
from cxr.infer.batch import errors_and_flags, predict_where
from cxr.infer.engine import (
    Engine,
    GroundTruth,
    Job,
    ProgressFn,
    RunInterrupted,
    ScoreInputError,
    ScoreResult,
    ScoringOptions,
    Targets,
    finish,
    kept_rows,
    list_targets,
    prediction_rows,
)
from cxr.infer.model import OnnxClassifier
from cxr.messages import first_line

DECODE_CHUNK = 64  # files per decode task (and per shard on CPUs)
URI_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "hdfs://", "file://")


class RayEngineError(ScoreInputError):
    """Ray is missing or the cluster cannot be reached. One-line message."""


class RayRunFailed(RunInterrupted):
    """The cluster failed mid-run (beyond Ray's own retries); the finished shards are kept."""


def is_uri(source: str) -> bool:
    return source.startswith(URI_SCHEMES)


def is_path_list(source: str) -> bool:
    """A local CSV file that lists the files to score."""
    path = Path(source)
    return path.is_file() and path.suffix.lower() == ".csv"


def list_source(source: str, only: list[str] | None = None, exclude: Path | None = None) -> Targets:
    """A folder (the local engine's listing), a CSV list of paths (column ``path``; relative paths
    are relative to the CSV's folder), or a URI read through pyarrow's file systems."""
    if is_uri(source):
        return _list_uri(source, only)
    if is_path_list(source):
        return _list_csv(Path(source), only)
    path = Path(source)
    if not path.is_dir():
        raise ScoreInputError(f"source not found: {source} (a folder, a .csv list of paths, or a URI)")
    rels, paths = list_targets(path, only, exclude)
    return Targets(rels, [str(p) for p in paths])


def _list_csv(path: Path, only: list[str] | None = None) -> Targets:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "path" not in (reader.fieldnames or []):
                raise ScoreInputError(f"{path}: a list of files needs a 'path' column")
            given = [row["path"] for row in reader if row.get("path")]
    except UnicodeDecodeError:
        raise ScoreInputError(f"{path}: not a UTF-8 CSV file") from None
    given = list(dict.fromkeys(given))
    if only is not None:  # --manifest/--split: the listed files of that split only, as the local engine
        wanted = {unescape_path(rel) for rel in only}
        given = [p for p in given if p in wanted]
    locations = [p if is_uri(p) or os.path.isabs(p) else str(path.parent / p) for p in given]
    return Targets([escape_path(p) for p in given], locations)


def _list_uri(uri: str, only: list[str] | None) -> Targets:
    import pyarrow.fs as pafs

    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as exc:
        raise ScoreInputError(f"cannot list {uri}: {exc}") from None
    base = uri.rstrip("/")
    rels = sorted(
        info.path[len(root.rstrip("/")) + 1 :]
        for info in infos
        if info.type == pafs.FileType.File and Path(info.path).suffix.lower() in IMAGE_EXTENSIONS
    )
    if only is not None:
        wanted = {unescape_path(rel) for rel in only}
        rels = [rel for rel in rels if rel in wanted]
    return Targets([escape_path(rel) for rel in rels], [f"{base}/{rel}" for rel in rels])


def _decode_location(location: str, size: int) -> tuple[np.ndarray | None, str]:
    """``decode_or_error`` on a local file, or on a URI's bytes copied to a local temporary file."""
    if not is_uri(location):
        return decode_or_error(location, size)
    import pyarrow.fs as pafs

    suffix = Path(location).suffix
    try:
        filesystem, path = pafs.FileSystem.from_uri(location)
        with (
            filesystem.open_input_stream(path) as stream,
            tempfile.NamedTemporaryFile(suffix=suffix) as local,
        ):
            local.write(stream.read())
            local.flush()
            return decode_or_error(local.name, size)
    except (OSError, ValueError) as exc:
        return None, f"cannot read {location}: {exc}"


def decode_block(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray task: decode a block of files (errors become messages, never exceptions)."""
    decoded = [_decode_location(str(location), size) for location in batch["location"]]
    images = np.zeros((len(decoded), size, size, 3), np.uint8)
    ok = np.zeros(len(decoded), bool)
    for index, (image, _) in enumerate(decoded):
        if image is not None:
            images[index], ok[index] = image, True
    errors, qcs = errors_and_flags(
        decoded, [None if is_uri(str(loc)) else str(loc) for loc in batch["location"]]
    )
    return {
        "rel": batch["rel"],
        "image": images,
        "ok": ok,
        "error": np.array(errors, dtype=object),
        "qc": np.array(qcs, dtype=object),
    }


@dataclass(frozen=True)
class ActorSpec:
    """What each scoring actor is made with: the model (as bytes, so that the workers need no shared
    file system), where and how it runs, and whether to average over TTA views."""

    model_bytes: bytes
    model_name: str
    device: str
    precision: str
    threads: int | None
    tta: bool


class ScoringActor:
    """Ray actor: one onnxruntime session for its whole life; the local engine's provider choice
    and checks."""

    def __init__(self, spec: ActorSpec):
        folder = Path(tempfile.mkdtemp(prefix="cxr-ray-model-"))
        path = folder / spec.model_name
        try:
            path.write_bytes(spec.model_bytes)
            self.model = OnnxClassifier(
                path, device=spec.device, threads=spec.threads, precision=spec.precision
            )
        finally:  # the session holds the model now; the file would outlive the actor
            shutil.rmtree(folder, ignore_errors=True)
        self.tta = spec.tta

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], bool)
        probs, domains = predict_where(self.model, np.asarray(batch["image"])[ok], ok, self.tta)
        provider = np.array([self.model.provider] * len(ok), dtype=object)
        return {
            "rel": batch["rel"],
            "probability": probs,
            "domain": domains,
            "error": batch["error"],
            "qc": batch["qc"],
            "provider": provider,
        }


def _start_shards(
    shards: Path, settings: ScoringSettings, resume: bool, rel_set: set[str]
) -> dict[str, dict[str, str]]:
    """Rows to keep from an interrupted run (with ``resume``), else an empty shard folder. Shards
    that cannot be read (cut by a crash, corrupted) are dropped and their files scored again."""
    if resume and (kept := kept_rows(*_readable_shards(shards), settings, rel_set)):
        Predictions.start_shards(shards, settings)
        Predictions.write_shard(shards, list(kept.values()), settings.positive_class)
        return kept
    Predictions.start_shards(shards, settings)
    return {}


RAY_CONNECT_TIMEOUT_S = 60.0


def check_reachable(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """A ``host:port`` or ``ray://host:port`` address must accept a connection within ``timeout``
    seconds (Ray itself would retry for many minutes); RayRunFailed (exit 69) otherwise."""
    import socket

    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # let Ray judge addresses of other forms
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise RayRunFailed(
            f"cannot reach the Ray cluster at {address} within {timeout:g} s "
            f"({exc.strerror or type(exc).__name__}); is it running?"
        ) from None


def _user_error_inside(exc: BaseException) -> BaseException | None:
    """The model error (not a probability, not loadable) that a Ray task error wraps, if any."""
    from cxr.infer.model import ModelLoadError, ModelOutputError

    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ModelOutputError, ModelLoadError)):
            return current
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else (current.__cause__ or current.__context__)
    text = str(exc)
    for name in ("ModelOutputError", "ModelLoadError"):
        if f"{name}: " in text:
            from cxr.infer.model import ModelOutputError as Wrapped

            return Wrapped(text.split(f"{name}: ", 1)[1].splitlines()[0])
    return None


def _readable_shards(shards: Path) -> tuple[ScoringSettings | None, dict[str, dict[str, str]]]:
    """``Predictions.read_shards``, shard by shard: an unreadable settings file means no earlier
    run to resume (its settings cannot be checked); an unreadable shard is left out."""
    try:
        settings = Predictions.read_shard_settings(shards)
    except (OSError, ValueError):
        raise ScoreInputError(
            f"--resume: {shards / Predictions.SHARD_SETTINGS} is damaged, so the interrupted run's "
            "settings cannot be checked; rerun without --resume"
        ) from None
    if settings is None:
        return None, {}
    rows: dict[str, dict[str, str]] = {}
    for shard in Predictions.shard_files(shards):
        try:
            rows.update(Predictions.read_shard(shard))
        except Exception:  # noqa: BLE001 - pyarrow raises its own assorted types for a damaged file
            continue
    return settings, rows


def connect(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT_S) -> bool:
    """Use the running Ray instance, or start/join one. True when this call started it."""
    try:
        import ray
    except ImportError:
        raise RayEngineError("the ray engine needs Ray: pip install 'cxr[ray]'") from None
    check_reachable(address, timeout)
    if ray.is_initialized():
        return False
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayEngineError(
            f"cannot start or reach Ray{f' at {address}' if address else ''}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    return True


@dataclass(frozen=True)
class ActorPlan:
    """How many scoring actors, the resources of each, and their sessions' threads and device."""

    actors: int
    num_gpus: float
    num_cpus: int
    threads: int | None
    device: str


def actor_plan(device: str, gpus_per_actor: float | None) -> ActorPlan:
    """Actors and their resources: one per GPU (or ``gpus_per_actor`` each) where the cluster has
    GPUs and the device allows; else one single-threaded session per CPU."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if device != "cpu" and gpus > 0:
        share = gpus_per_actor or 1.0
        return ActorPlan(max(1, int(gpus / share)), share, 1, None, "cuda" if device == "cuda" else "auto")
    # Ray fuses the CPU decode into the actors here: each actor decodes and scores on its own core.
    return ActorPlan(max(1, cpus), 0, 1, 1, "cpu")


@dataclass(frozen=True)
class RayEngine(Engine):
    """A Ray cluster: ``address`` to join (default: a running instance, else a new local one),
    reachable within ``timeout`` seconds; ``gpus_per_actor`` GPUs for each scoring actor."""

    address: str | None = None
    gpus_per_actor: float | None = None
    timeout: float = RAY_CONNECT_TIMEOUT_S
    name: ClassVar[str] = "ray"
    native_logs: ClassVar[bool] = True

    def _list(self, source: str | Path, only: list[str] | None, exclude: Path | None) -> Targets:
        return replace(list_source(str(source), only, exclude), source=str(source))

    def _settings(self, settings: ScoringSettings, targets: Targets) -> ScoringSettings:
        return settings.with_engine(engine="ray")

    def _score(self, job: Job) -> ScoreResult:
        shards = Predictions.shards_path(job.out_csv)
        done = _start_shards(shards, job.settings, job.options.resume, set(job.targets.rels))
        todo = [i for i, rel in enumerate(job.targets.rels) if rel not in done]
        job.tick(len(done))
        started_ray = connect(self.address, self.timeout)
        try:
            started = time.perf_counter()
            providers = _run_on_cluster(job, todo, shards, self.gpus_per_actor)
            seconds = time.perf_counter() - started
        finally:
            if started_ray:
                import ray

                ray.shutdown()
        _, rows = Predictions.read_shards(shards)
        provider = ",".join(sorted(providers)) or job.model.provider
        recorded = job.settings.with_engine(providers=tuple(sorted(providers)) or (job.model.provider,))
        result = finish(job, rows, len(todo), seconds, provider, recorded)
        Predictions.remove_shards(shards)
        return result


def score_with_ray(
    source: str,
    model: OnnxClassifier,
    out_csv: str | Path,
    *,
    address: str | None = None,
    batch_size: int | None = None,
    truth: GroundTruth | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    only: list[str] | None = None,
    tta: bool = False,
    exclude: str | Path | None = None,
    device: str = "auto",
    gpus_per_actor: float | None = None,
    foreign: str = "flag",
    timeout: float = RAY_CONNECT_TIMEOUT_S,
) -> ScoreResult:
    """Score ``source`` on Ray; the same outputs and result as ``score_folder``."""
    options = ScoringOptions(
        batch_size=batch_size,
        truth=truth or GroundTruth(),
        only=only,
        resume=resume,
        tta=tta,
        foreign=foreign,
        device=device,
        exclude=Path(exclude) if exclude else None,
    )
    engine = RayEngine(address=address, gpus_per_actor=gpus_per_actor, timeout=timeout)
    return engine.score(source, model, out_csv, options, progress)


def _run_on_cluster(job: Job, todo: list[int], shards: Path, gpus_per_actor: float | None) -> set[str]:
    """``_run``, with what fails on the cluster told apart: the model's own fault (as the local
    engine says it) or the cluster's (RayRunFailed; the finished shards are kept)."""
    try:
        return _run(job, todo, shards, gpus_per_actor)
    except Exception as exc:  # noqa: BLE001 - Ray wraps what failed on the cluster in its own types
        if not type(exc).__module__.startswith("ray"):
            raise
        user_error = _user_error_inside(exc)
        if user_error is not None:  # the model's own fault, not the cluster's: as the local engine says
            raise ScoreInputError(str(user_error)) from None
        raise RayRunFailed(
            f"the Ray run failed ({type(exc).__name__}: {first_line(exc)[:200]}); "
            f"finished shards are kept in {shards}: rerun with --resume"
        ) from None


def _run(job: Job, todo: list[int], shards: Path, gpus_per_actor: float | None) -> set[str]:
    """Decode and score the ``todo`` files on Ray; one shard per finished block. The providers used."""
    if not todo:
        return set()
    import ray.data
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    plan = actor_plan(job.options.device, gpus_per_actor)
    batch_size = job.options.batch_size or (256 if plan.num_gpus else DECODE_CHUNK)
    chunk = min(DECODE_CHUNK, batch_size)  # files per decode task and per block (a shard on CPUs)
    items = [{"rel": job.targets.rels[i], "location": job.targets.locations[i]} for i in todo]
    dataset = (
        ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // chunk)))
        .map_batches(
            decode_block, fn_kwargs={"size": job.model.info.input_size}, batch_size=chunk, num_cpus=1
        )
        .map_batches(
            ScoringActor,
            batch_size=batch_size,
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            compute=ActorPoolStrategy(size=plan.actors),
            fn_constructor_args=(actor_spec(job, plan),),
        )
    )
    providers: set[str] = set()
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        _write_block(job, block, shards)
        providers.update(str(p) for p in block["provider"])
    return providers


def actor_spec(job: Job, plan: ActorPlan) -> ActorSpec:
    """What the scoring actors of ``job`` are made with, on ``plan``."""
    model = job.model
    return ActorSpec(
        model.info.path.read_bytes(),
        model.info.path.name,
        plan.device,
        model.precision,
        plan.threads,
        job.options.tta,
    )


def _write_block(job: Job, block: dict[str, np.ndarray], shards: Path) -> None:
    """A finished block's rows, as the local engine makes them, written as one shard."""
    rels = [str(rel) for rel in block["rel"]]
    rows = prediction_rows(
        job.model,
        rels,
        np.asarray(block["probability"], float),
        np.asarray(block["domain"], float),
        [str(e) for e in block["error"]],
        [str(q) for q in block["qc"]],
        job.options.truth,
        job.options.tta,
        job.options.foreign,
    )
    Predictions.write_shard(shards, rows, job.model.info.positive_class)
    job.tick(len(rels))
