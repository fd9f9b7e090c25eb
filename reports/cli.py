"""Thin CLI of the report stage: ``cxr report`` and ``cxr evaluate``.

``cxr evaluate`` exit codes: 0 passed; 1 a metric dropped more than allowed (or files
failed to score); 2 usage error; 3 the data changed without --allow-new-data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cxr.options import (EXIT_PARTIAL, batch_size_option, device_option, fail_usage, model_option, n_boot_option,
                         quiet_option, target_recall_option, workers_option)

EXIT_DATA_CHANGED = 3


@click.command()
@click.option("--preds", "prediction_files", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              required=True, help="cxr-infer predictions CSV; repeat to compare models.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("report"),
              show_default=True)
@click.option("--history", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="A run's history.csv for the training curves; repeat for several runs.")
@click.option("--val-preds", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A run's val_predictions.csv: choose a threshold there for --target-recall.")
@target_recall_option
@click.option("--images-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder the prediction paths are relative to (for the sample-image grids).")
@click.option("--cam-model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Exported .onnx with a 'cam' output: overlay its Grad-CAM on the image grids.")
@n_boot_option
@click.option("--seed", type=int, default=0, show_default=True)
def report(prediction_files, out_dir, history, val_preds, target_recall, images_root, cam_model, n_boot,
           seed) -> None:
    """Metrics with CIs, figures, report.md and a self-contained report.html."""
    from cxr.infer.cli import load_model_or_exit
    from cxr.reports.summary import ReportInputError, summarize

    explainer = load_model_or_exit(str(cam_model), "cpu") if cam_model else None
    try:
        result = summarize(list(prediction_files), out_dir, history=list(history), val_predictions=val_preds,
                           target_recall=target_recall, images_root=images_root, n_boot=n_boot, seed=seed,
                           cam_model=explainer)
    except (ReportInputError, OSError, ValueError) as exc:
        fail_usage(str(exc))
    for name, model in result["models"].items():
        m, ci = model["at_0.5"]["metrics"], model["at_0.5"]["ci95"]
        click.echo(f"{name}: ROC AUC {m['roc_auc']:.3f} ({ci['roc_auc'][0]:.3f}-{ci['roc_auc'][1]:.3f}), "
                   f"accuracy {m['accuracy']:.3f}, recall {m['recall']:.3f}, specificity {m['specificity']:.3f}")
    click.echo(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'report.md'}, {out_dir / 'report.html'}")


@click.command()
@model_option
@click.option("--data", "folder", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of images with class subfolders (or --labels).")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="metrics.json of an earlier evaluation to gate against.")
@click.option("--max-drop", default="auc=0.01,recall=0.02", show_default=True,
              help="Allowed drop per metric (loss, brier, ece: allowed rise).")
@click.option("--allow-new-data", is_flag=True, help="Do not fail when the data differs from the baseline's.")
@click.option("--history", "history_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("evaluations/history.csv"), show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("evaluations/latest"),
              show_default=True)
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Evaluate only the files of a split manifest (paths relative to --data); labels come from it.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@batch_size_option
@device_option
@workers_option
@n_boot_option
@quiet_option
def evaluate(model_path, folder, baseline, max_drop, allow_new_data, history_path, out_dir, labels_csv, manifest,
             split, batch_size, device, workers, n_boot, quiet) -> None:
    """Score a labelled folder, write the report, append to the history and gate on regressions."""
    from cxr.infer.cli import ground_truth_or_exit, load_model_or_exit, score_or_exit, write_report
    from cxr.reports.evaluate import GateSpecError, finish_evaluation, folder_data_sha256, parse_max_drop

    if not folder.is_dir():
        fail_usage(f"folder not found: {folder}")
    try:
        limits = parse_max_drop(max_drop)
    except GateSpecError as exc:
        fail_usage(str(exc))
    model = load_model_or_exit(model_path, device)
    only, labels = ground_truth_or_exit(model, labels_csv, manifest, split)
    result = score_or_exit(folder, model, out_dir, batch_size=batch_size, workers=workers, labels=labels,
                           resume=False, quiet=quiet, only=only)
    report = write_report(result, folder, out_dir, full=True, n_boot=n_boot, model=model)
    if report is None:
        fail_usage(f"no labelled images of both classes under {folder}; nothing to evaluate")
    try:
        gate = finish_evaluation(report, out_dir, model.info.sha256, folder_data_sha256(folder, only), baseline,
                                 limits, allow_new_data, history_path)
    except GateSpecError as exc:
        fail_usage(str(exc))
    for line in gate.messages:
        click.echo(line)
    click.echo(f"report: {out_dir / 'report.html'}; history: {history_path}")
    if gate.data_changed:
        click.echo("FAILED: the evaluation data changed", err=True)
        sys.exit(EXIT_DATA_CHANGED)
    if gate.regressions:
        click.echo(f"FAILED: {len(gate.regressions)} metric(s) regressed", err=True)
        sys.exit(1)
    if result.n_errors:
        click.echo(f"{result.n_errors} file(s) could not be scored", err=True)
        sys.exit(EXIT_PARTIAL)
    click.echo("PASSED")


@click.command()
@model_option
@click.option("--metrics", "metrics_json", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="metrics.json holding this model's test-split results.")
@click.option("--key", default=None, help="The model's name in metrics.json [default: the model file's stem].")
@click.option("--data-note", default="", help="One line on the data and split the metrics come from.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="[default: <model>.md beside the model]")
def card(model_path, metrics_json, key, data_note, out_path) -> None:
    """Write a model card (Markdown) from a model's metadata, parity JSON and test metrics."""
    from cxr.infer.model import ModelLoadError
    from cxr.reports.card import write_model_card

    out_path = out_path or Path(model_path).with_suffix(".md")
    try:
        written = write_model_card(model_path, metrics_json, out_path, key, data_note)
    except (ModelLoadError, OSError, KeyError, ValueError) as exc:
        fail_usage(f"cannot write the card: {exc}")
    click.echo(f"wrote {written}")
