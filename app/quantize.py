"""Thin command of the INT8 stage:
``cxr quantize --model models/model1.onnx --manifest data/splits/manifest.csv``."""

from __future__ import annotations

from pathlib import Path

import click

from cxr.app.errors import UsageError


def gate_options(command):
    """The accuracy gate's limits (validation split, INT8 against the fp32 file)."""
    from cxr.export.quantize import DEFAULT_MAX_AUC_DROP, DEFAULT_MAX_FLIP_SHARE

    command = click.option(
        "--max-auc-drop",
        type=click.FloatRange(0.0, 1.0),
        default=DEFAULT_MAX_AUC_DROP,
        show_default=True,
        help="Largest ROC AUC loss on the validation split.",
    )(command)
    return click.option(
        "--max-flips",
        "max_flip_share",
        type=click.FloatRange(0.0, 1.0),
        default=DEFAULT_MAX_FLIP_SHARE,
        show_default=True,
        help="Largest share of validation labels that may flip at the model's threshold.",
    )(command)


@click.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The fp32 model exported by `cxr export` (guard and calibration included).",
)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Split manifest: its validation split calibrates the ranges and runs the gate.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output .onnx [default: <model>.int8.onnx beside the model]; <out>.quantization.json beside it.",
)
@gate_options
@click.option(
    "--float-groups",
    default="auto",
    show_default=True,
    help="Backbone groups kept float (input, stem, blockN, top; comma-separated), 'none', or 'auto': "
    "the most sensitive groups, one at a time, until the gate passes.",
)
@click.option(
    "--search-margin",
    type=click.FloatRange(0.05, 1.0),
    default=0.5,
    show_default=True,
    help="With --float-groups auto: stop at the first candidate within this fraction of each limit "
    "(headroom for new images), else keep the one with the fewest flips within the limits.",
)
@click.option(
    "--max-float-groups",
    type=click.IntRange(0),
    default=8,
    show_default=True,
    help="With --float-groups auto: search no further than this many float groups.",
)
@click.option(
    "--calibration-images",
    type=click.IntRange(8),
    default=None,
    help="Calibrate on this many validation images, evenly spaced [default: all of them].",
)
def quantize(
    model_path: Path,
    manifest: Path,
    out_path: Path | None,
    max_auc_drop: float,
    max_flip_share: float,
    float_groups: str,
    search_margin: float,
    max_float_groups: int,
    calibration_images: int | None,
) -> None:
    """Write an INT8 copy of a cxr model (onnxruntime static quantization, QDQ, per-channel weights) if
    it stays within the gate on the validation split; its guard threshold is refitted there, its
    calibration kept."""
    from cxr.export.quantize import (
        QuantizeError,
        Search,
        default_out,
        parse_float_groups,
        quantize_model,
        sidecar_path,
    )

    if not model_path.is_file():
        raise UsageError(f"model file not found: {model_path}")
    if not manifest.is_file():
        raise UsageError(f"--manifest {manifest} not found")
    out_path = out_path or default_out(model_path)
    if out_path.resolve() == model_path.resolve():
        raise UsageError("--out is the fp32 model itself; write the INT8 copy beside it")
    try:
        search = Search(max_auc_drop, max_flip_share, search_margin, max_float_groups)
        result = quantize_model(
            model_path,
            out_path,
            manifest,
            search=search,
            float_groups=parse_float_groups(float_groups),
            calibration_images=calibration_images,
            say=click.echo,
        )
    except QuantizeError as exc:
        raise UsageError(str(exc)) from None
    click.echo(f"int8 gate on the {result.gate.describe()}")
    click.echo(
        f"float groups: {', '.join(result.float_groups) or 'none'}; int8 groups: "
        f"{len(result.quantized_groups)} ({', '.join(result.quantized_groups)})"
    )
    if result.guard:
        r = result.guard["int8_refit"]
        click.echo(
            f"domain guard: validation images flagged fp32 {r['val_flagged_fp32']:.1%}, int8 at the fp32 "
            f"threshold {r['val_flagged_int8_at_fp32_threshold']:.1%}; threshold refitted "
            f"{r['fp32_threshold']:.3f} -> {result.guard['threshold']:.3f} (int8 flags "
            f"{r['val_flagged_int8']:.1%}; score rank correlation {r['score_rank_correlation']:.3f})"
        )
    if result.calibration_check:
        c = result.calibration_check
        click.echo(
            f"calibration: {c['method']} (a {c['a']:.4g}, b {c['b']:.4g}) kept; same mapping from the logit "
            f"(max |dp| {c['max_abs_diff']:.1e})"
        )
    size_mb = out_path.stat().st_size / 1e6
    click.echo(f"wrote {out_path} ({size_mb:.1f} MB) and {sidecar_path(out_path)}")
