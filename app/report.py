"""Thin commands of the report stage: ``cxr report`` and ``cxr card``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cxr.app.errors import UsageError
from cxr.app.options import (
    model_option,
    n_boot_option,
    target_recall_option,
    threshold_rule_option,
)
from cxr.files import read_json_file
from cxr.messages import first_line

if TYPE_CHECKING:
    import pandas as pd

    from cxr.artifacts.report_sections import RobustnessSection, ShortcutCheck
    from cxr.infer.model import OnnxClassifier
    from cxr.reports.card import ShippedModel
    from cxr.reports.grids import CamOverlays


@click.command()
@click.option(
    "--preds",
    "prediction_files",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
    help="cxr-infer predictions CSV; repeat to compare models.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report"),
    show_default=True,
)
@click.option(
    "--history",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    help="A run's history.csv for the training curves; repeat for several runs.",
)
@click.option(
    "--val-preds",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A run's val_predictions.csv: choose a threshold there for --target-recall.",
)
@target_recall_option
@threshold_rule_option
@click.option(
    "--images-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder the prediction paths are relative to (for the sample-image grids).",
)
@click.option(
    "--cam-model",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Exported .onnx with a 'cam' output: overlay its Grad-CAM on the image grids.",
)
@click.option(
    "--robustness",
    "robustness_files",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    help="robustness.json from `cxr robustness`; repeat for several models.",
)
@click.option(
    "--data-summary",
    "data_summaries",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    help="summary.json from `cxr data prepare`: show its shortcut check; repeat for several data sets.",
)
@click.option(
    "--groups",
    "groups_csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV path,group...: report metrics for each group of each column (subgroups).",
)
@click.option(
    "--image-grids-for",
    "image_grids_for",
    multiple=True,
    help="Draw the sample and error image grids for this model only; repeat [default: every model].",
)
@click.option(
    "--embed-images/--link-images",
    default=True,
    show_default=True,
    help="report.html holds its figures (one file that opens anywhere) or links the PNGs beside it.",
)
@click.option(
    "--shipped",
    "shipped",
    multiple=True,
    help="A model (its name in the report) to mark as shipped; the first opens the summary. Repeat.",
)
@n_boot_option
@click.option("--seed", type=int, default=0, show_default=True)
def report(
    prediction_files,
    out_dir,
    history,
    val_preds,
    target_recall,
    threshold_rule,
    images_root,
    cam_model,
    robustness_files,
    data_summaries,
    groups_csv,
    image_grids_for,
    embed_images,
    shipped,
    n_boot,
    seed,
) -> None:
    """Metrics with CIs, figures, report.md and a self-contained report.html."""
    from cxr.reports.summary import ReportInputError, ReportInputs, ReportOptions, images_shown, summarize
    from cxr.thresholds import ThresholdError

    options = ReportOptions(
        target_recall=target_recall,
        threshold_rule=threshold_rule,
        n_boot=n_boot,
        seed=seed,
        image_grids_for=tuple(image_grids_for) or None,
        embed_images=embed_images,
        shipped=tuple(shipped),
    )
    inputs = ReportInputs(
        prediction_files=tuple(prediction_files),
        history=tuple(history),
        val_predictions=val_preds,
        images_root=images_root,
        robustness=dict(map(_robustness_of, robustness_files)),
        shortcut=tuple(_shortcut_of(path) for path in data_summaries),
        groups=_groups_of(groups_csv),
    )
    explainer = _explainer(cam_model) if cam_model else None
    try:
        if explainer is not None and images_root is not None:
            inputs = replace(inputs, cams=grad_cams(explainer, images_root, images_shown(inputs, options)))
        result = summarize(inputs, out_dir, options, progress=lambda line: click.echo(line, err=True))
    except (
        ReportInputError,
        ThresholdError,
    ) as exc:  # any other exception is a bug (exit 70), not a usage error
        raise UsageError(str(exc)) from None
    from cxr.reports.render import value_with_ci

    for name, model in result.models.items():
        block = model.at_model_threshold
        click.echo(
            f"{name} at threshold {block.threshold:.3g}: ROC AUC {value_with_ci(block, 'roc_auc')}, "
            f"recall {value_with_ci(block, 'recall')}, specificity {value_with_ci(block, 'specificity')}"
        )
    click.echo(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'report.md'}, {out_dir / 'report.html'}")


def _explainer(path: Path) -> OnnxClassifier:
    """The --cam-model, on the CPU; a one-line usage error when it cannot be loaded."""
    from cxr.infer.model import ModelLoadError, OnnxClassifier, ProviderError

    try:
        return OnnxClassifier(str(path), device="cpu")
    except (ModelLoadError, ProviderError) as exc:
        raise UsageError(str(exc)) from None


def grad_cams(model: OnnxClassifier, images_root: Path, paths: Iterable[str]) -> CamOverlays:
    """The Grad-CAM of ``model`` on each image a report shows (``paths`` as in the predictions,
    under ``images_root``), computed one image at a time at the model's input size; an image that
    does not decode gets none."""
    from cxr.artifacts import unescape_path
    from cxr.imaging import decode_or_error
    from cxr.reports.grids import CamOverlays

    maps = {}
    for path in dict.fromkeys(paths):
        pixels, _ = decode_or_error(Path(images_root) / unescape_path(path), model.info.input_size)
        if pixels is not None:
            maps[path] = model.explain(pixels[None])[1][0]
    return CamOverlays(maps)


@click.command()
@model_option
@click.option(
    "--metrics",
    "metrics_json",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="metrics.json holding this model's test-split results.",
)
@click.option(
    "--key", default=None, help="The model's name in metrics.json [default: the model file's stem]."
)
@click.option("--data-note", default="", help="One line on the data and split the metrics come from.")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="[default: <model>.md beside the model]",
)
def card(model_path, metrics_json, key, data_note, out_path) -> None:
    """Write a model card (Markdown) from a model's metadata, parity JSON and test metrics."""
    from cxr.artifacts import MetricsReport
    from cxr.errors import InputError
    from cxr.reports.card import write_model_card

    out_path = out_path or Path(model_path).with_suffix(".md")
    try:
        model = shipped_model(Path(model_path))
        written = write_model_card(
            model, MetricsReport.read(metrics_json), metrics_json, out_path, key, data_note
        )
    except InputError as exc:
        raise UsageError(f"cannot write the card: {exc}") from None
    click.echo(f"wrote {written}")


def shipped_model(path: Path) -> ShippedModel:
    """What the card says about a model file, read here (the report stage loads no model): its hash,
    contract, parity record and output shapes (ModelLoadError, an InputError, when it is no cxr model)."""
    from cxr.artifacts import Parity
    from cxr.infer.model import OnnxClassifier
    from cxr.reports.card import ShippedModel

    model = OnnxClassifier(str(path), device="cpu")
    shapes = {output.name: tuple(output.shape) for output in model.session.get_outputs()}
    return ShippedModel(path, model.info.sha256, model.info.contract, Parity.read(path), shapes)


def _read_json_file(path: Path, key: str, what: str) -> dict:
    """A JSON object file that has ``key``; a one-line usage error otherwise."""
    data = read_json_file(path, UsageError)
    if not isinstance(data, dict) or key not in data:
        raise UsageError(f"{path} is not {what} (no '{key}')")
    return data


def _robustness_of(path: Path) -> tuple[str, RobustnessSection]:
    """(model name, its robustness section) of a robustness.json."""
    from cxr.artifacts import RobustnessReport
    from cxr.artifacts.report_sections import RobustnessSection

    data = RobustnessReport.read(path)
    return data.get("model", path.parent.name), RobustnessSection.from_dict(data)


def _shortcut_of(path: Path) -> ShortcutCheck:
    from cxr.artifacts.report_sections import ShortcutCheck

    summary = _read_json_file(
        path, "shortcut_check", "a summary.json with a shortcut check from `cxr data prepare`"
    )
    return ShortcutCheck(
        {"source": str(path.parent), "split_by": summary.get("split_by", ""), **summary["shortcut_check"]}
    )


def _groups_of(path: Path | None) -> pd.DataFrame | None:
    from cxr.reports.standards import read_groups_csv

    if path is None:
        return None
    try:
        return read_groups_csv(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read groups file {path}: {first_line(exc)}") from None
