"""``cxr robustness``: score a labelled set under the fixed, seeded perturbation suite.

Composes the core's decoding and perturbations, the inference stage's model and the report
stage's robustness metrics. ``cxr evaluate --robustness`` runs the same and can gate on it.

Exit codes: 0 done (and every --max-flip held); 1 a --max-flip limit was exceeded; 2 usage error;
4 the limits held, but some files were left out (missing, unreadable or unlabelled: each is named in
robustness.json).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from cxr.app.errors import EXIT_EVAL_PARTIAL, EXIT_OK, EXIT_REGRESSED, UsageError
from cxr.app.events import Events, log_format_option
from cxr.app.options import (
    batch_size_option,
    device_option,
    model_option,
    quiet_option,
    workers_option,
)

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


def labelled_images(
    folder: Path, model, only: list[str] | None, truth, workers: int | None
) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
    """(decoded model inputs, label indices, escaped relative paths, (path, why) of the files left
    out) of the labelled images; files that do not decode or carry no label are left out."""
    from cxr.imaging import decoded_stream
    from cxr.infer.score import effective_workers, list_targets

    classes = model.info.classes
    rels, paths = list_targets(folder, only, None)
    labelled = [(rel, path, truth.label_for(rel, classes)) for rel, path in zip(rels, paths)]
    left_out = [(rel, "no label") for rel, _, label in labelled if label not in classes]
    labelled = [item for item in labelled if item[2] in classes]
    workers = effective_workers(workers)
    images, labels, kept = [], [], []
    stream = decoded_stream([path for _, path, _ in labelled], model.info.input_size, workers)
    for (rel, _, label), (image, message) in zip(labelled, stream):
        if image is None:
            left_out.append((rel, message))
            continue
        images.append(image)
        labels.append(classes.index(label))
        kept.append(rel)
    size = model.info.input_size
    array = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return array, np.array(labels, dtype=int), kept, left_out


def run_robustness(
    model,
    folder: Path,
    only,
    truth,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    workers: int | None = None,
    events: Events | None = None,
) -> dict[str, Any]:
    """The robustness section of one model on one labelled set."""
    from cxr.infer.robustness import score_perturbed
    from cxr.perturb import SUITE
    from cxr.reports.robustness import robustness_metrics

    images, y, _, left_out = labelled_images(folder, model, only, truth, workers)
    if len(np.unique(y)) < 2:
        raise UsageError(f"the robustness suite needs labelled images of both classes under {folder}")
    progress = (lambda name: events.emit("perturbation", f"robustness: {name}", perturbation=name)) if events else None
    scores = score_perturbed(model, images, seed=seed, batch_size=batch_size or 64, progress=progress)
    result = robustness_metrics(
        y, scores, model.info.threshold, model.info.classes, {item.name: item.description for item in SUITE}
    )
    result.update(
        {
            "model": model.path.stem,
            "model_sha256": model.info.sha256,
            "seed": seed,
            "skipped_files": len(left_out),
            "left_out": [{"path": r, "why": w} for r, w in left_out[:100]],
            "n_files": len(images) + len(left_out),
            "execution": model.execution,
        }
    )
    return result


@click.command("robustness")
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
    from cxr.app.infer import ground_truth, load_model, out_dir_lock
    from cxr.artifacts import RobustnessReport
    from cxr.files import write_text_atomic
    from cxr.perturb import SUITE_NAMES
    from cxr.reports.robustness import (
        RobustnessSpecError,
        check_flips,
        parse_max_flip,
        plot_robustness,
        robustness_markdown,
        robustness_rows,
    )

    events = Events(log_format, quiet, "cxr robustness")
    if not folder.is_dir():
        raise UsageError(f"folder not found: {folder}")
    try:
        limits = parse_max_flip(max_flip, SUITE_NAMES)
    except RobustnessSpecError as exc:
        raise UsageError(str(exc)) from None
    model = load_model(model_path, device)
    only, truth = ground_truth(model, labels_csv, manifest, split)
    with out_dir_lock(out_dir):
        result = run_robustness(
            model, folder, only, truth, seed=robustness_seed, batch_size=batch_size, workers=workers, events=events
        )
        messages, failures = check_flips(result, limits)
        result["gate"] = {"limits": limits, "messages": messages, "passed": not failures}
        plot_robustness(result, out_dir / "robustness.png", title=f"{model.path.stem}: robustness")
        write_text_atomic(out_dir / "robustness.md", robustness_markdown(result))
        RobustnessReport.write(out_dir / RobustnessReport.FILE, result)
    for row in robustness_rows(result)[1]:
        events.emit("row", "  ".join(row), always=True)
    for line in messages:
        events.emit("gate", line, always=True)
    events.emit("written", f"wrote {out_dir / 'robustness.json'}, robustness.md, robustness.png", always=True)
    if result["skipped_files"]:
        first = result["left_out"][0]
        events.emit(
            "left_out",
            f"{result['skipped_files']} of {result['n_files']} files were left out of the suite "
            f"(first: {first['path']}: {first['why']}); see left_out in robustness.json",
            err=True,
            left_out=result["skipped_files"],
        )
    if failures:
        events.emit("failed", f"FAILED: {len(failures)} perturbation(s) flip more labels than allowed", err=True)
        sys.exit(EXIT_REGRESSED)
    sys.exit(EXIT_EVAL_PARTIAL if result["skipped_files"] else EXIT_OK)
