"""``cxr evaluate``: the scheduled evaluation. Scores a labelled folder (inference stage), writes
the report (report stage), optionally runs the robustness suite, gates on a baseline, appends
to the evaluation history and writes Prometheus metrics for a node_exporter textfile collector.

Everything a run needs is checked before anything is scored: the gate spec, the baseline
(every gated metric a finite number), the history file, the model and the output folder. The work
is ``cxr.app.pipeline.run_evaluation``; this command parses, calls and prints.

Exit codes: 0 passed; 1 a gated metric or robustness limit regressed; 2 usage error;
3 the data differs from the baseline's (without --allow-new-data); 4 the gate passed but
some files could not be scored; 70 a bug.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cxr.app.errors import EXIT_DATA_CHANGED, EXIT_EVAL_PARTIAL, EXIT_OK, EXIT_REGRESSED, Command
from cxr.app.events import Events, log_format_option
from cxr.app.options import (
    batch_size_option,
    device_option,
    engine_options,
    model_option,
    n_boot_option,
    precision_option,
    quiet_option,
    workers_option,
)
from cxr.app.pipeline import (
    EvaluationRequest,
    EvaluationResult,
    GateChoice,
    LabelChoice,
    ModelChoice,
    run_evaluation,
)
from cxr.app.robustness import max_flip_option
from cxr.app.robustness import seed_option as robustness_seed_option
from cxr.infer.engine import EngineChoice, ScoringOptions

VERDICT_EXIT = {
    "pass": EXIT_OK,
    "not_compared": EXIT_OK,
    "regression": EXIT_REGRESSED,
    "data_changed": EXIT_DATA_CHANGED,
    "partial": EXIT_EVAL_PARTIAL,
}


def _finite(ctx, param, value):  # noqa: ANN001 - click's callback signature
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number")
    return value


@click.command(cls=Command)
@model_option
@click.option(
    "--data",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder of images with class subfolders (or --labels).",
)
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="metrics.json of an earlier evaluation to gate against.",
)
@click.option(
    "--baseline-model",
    default=None,
    metavar="NAME",
    help="The entry of a --baseline metrics.json that holds several models to compare with [default: the "
    "one scored with this model file, by sha256].",
)
@click.option(
    "--max-drop",
    default="roc_auc=0.01,recall=0.02",
    show_default=True,
    help="Allowed drop per metric (loss, brier, ece: allowed rise). Must gate at least one metric.",
)
@click.option(
    "--with-robustness",
    "with_robustness",
    is_flag=True,
    help="Also run the robustness suite (in the report and metrics.json); implied by --max-flip.",
)
@max_flip_option
@robustness_seed_option
@click.option(
    "--max-shift",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    callback=_finite,
    help="Fail when the set-level test finds these images unlike the training data (p < 0.01) by more "
    "than this KS distance (0 = any detected shift fails; needs a model with a domain guard).",
)
@click.option("--allow-new-data", is_flag=True, help="Do not fail when the data differs from the baseline's.")
@click.option(
    "--write-baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also save this evaluation's metrics.json here, to gate later runs against with --baseline "
    "(not written when a gate fails or a file could not be scored).",
)
@click.option(
    "--history",
    "history_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("evaluations/history.csv"),
    show_default=True,
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("evaluations/latest"),
    show_default=True,
)
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write Prometheus text-format metrics here (e.g. node_exporter's textfile directory).",
)
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Evaluate only the files of a split manifest (paths relative to --data); labels come from it.",
)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@batch_size_option
@device_option
@precision_option
@workers_option
@n_boot_option
@engine_options
@log_format_option
@quiet_option
def evaluate(
    model_path,
    folder,
    baseline,
    baseline_model,
    max_drop,
    with_robustness,
    max_flip,
    robustness_seed,
    max_shift,
    allow_new_data,
    write_baseline,
    history_path,
    out_dir,
    metrics_file,
    labels_csv,
    manifest,
    split,
    batch_size,
    device,
    precision,
    workers,
    n_boot,
    engine,
    ray_address,
    ray_timeout,
    gpus_per_actor,
    log_format,
    quiet,
) -> None:
    """Score a labelled folder, write the report, append to the history and gate on regressions."""
    events = Events(log_format, quiet, "cxr evaluate")
    request = EvaluationRequest(
        folder=folder,
        model=ModelChoice(model_path, device, precision),
        out_dir=out_dir,
        history_path=history_path,
        labels=LabelChoice(labels_csv, manifest, split),
        gate=GateChoice(max_drop, baseline, baseline_model, allow_new_data, max_flip, max_shift),
        with_robustness=with_robustness,
        robustness_seed=robustness_seed,
        scoring=ScoringOptions(batch_size=batch_size),
        # with Ray, --workers is the robustness suite's alone
        engine=EngineChoice(
            engine, None if engine == "ray" else workers, ray_address, gpus_per_actor, ray_timeout
        ),
        workers=workers,
        metrics_file=metrics_file,
        write_baseline=write_baseline,
        n_boot=n_boot,
    )
    result = run_evaluation(request, events)
    say_verdict(result, out_dir, history_path, events)
    sys.exit(VERDICT_EXIT[result.verdict])


def say_verdict(result: EvaluationResult, out_dir: Path, history_path: Path, events: Events) -> None:
    """The gate's lines, where the report went, and the verdict."""
    for line in result.gate_messages:
        events.emit("gate", line, always=True)
    for line in result.regressions:
        events.emit("failure", f"failed: {line}", err=True)
    events.emit("written", f"report: {out_dir / 'report.html'}; history: {history_path}", always=True)
    messages = {
        "data_changed": "FAILED: the evaluation data changed",
        "regression": f"FAILED: {len(result.regressions)} gate(s) failed (listed above)",
        "partial": (
            f"PARTIAL: the gate held, but {result.scored.n_errors} file(s) could not be scored (exit 4)"
        ),
    }
    verdict = result.verdict
    if verdict in messages:
        events.emit("verdict", messages[verdict], err=True, verdict=verdict)
    elif verdict == "not_compared":
        events.emit(
            "verdict",
            "no baseline: nothing compared (give --baseline with an earlier metrics.json, "
            "--max-flip or --max-shift to gate)",
            always=True,
            verdict=verdict,
        )
    else:
        events.emit("verdict", "PASSED", always=True, verdict=verdict)
