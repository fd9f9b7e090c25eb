"""``cxr robustness``: score a labelled set under the fixed, seeded perturbation suite.

The work is ``cxr.app.pipeline.run_robustness`` (the core's decoding and perturbations, the inference
stage's model, the report stage's robustness metrics); this command parses, calls and prints.
``cxr evaluate --with-robustness`` runs the same suite and can gate on it.

Exit codes: 0 done (and every --max-flip held); 1 a --max-flip limit was exceeded; 2 usage error;
4 the limits held, but some files were left out (missing, unreadable or unlabelled: each is named in
robustness.json).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cxr.app.errors import EXIT_EVAL_PARTIAL, EXIT_OK, EXIT_REGRESSED, Command
from cxr.app.events import Events, log_format_option
from cxr.app.options import (
    batch_size_option,
    device_option,
    model_option,
    quiet_option,
    workers_option,
)
from cxr.app.pipeline import LabelChoice, ModelChoice, RobustnessRequest, run_robustness

max_flip_option = click.option(
    "--max-flip",
    default="",
    help="Gate: the most a perturbation may flip labels of any true class, e.g. noise2=0.02,jpeg50=0.05.",
)
seed_option = click.option(
    "--robustness-seed",
    "robustness_seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the perturbations' noise.",
)


@click.command("robustness", cls=Command)
@model_option
@click.option(
    "--data",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder of images with class subfolders (or --labels / --manifest).",
)
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Use only the files of a split manifest (paths relative to --data); labels come from it.",
)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("robustness"),
    show_default=True,
    help="Folder for robustness.json, robustness.md and robustness.png.",
)
@max_flip_option
@seed_option
@batch_size_option
@device_option
@workers_option
@log_format_option
@quiet_option
def robustness(
    model_path,
    folder,
    labels_csv,
    manifest,
    split,
    out_dir,
    max_flip,
    robustness_seed,
    batch_size,
    device,
    workers,
    log_format,
    quiet,
) -> None:
    """ROC AUC, |dp| and label flips per class under noise, blur, resolution, JPEG, brightness,
    contrast, gamma and rotation (a fixed, seeded suite)."""
    from cxr.reports.robustness import robustness_rows

    events = Events(log_format, quiet, "cxr robustness")
    request = RobustnessRequest(
        folder=folder,
        model=ModelChoice(model_path, device),
        out_dir=out_dir,
        labels=LabelChoice(labels_csv, manifest, split),
        max_flip=max_flip,
        seed=robustness_seed,
        batch_size=batch_size,
        workers=workers,
    )
    result = run_robustness(request, events)
    report = result.report
    for row in robustness_rows(report.section)[1]:
        events.emit("row", "  ".join(row), always=True)
    for line in report.gate.messages if report.gate else ():
        events.emit("gate", line, always=True)
    events.emit("written", f"wrote {out_dir / 'robustness.json'}, robustness.md, robustness.png", always=True)
    if report.skipped_files:
        first = report.left_out[0]
        events.emit(
            "left_out",
            f"{report.skipped_files} of {report.n_files} files were left out of the suite "
            f"(first: {first.path}: {first.why}); see left_out in robustness.json",
            err=True,
            left_out=report.skipped_files,
        )
    if result.failures:
        events.emit(
            "failed",
            f"FAILED: {len(result.failures)} perturbation(s) flip more labels than allowed",
            err=True,
        )
        sys.exit(EXIT_REGRESSED)
    sys.exit(EXIT_EVAL_PARTIAL if report.skipped_files else EXIT_OK)
