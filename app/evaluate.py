"""``cxr evaluate``: the scheduled evaluation. Scores a labelled folder (inference stage), writes
the report (report stage), optionally runs the robustness suite, gates on a baseline, appends
to the evaluation history and writes Prometheus metrics for a node_exporter textfile collector.

Everything a run needs is checked before anything is scored: the gate spec, the baseline
(every gated metric a finite number), the history file, the model and the output folder.

Exit codes: 0 passed; 1 a gated metric or robustness limit regressed; 2 usage error;
3 the data differs from the baseline's (without --allow-new-data); 4 the gate passed but
some files could not be scored; 70 a bug.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from cxr.app.errors import (
    EXIT_DATA_CHANGED,
    EXIT_EVAL_PARTIAL,
    EXIT_OK,
    EXIT_REGRESSED,
    UsageError,
)
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
from cxr.app.robustness import max_flip_option
from cxr.app.robustness import seed_option as robustness_seed_option

VERDICT_EXIT = {
    "pass": EXIT_OK,
    "not_compared": EXIT_OK,
    "regression": EXIT_REGRESSED,
    "data_changed": EXIT_DATA_CHANGED,
    "partial": EXIT_EVAL_PARTIAL,
}


def write_prometheus(
    path: Path,
    *,
    verdict: str,
    report: dict[str, Any],
    limits: dict[str, float],
    baseline: dict[str, Any] | None,
    scored: int,
    failed: int,
    seconds: float,
    model_sha256: str,
    execution: dict[str, Any],
    robustness: dict[str, Any] | None,
    shift: dict[str, Any] | None = None,
    outside_domain: int | None = None,
) -> None:
    """Prometheus text format, written atomically (``write_to_textfile``). The last-success
    timestamp is set on success and carried over from the previous file otherwise."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    from cxr.artifacts import MetricsReport

    registry = CollectorRegistry()
    prefix = "cxr_evaluate"
    verdicts = Gauge(f"{prefix}_verdict", "1 for this run's verdict, 0 for the others", ["verdict"], registry=registry)
    for name in VERDICT_EXIT:
        verdicts.labels(name).set(int(name == verdict))
    Gauge(
        f"{prefix}_passed",
        "1 if the evaluation passed a gate that compared something and every file was scored",
        registry=registry,
    ).set(int(verdict == "pass"))
    Gauge(
        f"{prefix}_compared",
        "1 if anything was gated (a baseline, robustness limits or a shift limit)",
        registry=registry,
    ).set(int(verdict != "not_compared"))
    metric = Gauge(f"{prefix}_metric", "headline metric at the model's threshold", ["metric"], registry=registry)
    for name, value in MetricsReport.headline(report).items():
        metric.labels(name).set(value)
    if baseline is not None:
        allowed = Gauge(f"{prefix}_metric_allowed_drop", "allowed drop per gated metric", ["metric"], registry=registry)
        base = Gauge(f"{prefix}_metric_baseline", "baseline value per gated metric", ["metric"], registry=registry)
        for name, limit in limits.items():
            allowed.labels(name).set(limit)
            base.labels(name).set(baseline[name])
    if robustness is not None:
        flips = Gauge(
            f"{prefix}_robustness_max_flip_rate",
            "worst class flip rate per perturbation",
            ["perturbation"],
            registry=registry,
        )
        for name, row in robustness["perturbations"].items():
            flips.labels(name).set(row["max_flip_rate"])
    if shift is not None:
        Gauge(
            f"{prefix}_shift_detected",
            "1 if the set-level test finds these images unlike the training data",
            registry=registry,
        ).set(int(shift["shifted"]))
        Gauge(
            f"{prefix}_shift_statistic",
            "KS distance between this run's domain scores and the training reference",
            registry=registry,
        ).set(shift["statistic"])
        Gauge(f"{prefix}_shift_p_value", "p-value of the set-level shift test", registry=registry).set(shift["p_value"])
    if outside_domain is not None:
        Gauge(f"{prefix}_images_outside_domain", "images the domain guard flagged", registry=registry).set(
            outside_domain
        )
    Gauge(f"{prefix}_images_scored", "images scored", registry=registry).set(scored)
    Gauge(f"{prefix}_images_failed", "files that could not be scored", registry=registry).set(failed)
    Gauge(f"{prefix}_duration_seconds", "wall time of the evaluation", registry=registry).set(seconds)
    Gauge(f"{prefix}_info", "model and execution", ["model_sha256", "provider", "precision"], registry=registry).labels(
        model_sha256, execution.get("provider", ""), execution.get("precision", "")
    ).set(1)
    last = time.time() if verdict == "pass" else _previous_success(path)
    if last is not None:
        Gauge(
            f"{prefix}_last_success_timestamp_seconds", "Unix time of the last passing evaluation", registry=registry
        ).set(last)
    write_to_textfile(str(path), registry)


def _previous_success(path: Path) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
            if family.name == "cxr_evaluate_last_success_timestamp_seconds":
                return float(family.samples[0].value)
    except (OSError, ValueError, IndexError):
        return None
    return None


DEFAULT_HISTORY = Path("evaluations/history.csv")


def _preflight(
    folder: Path,
    max_drop: str,
    max_flip: str,
    history_path: Path,
    metrics_file: Path | None,
    write_baseline: Path | None = None,
) -> tuple[dict, dict]:
    """Everything that can be checked before the model is loaded: the folder, the gate specs and
    the output files (their folders must exist and be writable)."""
    from cxr.perturb import SUITE_NAMES
    from cxr.reports.evaluate import (
        GateSpecError,
        check_history_file,
        check_writable_file,
        parse_max_drop,
    )
    from cxr.reports.robustness import RobustnessSpecError, parse_max_flip

    if not folder.is_dir():
        raise UsageError(f"folder not found: {folder}")
    if history_path == DEFAULT_HISTORY:
        DEFAULT_HISTORY.parent.mkdir(parents=True, exist_ok=True)
    try:
        limits = parse_max_drop(max_drop)
        flip_limits = parse_max_flip(max_flip, SUITE_NAMES)
        check_history_file(history_path)
        if metrics_file is not None:
            check_writable_file(metrics_file, "--metrics-file")
        if write_baseline is not None:
            check_writable_file(write_baseline, "--write-baseline")
    except (GateSpecError, RobustnessSpecError) as exc:
        raise UsageError(str(exc)) from None
    return limits, flip_limits


def _baseline(path: Path | None, limits: dict, model, name: str | None) -> dict | None:
    """The baseline's values for this model (chosen by --baseline-model or the model file's sha256)."""
    from cxr.reports.evaluate import GateSpecError, load_baseline

    if path is None:
        if name is not None:
            raise UsageError("--baseline-model needs --baseline")
        return None
    try:
        return load_baseline(path, limits, model.info.sha256, name)
    except GateSpecError as exc:
        raise UsageError(str(exc)) from None


def _finite(ctx, param, value):  # noqa: ANN001 - click's callback signature
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number")
    return value


def save_baseline(path: Path | None, report: dict, verdict: str, events: Events) -> None:
    """``--write-baseline``: this run's metrics.json, for later runs' --baseline; never from a run
    whose gate failed or that lost files."""
    from cxr.artifacts import MetricsReport

    if path is None:
        return
    if verdict not in ("pass", "not_compared"):
        events.emit("baseline", f"baseline not written to {path}: this evaluation's verdict is {verdict}", err=True)
        return
    try:
        MetricsReport.write(path, report)
    except OSError as exc:
        raise UsageError(f"--write-baseline {path}: cannot write it ({exc.strerror or exc})") from None
    events.emit("baseline", f"baseline written: {path} (gate later runs with --baseline {path})", always=True)


@click.command()
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
    from cxr.app.infer import (
        check_out_dir,
        domain_summary,
        ground_truth,
        inside,
        load_model,
        out_dir_lock,
        score,
        write_report,
    )
    from cxr.app.robustness import run_robustness
    from cxr.artifacts import Predictions
    from cxr.reports.evaluate import (
        EvaluationRun,
        GateResult,
        add_robustness_failures,
        check_shift,
        finish_evaluation,
        folder_data_sha256,
    )
    from cxr.reports.render import write_reports
    from cxr.reports.robustness import check_flips

    started = time.time()
    events = Events(log_format, quiet, "cxr evaluate")
    limits, flip_limits = _preflight(folder, max_drop, max_flip, history_path, metrics_file, write_baseline)
    check_out_dir(out_dir, folder)
    model = load_model(model_path, device, precision)
    baseline_values = _baseline(baseline, limits, model, baseline_model)
    if max_shift is not None and model.guard is None:
        raise UsageError(
            f"--max-shift needs a model with a domain guard; {model.path.name} has none "
            "(re-export it with `cxr export --from-onnx`)"
        )
    only, truth = ground_truth(model, labels_csv, manifest, split)
    with out_dir_lock(out_dir):
        local_workers = {} if engine == "ray" else {"workers": workers}  # with Ray, --workers is the suite's alone
        result = score(
            folder,
            model,
            out_dir,
            events,
            batch_size=batch_size,
            **local_workers,
            truth=truth,
            only=only,
            engine=engine,
            ray_address=ray_address,
            gpus_per_actor=gpus_per_actor,
            device=device,
            ray_timeout=ray_timeout,
        )
        domain_summary(result, model, events)
        section, gate = None, GateResult()
        if with_robustness or flip_limits:
            section = run_robustness(
                model, folder, only, truth, seed=robustness_seed, batch_size=batch_size, workers=workers, events=events
            )
            add_robustness_failures(gate, *check_flips(section, flip_limits))
            gate.compared = gate.compared or bool(flip_limits)
        shift = (Predictions.read_settings(result.csv_path) or {}).get("shift")
        if max_shift is not None:
            add_robustness_failures(gate, *check_shift(shift, max_shift))
            gate.compared = True
        report = write_report(
            result,
            folder,
            out_dir,
            full=True,
            n_boot=n_boot,
            model=model,
            events=events,
            robustness={model.path.stem: section} if section else None,
        )
        if report is None:
            raise UsageError(f"no labelled images of both classes under {folder}; nothing to evaluate")
        data_sha = folder_data_sha256(folder, only, exclude=out_dir if inside(out_dir, folder) else None)
        gate.compared = gate.compared or baseline_values is not None
        run = EvaluationRun(
            model_sha256=model.info.sha256,
            data_sha256=data_sha,
            history_path=history_path,
            baseline_metrics=baseline_values,
            baseline_path=baseline,
            limits=limits,
            allow_new_data=allow_new_data,
            execution=dict(model.execution),
            n_files=result.n_files,
            n_errors=result.n_errors,
        )
        gate = finish_evaluation(report, out_dir, run, gate)
        write_reports(report, out_dir)  # again, now that metrics.json holds the gate's verdict
    verdict = gate.verdict
    save_baseline(write_baseline, report, verdict, events)
    if metrics_file is not None:
        write_prometheus(
            metrics_file,
            verdict=verdict,
            report=report,
            limits=limits,
            baseline=baseline_values,
            scored=result.n_files - result.n_errors,
            failed=result.n_errors,
            seconds=time.time() - started,
            model_sha256=model.info.sha256,
            execution=model.execution,
            robustness=section,
            shift=shift,
            outside_domain=None
            if model.guard is None
            else int(result.predictions["qc"].str.contains("outside training domain", regex=False).sum()),
        )
    for line in gate.messages:
        events.emit("gate", line, always=True)
    for line in gate.regressions:
        events.emit("failure", f"failed: {line}", err=True)
    events.emit("written", f"report: {out_dir / 'report.html'}; history: {history_path}", always=True)
    messages = {
        "data_changed": "FAILED: the evaluation data changed",
        "regression": f"FAILED: {len(gate.regressions)} gate(s) failed (listed above)",
        "partial": f"PARTIAL: the gate held, but {result.n_errors} file(s) could not be scored (exit 4)",
    }
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
    sys.exit(VERDICT_EXIT[verdict])
