"""``cxr-infer SOURCE --model M`` (also ``cxr infer``): score every image under SOURCE with an exported
model and, where labels exist, write the report. The work is ``cxr.app.pipeline.run_inference``; this
command parses, calls and prints.

Exit codes: 0 every file scored; 1 finished, but some files got error rows; 2 usage error;
70 a bug.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cxr.app.errors import EXIT_OK, EXIT_PARTIAL, Command
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
from cxr.app.pipeline import (  # noqa: F401 - load_model: cxr report's
    InferenceRequest,
    InferenceResult,
    LabelChoice,
    ModelChoice,
    load_model,
    run_inference,
    say_domain,
)
from cxr.infer.engine import EngineChoice, ScoringOptions


@click.command("infer", cls=Command)
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
@click.option(
    "--tta", is_flag=True, help="Test-time augmentation: average over flips and small shifts (6x cost)."
)
@foreign_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run with the same settings; files already "
    "scored are kept. A finished run is left as it is.",
)
@click.option(
    "--no-report", is_flag=True, help="With ground truth, write only metrics.json (no figures/HTML)."
)
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
    request = InferenceRequest(
        source=source,
        model=ModelChoice(model_path, device, precision),
        out_dir=out_dir,
        labels=LabelChoice(labels_csv, manifest, split),
        scoring=ScoringOptions(batch_size=batch_size, resume=resume, tta=tta, foreign=foreign),
        engine=EngineChoice(engine, workers, ray_address, gpus_per_actor, ray_timeout),
        full_report=not no_report,
        n_boot=n_boot,
    )
    result = run_inference(request, events)
    say_result(result, out_dir, no_report, events)
    sys.exit(EXIT_PARTIAL if result.scored.n_errors else EXIT_OK)


def say_result(result: InferenceResult, out_dir: Path, no_report: bool, events: Events) -> None:
    """What a run did: already complete, files scored, the domain guard, the metrics, the errors."""
    scored, model = result.scored, result.model
    if scored.already_complete:
        events.emit(
            "complete",
            f"{scored.csv_path} is already complete with these settings ({scored.n_files} files); "
            "nothing scored",
            always=True,
        )
    skipped = result.n_unscored_foreign
    left = f", {skipped} left unscored: outside the training domain (--foreign skip)" if skipped else ""
    events.emit(
        "scored",
        f"scored {scored.n_files - scored.n_errors - skipped}/{scored.n_files} files{left} "
        f"({scored.images_per_second:.1f} img/s) -> {scored.csv_path}",
        always=True,
        files=scored.n_files,
        errors=scored.n_errors,
        skipped=skipped,
        images_per_second=scored.images_per_second,
    )
    say_domain(scored, model, events)
    if result.metrics is not None:
        m = result.metrics.headline()
        events.emit(
            "metrics",
            f"metrics (threshold {model.info.threshold:g}): accuracy {m['accuracy']:.3f}, "
            f"recall {m['recall']:.3f}, specificity {m['specificity']:.3f}, ROC AUC "
            f"{m['roc_auc']:.3f} -> {out_dir / ('metrics.json' if no_report else 'report.html')}",
            always=True,
            metrics=m,
        )
    if scored.n_errors:
        events.emit(
            "errors",
            f"{scored.n_errors} file(s) could not be scored; see the 'error' column",
            err=True,
            errors=scored.n_errors,
        )
