"""One interface for the scoring engines, and what they share.

Two engines score a source into ``predictions.csv`` (the ``cxr.artifacts.Predictions`` schema)
and its settings sidecar, with the same rows, order and result: ``local`` (this machine;
``cxr.infer.score``) and ``ray`` (a Ray cluster; ``cxr.infer.ray_engine``). An engine is a frozen
dataclass whose fields are its options (``workers`` for the local one; ``address``,
``gpus_per_actor`` and ``timeout`` for Ray's). ``Engine.score`` runs the steps both share: list
the targets, record the settings, return the finished CSV when a resumed run has nothing left
to do, and clear (or refuse to resume) the other engine's leftovers; the engine's ``_score``
then keeps its own resume rows, scores the rest and ends in ``finish``.

How to score is one record, ``ScoringOptions`` (batch size, ground truth, selection, resume, TTA,
the foreign-image policy, the device, a folder to leave out); which engine, another,
``EngineChoice``. The settings a run records and a resume checks are
``cxr.artifacts.ScoringSettings``.

``make_engine(name, **options)`` is the one way to choose an engine by name: an option the engine
does not take is refused in one line, never dropped. Importing this module starts nothing and
imports no engine; ``make_engine`` imports the one it is asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from cxr.artifacts import Predictions, PredictionsError, escape_path, unescape_path
from cxr.artifacts.scoring_settings import (  # noqa: F401 - RESUME_KEYS re-exported
    RESUME_KEYS,
    CalibrationSettings,
    GuardSettings,
    ScoringCounts,
    ScoringRecord,
    ScoringSettings,
)
from cxr.data import patient_id_from_name
from cxr.errors import InputError, Unavailable
from cxr.imaging import list_images
from cxr.infer.model import OnnxClassifier
from cxr.messages import first_line
from cxr.shift import import_test_in_background, shift_test

ProgressFn = Callable[[int, int], None]  # (files just finished, total files)
FOREIGN_POLICIES = (
    "flag",
    "skip",
)  # an image outside the training domain: scored and flagged, or left unscored
ENGINES = ("local", "ray")


class ScoreInputError(InputError, ValueError):
    """Bad arguments to scoring (missing folder, bad labels file, a resume that would mix
    settings). One-line message."""


class EngineOptionError(ScoreInputError):
    """An unknown engine, or an option the chosen engine does not take. One line."""


class RunInterrupted(Unavailable, RuntimeError):
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
        return hashlib.sha256(
            json.dumps([self.source, sorted((self.labels or {}).items())]).encode()
        ).hexdigest()


@dataclass(frozen=True)
class ScoringOptions:
    """How to score a source, whichever engine does it: images per onnxruntime call (None: the
    engine's default), the ground truth, the escaped relative paths to score (None: every file), a
    resume of an interrupted run, test-time augmentation, what to do with an image outside the
    training domain (``FOREIGN_POLICIES``), the device the model was loaded for, and a folder inside
    the source to leave out (the output folder)."""

    batch_size: int | None = None
    truth: GroundTruth = field(default_factory=GroundTruth)
    only: list[str] | None = None
    resume: bool = False
    tta: bool = False
    foreign: str = "flag"
    device: str = "auto"
    exclude: Path | None = None


@dataclass(frozen=True)
class ScoreResult:
    csv_path: Path
    n_files: int
    n_errors: int
    n_scored_now: int
    provider: str
    seconds: float
    predictions: pd.DataFrame
    settings: ScoringSettings
    already_complete: bool = False

    @property
    def images_per_second(self) -> float:
        return self.n_scored_now / self.seconds if self.seconds > 0 else float("nan")

    @classmethod
    def of(
        cls,
        csv_path: Path,
        predictions: pd.DataFrame,
        provider: str,
        settings: ScoringSettings,
        *,
        n_scored_now: int = 0,
        seconds: float = 0.0,
        already_complete: bool = False,
    ) -> ScoreResult:
        """The result of a run whose ``predictions`` (one row per file) are written."""
        n_errors = int((predictions["error"] != "").sum())
        return cls(
            csv_path,
            len(predictions),
            n_errors,
            n_scored_now,
            provider,
            seconds,
            predictions,
            settings,
            already_complete,
        )


@dataclass(frozen=True)
class Targets:
    """What to score: escaped row paths (the ``path`` column) and where each file is read from
    (a local path or a URI), in output order; the source as the settings name it, and each file's
    ``size:mtime_ns`` where the engine checks on resume that a file is unchanged (the local one)."""

    rels: list[str]
    locations: list[str]
    source: str = ""
    stamps: list[str] | None = None


@dataclass(frozen=True)
class Job:
    """One run once the shared steps are done: what an engine's own scoring needs."""

    model: OnnxClassifier
    out_csv: Path
    targets: Targets
    settings: ScoringSettings
    options: ScoringOptions = field(default_factory=ScoringOptions)
    progress: ProgressFn | None = None

    @property
    def truth(self) -> GroundTruth:
        return self.options.truth

    def tick(self, n_done: int) -> None:
        """Report ``n_done`` more files finished (kept ones included)."""
        if self.progress:
            self.progress(n_done, len(self.targets.rels))


@dataclass(frozen=True)
class Engine(ABC):
    """A scoring engine. Its dataclass fields are its options; ``score`` is the same call on each."""

    name: ClassVar[str] = ""
    native_logs: ClassVar[bool] = False  # native code writes to the process's stderr (Ray's core worker)

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The options this engine takes."""
        return tuple(f.name for f in fields(cls))

    def score(
        self,
        source: str | Path,
        model: OnnxClassifier,
        out_csv: str | Path,
        options: ScoringOptions | None = None,
        progress: ProgressFn | None = None,
    ) -> ScoreResult:
        """Score ``source`` (or just the escaped relative paths in ``options.only``) into ``out_csv``
        and its settings sidecar, as ``options`` say; ``progress`` hears of every finished file."""
        out_csv, options = Path(out_csv), options or ScoringOptions()
        targets = self._list(source, options.only, options.exclude)
        settings = self._settings(scoring_settings(model, options, targets.source), targets)
        if (
            options.resume
            and (complete := already_complete(out_csv, settings, len(targets.rels))) is not None
        ):
            return ScoreResult.of(out_csv, complete, model.provider, settings, already_complete=True)
        other_engine(out_csv, options.resume, ours=self.name)
        if model.guard is not None:
            import_test_in_background()  # the set-level test's library, ready when the run ends
        return self._score(Job(model, out_csv, targets, settings, options, progress))

    @abstractmethod
    def _list(self, source: str | Path, only: list[str] | None, exclude: Path | None) -> Targets:
        """The files to score (a ScoreInputError for a source this engine cannot read)."""

    def _settings(self, settings: ScoringSettings, targets: Targets) -> ScoringSettings:
        """The run's settings with this engine's entries."""
        return settings

    @abstractmethod
    def _score(self, job: Job) -> ScoreResult:
        """Keep the rows an interrupted run left (with ``job.options.resume``), score the others,
        ``finish``."""


def engine_class(name: str) -> type[Engine]:
    """The engine called ``name``, its module imported now (neither imports Ray at import)."""
    if name == "local":
        from cxr.infer.score import LocalEngine

        return LocalEngine
    if name == "ray":
        from cxr.infer.ray_engine import RayEngine

        return RayEngine
    raise EngineOptionError(f"unknown engine {name!r} (engines: {', '.join(ENGINES)})")


def make_engine(name: str, **options: str | int | float | None) -> Engine:
    """The engine ``name`` with ``options``; an option it does not take is an EngineOptionError."""
    chosen = engine_class(name)
    unknown = [key for key in options if key not in chosen.options()]
    if unknown:
        takes = ", ".join(chosen.options()) or "none"
        raise EngineOptionError(
            f"the {name} engine does not take {', '.join(map(repr, unknown))} (its options: {takes})"
        )
    return chosen(**options)


def given_options(**values: str | int | float | None) -> dict[str, str | int | float]:
    """The engine options a caller set: those neither None nor at the default of the engine that
    takes them (a command line passes every option, each with its default when not given)."""
    defaults = {f.name: f.default for name in ENGINES for f in fields(engine_class(name))}
    return {key: value for key, value in values.items() if value is not None and value != defaults.get(key)}


@dataclass(frozen=True)
class EngineChoice:
    """The engine a command line named and every engine option it passed (unset ones None or at
    their default): ``make`` gives the engine, refusing an option it does not take."""

    name: str = "local"
    workers: int | None = None
    address: str | None = None
    gpus_per_actor: float | None = None
    timeout: float | None = None

    def make(self) -> Engine:
        return make_engine(
            self.name,
            **given_options(
                workers=self.workers,
                address=self.address,
                gpus_per_actor=self.gpus_per_actor,
                timeout=self.timeout,
            ),
        )


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
        raise ScoreInputError(
            f"labels file {path} has labels {unknown} outside the model's classes {classes}"
        )
    conflicting = frame.groupby("path")["label"].nunique()
    conflicting = conflicting[conflicting > 1]
    if len(conflicting):
        raise ScoreInputError(
            f"labels file {path} gives {len(conflicting)} path(s) two different labels (first: "
            f"{conflicting.index[0]}); keep one label per path"
        )
    return GroundTruth(dict(zip(frame["path"], frame["label"])), {}, f"labels file {Path(path).name}")


def check_labels_match(truth: GroundTruth, rels: list[str], classes: list[str], source: str) -> int:
    """How many of ``rels`` the labels file labels; a ScoreInputError when it labels none of them."""
    if truth.labels is None or not rels:
        return len(rels)
    matched = sum(1 for rel in rels if truth.label_for(rel, classes))
    if matched == 0:
        example = next(iter(truth.labels))
        raise ScoreInputError(
            f"the {truth.source} labels none of the {len(rels)} files under {source} (its paths, "
            f"e.g. {example!r}, must be relative to that folder, or bare file names)"
        )
    return matched


def jpeg_draft_rule() -> str:
    """How large JPEGs are decoded (libjpeg DCT scaling to at least this many times the input size):
    part of the settings, so that a resume never mixes two rules."""
    from cxr.imaging import DRAFT_OVERSAMPLE

    return f"dct-scale covering >= {DRAFT_OVERSAMPLE:g}x input"


def scoring_settings(model: OnnxClassifier, options: ScoringOptions, source: str = "") -> ScoringSettings:
    """What a run of ``model`` on ``source`` with ``options`` records, before its engine adds its own."""
    info, contract, truth = model.info, model.info.contract, options.truth
    chosen = (
        hashlib.sha256("\n".join(options.only).encode("utf-8", "surrogateescape")).hexdigest()
        if options.only is not None
        else "whole folder"
    )
    execution = model.execution
    return ScoringSettings(
        source=source,
        model=info.path.name,
        model_sha256=info.sha256,
        tta=bool(options.tta),
        threshold=info.threshold,
        threshold_rule=contract.threshold_rule,
        classes=tuple(info.classes),
        input_size=info.input_size,
        resize_rule=info.resize_rule,
        jpeg_draft=jpeg_draft_rule(),
        precision=model.precision,
        labels_source=truth.source,
        labels_sha256=truth.sha256(),
        selection_sha256=chosen,
        foreign=options.foreign,
        guard=None
        if model.guard is None
        else GuardSettings(model.guard.method, model.guard.threshold, model.guard.false_flag_rate),
        calibration=None
        if contract.calibration is None
        else CalibrationSettings(contract.calibration.method, contract.calibration.a, contract.calibration.b),
        provider=execution.provider,
        provider_options=execution.provider_options,
        parallel_runs=execution.parallel_runs,
    )


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
        raise ScoreInputError(
            f"--resume: the interrupted run in {out_csv.parent} used --engine {theirs} "
            f"({left.name} is its unfinished work); resume it with --engine {theirs}, or rerun "
            "without --resume"
        )
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


def finished_rows(out_csv: Path) -> tuple[ScoringSettings | None, dict[str, dict[str, str]]]:
    """(settings, rows by path) of a finished predictions CSV, or (None, {}) without one."""
    record = ScoringRecord.read(out_csv)
    if record is None or not out_csv.is_file():
        return None, {}
    try:
        frame, _ = Predictions.read(out_csv)
    except PredictionsError:
        return None, {}
    return record.settings, {row["path"]: row for row in frame.to_dict("records")}


def kept_rows(
    before: ScoringSettings | None,
    rows: dict[str, dict[str, str]],
    settings: ScoringSettings,
    rel_set: set[str],
) -> dict[str, dict[str, str]]:
    """The rows an interrupted run left (both engines) that ``--resume`` keeps: none without its
    settings, a ScoreInputError when they differ from this run's, else those still to be scored."""
    if before is None:
        return {}
    differences = settings.differences(before)
    if differences:
        raise ScoreInputError(
            f"--resume: the interrupted run used other settings ({'; '.join(differences)}); "
            "rerun without --resume, or with the same settings"
        )
    return {rel: row for rel, row in rows.items() if rel in rel_set}


def already_complete(out_csv: Path, settings: ScoringSettings, n_files: int) -> pd.DataFrame | None:
    """The finished CSV when a resumed run has nothing left to do: same settings, and the same files
    (paths, sizes and times) as when it finished."""
    record = ScoringRecord.read(out_csv)
    if record is None or not out_csv.is_file() or settings.differences(record.settings):
        return None
    if record.settings.listing_sha256 != settings.listing_sha256:
        return None
    try:
        frame, _ = Predictions.read(out_csv)
    except PredictionsError:
        return None
    return frame if len(frame) == n_files else None


def model_label(model: OnnxClassifier, tta: bool) -> str:
    """The ``model`` column: the file name, with ``+tta`` when test-time augmentation was used."""
    return model.info.path.name + ("+tta" if tta else "")


def prediction_rows(
    model: OnnxClassifier,
    rels: list[str],
    probs: np.ndarray,
    domains: np.ndarray,
    errors: list[str],
    qcs: list[str],
    truth: GroundTruth,
    tta: bool,
    foreign: str = "flag",
) -> list[dict[str, str]]:
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
        rows.append(
            Predictions.row(
                rel,
                float(p) if keep else None,
                classes,
                info.threshold,
                true_label=truth.label_for(rel, classes),
                patient_id=truth.patient_for(rel),
                error=error,
                qc=qc,
                model=name,
                model_sha256=info.sha256,
                domain_score=None if error else float(domain),
            )
        )
    return rows


def write_predictions(
    rows: dict[str, dict[str, str]], out_csv: Path, rels: list[str], settings: ScoringSettings, guard=None
) -> pd.DataFrame:
    """The final CSV (one row per file, in ``rels`` order) and its settings sidecar, atomically;
    both engines end here. With the model's ``guard``, the set-level shift test joins the sidecar."""
    missing = [rel for rel in rels if rel not in rows]
    if missing:  # a bug, never a user's mistake: the partial rows stay for --resume
        raise RuntimeError(f"{len(missing)} of {len(rels)} files have no row (first: {missing[0]})")
    frame = pd.DataFrame([rows[rel] for rel in rels], columns=Predictions.columns(settings.positive_class))
    Predictions.write_csv(frame, out_csv)
    ScoringRecord(settings, counts_of(frame, guard)).write(out_csv)
    return frame


def counts_of(frame: pd.DataFrame, guard=None) -> ScoringCounts:
    """The counts of a finished predictions frame; with the model's ``guard``, the set-level shift test."""
    verdict = None
    if guard is not None:
        verdict = shift_test(
            pd.to_numeric(frame["domain_score"], errors="coerce").to_numpy(),
            guard.reference_scores,
            guard.threshold,
            guard.false_flag_rate,
        )
    return ScoringCounts(
        n_files=len(frame),
        n_errors=int((frame["error"] != "").sum()),
        n_qc_flagged=int((frame["qc"] != "").sum()),
        n_outside_domain=int(frame["qc"].str.contains("outside training domain", regex=False).sum()),
        guarded=guard is not None,
        shift=verdict,
    )


def finish(
    job: Job,
    rows: dict[str, dict[str, str]],
    n_scored_now: int,
    seconds: float,
    provider: str,
    settings: ScoringSettings | None = None,
) -> ScoreResult:
    """Write ``predictions.csv`` from ``rows`` with ``settings`` (default: the job's; an engine adds
    what it learnt while scoring) in the sidecar, and return the run's result: both engines end here."""
    settings = settings or job.settings
    frame = write_predictions(rows, job.out_csv, job.targets.rels, settings, job.model.guard)
    return ScoreResult.of(job.out_csv, frame, provider, settings, n_scored_now=n_scored_now, seconds=seconds)
