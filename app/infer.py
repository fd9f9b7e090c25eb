"""``cxr-infer SOURCE --model M`` (also ``cxr infer``), and the steps that ``cxr evaluate`` and
``cxr robustness`` share with it: load a model, find the ground truth, take the output
folder, score, and report when labels exist.

Exit codes: 0 every file scored; 1 finished, but some files got error rows; 2 usage error;
70 a bug.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from cxr.app.errors import EXIT_OK, EXIT_PARTIAL, ServiceUnavailable, UsageError
from cxr.app.events import Events, log_format_option
from cxr.app.options import (
    batch_size_option,
    device_option,
    engine_options,
    foreign_option,
    model_option,
    n_boot_option,
    precision_option,
    quiet_option,
    workers_option,
)

LOCK_NAME = ".cxr.lock"


def load_model(model_path: str, device: str, precision: str = "fp32"):
    from cxr.infer.model import ModelLoadError, OnnxClassifier, ProviderError

    try:
        return OnnxClassifier(model_path, device=device, precision=precision)
    except (ModelLoadError, ProviderError) as exc:
        raise UsageError(str(exc)) from None


def ground_truth(model, labels_csv: Path | None, manifest: Path | None, split: str):
    """(escaped relative paths to score, or None for the whole folder; GroundTruth)."""
    from cxr.data import DataPrepError, manifest_split
    from cxr.infer.score import GroundTruth, ScoreInputError, read_labels_csv

    if labels_csv is not None and manifest is not None:
        raise UsageError("give --labels or --manifest, not both")
    try:
        if manifest is not None:
            only, labels, patients = manifest_split(manifest, split, model.info.classes)
            return only, GroundTruth(labels, patients, f"manifest {manifest.name} split {split}")
        return None, (read_labels_csv(labels_csv, model.info.classes) if labels_csv else GroundTruth())
    except (ScoreInputError, DataPrepError) as exc:
        raise UsageError(str(exc)) from None


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it is writable, before any work is done."""
    import tempfile

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder")
    from cxr.imaging import OUTPUT_MARKERS

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
        (out_dir / OUTPUT_MARKERS[0]).touch()  # later runs over a folder that holds this one skip it
    except OSError as exc:
        raise UsageError(f"--out {out_dir} is not writable: {exc.strerror or exc}") from None


@contextlib.contextmanager
def out_dir_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``OUT/.cxr.lock`` (filelock: an OS lock, released if the process dies) for the run."""
    from filelock import FileLock, Timeout

    prepare_out_dir(out_dir)
    lock = FileLock(str(out_dir / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UsageError(
            f"another cxr run is writing to {out_dir} (it holds {out_dir / LOCK_NAME}); "
            "wait for it to finish or choose another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def check_source(source: str, engine: str) -> None:
    """The local engine scores a folder; the ray engine also a CSV list of paths or a URI."""
    from cxr.infer.ray_engine import is_path_list, is_uri  # no Ray import: the engine imports Ray lazily

    if engine == "ray" and (is_uri(source) or is_path_list(source)):
        return
    if not Path(source).is_dir():
        hint = "" if engine == "ray" else " (a CSV list of paths or a URI needs --engine ray)"
        raise UsageError(f"folder not found: {source}{hint}")


def check_labels(folder: Path, only, truth, model, out_dir: Path, events: Events) -> None:
    """Before scoring: a labels file that labels none of the files is a usage error; one that labels
    only some of them is said."""
    from cxr.infer.score import ScoreInputError, check_labels_match, list_targets

    if truth.labels is None or not folder.is_dir():
        return
    rels, _ = list_targets(folder, only, out_dir if inside(out_dir, folder) else None)
    try:
        matched = check_labels_match(truth, rels, model.info.classes, str(folder))
    except ScoreInputError as exc:
        raise UsageError(str(exc)) from None
    if matched < len(rels):
        events.emit(
            "labels",
            f"the {truth.source} labels {matched} of the {len(rels)} files; the others are scored without a label",
            err=True,
            labelled=matched,
            files=len(rels),
        )


def check_out_dir(out_dir: Path, folder: Path) -> None:
    """The output folder may sit inside the scored folder (it is skipped), but not be that folder."""
    if folder.is_dir() and out_dir.resolve() == folder.resolve():
        raise UsageError(
            f"--out {out_dir} is the scored folder itself: its figures would be scored by the next "
            "run; choose a folder inside or beside it (e.g. --out {}/cxr_out)".format(out_dir)
        )


def inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def score(
    folder: Path,
    model,
    out_dir: Path,
    events: Events,
    *,
    engine: str = "local",
    source: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    gpus_per_actor: float | None = None,
    ray_timeout: float | None = None,
    **run: Any,
):
    """Score with the engine named ``engine`` and the engine options that were set (one it does not
    take is a usage error, never dropped); the same predictions contract either way. ``source``: the
    SOURCE as given (a folder; for the ray engine also a CSV list or a URI), default ``folder``;
    ``run``: the rest of ``Engine.score``'s arguments (batch size, labels, resume, device, ...)."""
    from cxr.infer.engine import RunInterrupted, ScoreInputError, given_options, make_engine
    from cxr.infer.model import ModelOutputError

    exclude = out_dir if inside(out_dir, folder) else None
    options = given_options(workers=workers, address=ray_address, gpus_per_actor=gpus_per_actor, timeout=ray_timeout)
    try:
        chosen = make_engine(engine, **options)
        if chosen.native_logs:
            events.native_stderr_as_json(chosen.name)
        return chosen.score(
            source or str(folder), model, out_dir / "predictions.csv", progress=events.progress, exclude=exclude, **run
        )
    except (ScoreInputError, ModelOutputError) as exc:
        raise UsageError(str(exc)) from None
    except RunInterrupted as exc:
        raise ServiceUnavailable(str(exc)) from None
    finally:
        events.close()


def domain_summary(result, model, events: Events) -> dict[str, Any] | None:
    """Print how many images were flagged and the set-level shift verdict; return the verdict."""
    from cxr.artifacts import Predictions

    settings = Predictions.read_settings(result.csv_path) or {}
    flagged = int(result.predictions["qc"].str.contains("outside training domain", regex=False).sum())
    if model.guard is None:
        events.emit(
            "domain",
            "domain guard: this model has none (re-export it with `cxr export` to add one); "
            "images unlike the training data are not flagged",
            err=True,
        )
        return None
    scored = int((result.predictions["domain_score"] != "").sum())
    events.emit(
        "domain",
        f"domain guard: {flagged} of {scored} images outside the training domain "
        f"(threshold {model.guard.threshold:.2f}; see the 'qc' column)",
        always=True,
        flagged=flagged,
        scored=scored,
    )
    shift = settings.get("shift")
    if shift:
        events.emit(
            "shift",
            shift["verdict"],
            always=True,
            err=bool(shift["shifted"]),
            **{k: shift[k] for k in ("p_value", "statistic", "n_images", "shifted")},
        )
    else:
        from cxr.shift import NOT_TESTED

        events.emit("shift", NOT_TESTED, always=True)
    return shift


def no_labels_reason(model, folder: Path) -> str:
    """Why a run found no ground truth, in one clause."""
    classes = ", ".join(model.info.classes) if model is not None else "the model's classes"
    return (
        f"no folder under {folder} is named after a class ({classes}, in any case) and no --labels or "
        "--manifest was given"
    )


def write_report(
    result,
    folder: Path,
    out_dir: Path,
    full: bool,
    n_boot: int = 1000,
    model=None,
    events: Events | None = None,
    **extra: Any,
) -> dict | None:
    """The reports stage on these predictions, when they carry ground truth."""
    from cxr.reports.summary import ReportInputError, summarize, summarize_unlabelled

    cam_model = model if model is not None and model.has_cam else None
    images_root = folder if folder.is_dir() else None  # a CSV list or a URI has no image folder
    if not (result.predictions["true_label"] != "").any():
        if events is not None:
            events.emit(
                "labels", f"no labels: {no_labels_reason(model, folder)}; the report shows the scores only", err=True
            )
        if not full:
            return None
        summarize_unlabelled(result.csv_path, out_dir, images_root=images_root, cam_model=cam_model)
        return None
    try:
        return summarize(
            [result.csv_path],
            out_dir,
            images_root=images_root,
            with_figures=full,
            n_boot=n_boot,
            cam_model=cam_model,
            progress=(lambda line: events.emit("report", line)) if events else None,
            **extra,
        )
    except ReportInputError as exc:
        if events is not None:
            events.emit("no_report", f"no report: {exc}", err=True)
        return None


@click.command("infer")
@click.argument("source", metavar="SOURCE")
@model_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("cxr_out"),
    show_default=True,
    help="Folder for predictions.csv and the report.",
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Ground truth CSV (path,label); default: parent folders named after the model's classes.",
)
@batch_size_option
@device_option
@precision_option
@workers_option
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Score only the files of a split manifest (paths relative to SOURCE); labels come from it.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test"]),
    default="test",
    show_default=True,
    help="With --manifest: which split to score.",
)
@click.option("--tta", is_flag=True, help="Test-time augmentation: average over flips and small shifts (6x cost).")
@foreign_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run with the same settings; files already "
    "scored are kept. A finished run is left as it is.",
)
@click.option("--no-report", is_flag=True, help="With ground truth, write only metrics.json (no figures/HTML).")
@n_boot_option
@engine_options
@log_format_option
@quiet_option
def infer(
    source: str,
    model_path: str,
    out_dir: Path,
    labels_csv: Path | None,
    batch_size: int | None,
    device: str,
    precision: str,
    workers: int | None,
    manifest: Path | None,
    split: str,
    tta: bool,
    foreign: str,
    resume: bool,
    no_report: bool,
    n_boot: int,
    engine: str,
    ray_address: str | None,
    ray_timeout: float,
    gpus_per_actor: float | None,
    log_format: str,
    quiet: bool,
) -> None:
    """Score every image under the folder SOURCE (recursively) with an exported ONNX model. With
    --engine ray, SOURCE may also be a CSV list of paths (column 'path') or a URI (s3://, gs://, ...)."""
    events = Events(log_format, quiet, "cxr-infer")
    check_source(source, engine)
    folder = Path(source)
    check_out_dir(out_dir, folder)
    model = load_model(model_path, device, precision)
    events.emit(
        "model",
        f"provider: {model.provider} ({model.precision}) | model {model.path.name} "
        f"({model.info.sha256[:12]}), threshold {model.info.threshold:g}, classes {model.info.classes}",
        model=model.path.name,
        model_sha256=model.info.sha256,
        **model.execution,
    )
    only, truth = ground_truth(model, labels_csv, manifest, split)
    check_labels(folder, only, truth, model, out_dir, events)
    with out_dir_lock(out_dir):
        result = score(
            folder,
            model,
            out_dir,
            events,
            batch_size=batch_size,
            workers=workers,
            truth=truth,
            resume=resume,
            only=only,
            tta=tta,
            engine=engine,
            source=source,
            ray_address=ray_address,
            gpus_per_actor=gpus_per_actor,
            device=device,
            foreign=foreign,
            ray_timeout=ray_timeout,
        )
        report = write_report(result, folder, out_dir, full=not no_report, n_boot=n_boot, model=model, events=events)
    if result.already_complete:
        events.emit(
            "complete",
            f"{result.csv_path} is already complete with these settings ({result.n_files} files); nothing scored",
            always=True,
        )
    prob = result.predictions[f"p_{model.info.positive_class}"]
    skipped = int(((result.predictions["error"] == "") & (prob == "")).sum())
    left = f", {skipped} left unscored: outside the training domain (--foreign skip)" if skipped else ""
    events.emit(
        "scored",
        f"scored {result.n_files - result.n_errors - skipped}/{result.n_files} files{left} "
        f"({result.images_per_second:.1f} img/s) -> {result.csv_path}",
        always=True,
        files=result.n_files,
        errors=result.n_errors,
        skipped=skipped,
        images_per_second=result.images_per_second,
    )
    domain_summary(result, model, events)
    if report is not None:
        from cxr.artifacts import MetricsReport

        m = MetricsReport.headline(report)
        events.emit(
            "metrics",
            f"metrics (threshold {model.info.threshold:g}): accuracy {m['accuracy']:.3f}, "
            f"recall {m['recall']:.3f}, specificity {m['specificity']:.3f}, ROC AUC "
            f"{m['roc_auc']:.3f} -> {out_dir / ('metrics.json' if no_report else 'report.html')}",
            always=True,
            metrics=m,
        )
    if result.n_errors:
        events.emit(
            "errors",
            f"{result.n_errors} file(s) could not be scored; see the 'error' column",
            err=True,
            errors=result.n_errors,
        )
        sys.exit(EXIT_PARTIAL)
    sys.exit(EXIT_OK)
