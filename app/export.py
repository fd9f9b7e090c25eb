"""Thin command of the export stage: ``cxr export --run runs/model1 --out models/model1.onnx``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cxr.app.errors import ParityFailed, UsageError
from cxr.app.options import target_recall_option, threshold_rule_option


def resolve_threshold(spec: str, run_dir: Path, target_recall: float, rule: str) -> dict:
    """A number, or 'val': chosen on the run's validation predictions by ``rule`` (see cxr.thresholds).
    Returns the threshold with the facts of its rule (stored in the model's metadata)."""
    from cxr.artifacts import RunFolder
    from cxr.thresholds import ThresholdError, choose_val_threshold

    if spec != "val":
        try:
            value = float(spec)
        except ValueError:
            raise UsageError(f"--threshold must be a number in (0, 1) or 'val', not {spec!r}") from None
        if not 0.0 < value < 1.0:
            raise UsageError(f"--threshold must be in (0, 1), not {value}")
        return {"threshold": value, "rule": "fixed"}
    val_csv = RunFolder(run_dir).val_predictions
    if not val_csv.is_file():
        raise UsageError(f"--threshold val needs {val_csv}")
    try:
        return choose_val_threshold(val_csv, target_recall, rule)
    except ThresholdError as exc:
        raise UsageError(str(exc)) from None


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Training run folder (holds best.keras, config.json, run.json).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .onnx path; <stem>.parity.json is written beside it.")
@click.option("--threshold", default="0.5", show_default=True,
              help="Decision threshold stored in the model, or 'val' to choose it on the run's validation split.")
@target_recall_option
@threshold_rule_option
@click.option("--parity-images", type=click.Path(path_type=Path), default=None,
              help="Folder of images for the parity gate [default: the run's validation images, else synthetic].")
@click.option("--n-parity", type=click.IntRange(1), default=32, show_default=True)
@click.option("--opset", type=click.IntRange(13), default=17, show_default=True)
def export(run_dir: Path, out_path: Path, threshold: str, target_recall: float, threshold_rule: str, parity_images: Path | None,
           n_parity: int, opset: int) -> None:
    """Convert a training run to ONNX (uint8 NHWC in, P(positive) out) behind a parity gate."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cxr.export.onnx_export import ExportError, ParityError, export_onnx
    from cxr.imaging import list_images

    if not run_dir.is_dir():
        raise UsageError(f"run folder not found: {run_dir}")
    from cxr.thresholds import describe_rule

    rule = resolve_threshold(threshold, run_dir, target_recall, threshold_rule)
    value = rule["threshold"]
    click.echo(f"threshold: {describe_rule(rule)}")
    paths = [str(p) for p in list_images(parity_images)][:n_parity] if parity_images else None
    try:
        result = export_onnx(run_dir, out_path, parity_paths=paths, n_parity=n_parity, threshold=value, threshold_rule=rule,
                             opset=opset)
    except ParityError as exc:
        raise ParityFailed(str(exc)) from None
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    p = result.parity
    click.echo(f"parity on {p['source']}: max |dp| {p['max_abs_diff']:.2e}, mean |dp| {p['mean_abs_diff']:.2e}, "
               f"labels differ {p['labels_differ']} (tolerance {p['tolerance']:g}) -> passed")
    size_mb = result.model_path.stat().st_size / 1e6
    click.echo(f"wrote {result.model_path} ({size_mb:.1f} MB, threshold {value:.4g}) and {result.parity_path}")
