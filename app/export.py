"""Thin command of the export stage: ``cxr export --run runs/model1 --out models/model1.onnx``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cxr.app.errors import Command, ParityFailed, UsageError
from cxr.app.options import target_recall_option, threshold_rule_option
from cxr.errors import InputError
from cxr.export.trust import DEFAULT_FALSE_FLAGS, DEFAULT_OUTLIER_SHARE


def resolve_threshold(spec: str, run_dir: Path, target_recall: float, rule: str) -> dict:
    """A number, or 'val': chosen on the run's validation predictions by ``rule`` (see cxr.thresholds).
    Returns the threshold with the facts of its rule (stored in the model's metadata)."""
    from cxr.artifacts import RunFolder
    from cxr.thresholds import choose_val_threshold

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
    return choose_val_threshold(val_csv, target_recall, rule)


def trust_options(command):
    """The domain guard and calibration options of ``cxr export``."""
    command = click.option(
        "--guard/--no-guard",
        default=True,
        show_default=True,
        help="Fit the domain guard on the training split and fold it into the graph "
        "(output domain_score; threshold on the validation split).",
    )(command)
    command = click.option(
        "--guard-false-flags",
        type=click.FloatRange(0.001, 0.2),
        default=DEFAULT_FALSE_FLAGS,
        show_default=True,
        help="Share of validation images the guard may flag; sets its threshold.",
    )(command)
    command = click.option(
        "--guard-outliers",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder of chest X-rays from other sites: the guard also learns to tell them from the "
        "training images (a site classifier); without it, other sites' chests are flagged less often.",
    )(command)
    command = click.option(
        "--guard-outlier-share",
        type=click.FloatRange(0.05, 1.0),
        default=DEFAULT_OUTLIER_SHARE,
        show_default=True,
        help="Share of the --guard-outliers patients used for fitting, chosen by a stable hash of the "
        "patient id; the rest are left out so the guard can be measured on them.",
    )(command)
    command = click.option(
        "--calibration",
        type=click.Choice(["platt", "temperature", "none"]),
        default="platt",
        show_default=True,
        help="Calibrate P(positive) on the validation split, folded into "
        "the graph; the threshold rule then runs on it.",
    )(command)
    return click.option(
        "--manifest",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Split manifest for the guard and calibration [default: the run's manifest; "
        "required with --from-onnx].",
    )(command)


def attach_trust(
    model_path: Path,
    out_path: Path,
    manifest: Path | None,
    guard: bool,
    false_flags: float,
    calibration: str,
    threshold: str | None = None,
    threshold_rule: str = "wilson",
    target_recall: float = 0.95,
    *,
    outliers: Path | None = None,
    outlier_share: float = DEFAULT_OUTLIER_SHARE,
) -> None:
    """Fit and fold in the guard and the calibration (with neither, take them out), and say what
    they are."""
    from cxr.export.trust import add_trust
    from cxr.thresholds import describe_rule

    if manifest is None:
        raise UsageError(
            "the guard and calibration are fitted on a split manifest: give --manifest "
            "(e.g. data/splits/manifest.csv)"
        )
    if not manifest.is_file():
        raise UsageError(f"--manifest {manifest} not found")
    result = add_trust(
        model_path,
        out_path,
        manifest,
        guard=guard,
        calibration=None if calibration == "none" else calibration,
        false_flags=false_flags,
        threshold=threshold,
        threshold_rule=threshold_rule,
        target_recall=target_recall,
        outliers=outliers,
        outlier_share=outlier_share,
    )
    if not guard and calibration == "none":
        click.echo("domain guard and calibration: none (taken out of the graph)")
    if result.calibration:
        c = result.calibration
        click.echo(
            f"calibration: {c.method} (a {c.a:.4g}, b {c.b:.4g}) on the validation split, ECE "
            f"{c.val_ece_before:.3f} -> {c.val_ece_after:.3f}"
        )
    if result.guard:
        g = result.guard
        site = (
            f", site classifier on {g.site.n_sites} images of {outliers} and {g.site.n_made_up} made up"
            if g.site
            else " (no --guard-outliers: no site classifier)"
        )
        click.echo(
            f"domain guard: {len(g.taps)} layers{site}, threshold {g.threshold:.3f} "
            f"({g.false_flag_rate:.1%} of the validation images flagged)"
        )
        if g.facts.warning:
            click.echo(f"warning: the domain guard was {g.facts.warning}", err=True)
    click.echo(f"threshold: {describe_rule(result.threshold_rule)}")
    click.echo(f"wrote {out_path} (edit checked: max |dp| {result.max_abs_diff:.1e})")


@click.command(cls=Command)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Training run folder (holds best.keras, config.json, run.json).",
)
@click.option(
    "--from-onnx",
    "from_onnx",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Instead of --run: an exported cxr model to (re)fit the guard and calibration of.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output .onnx path; <stem>.parity.json is written beside it.",
)
@click.option(
    "--threshold",
    default=None,
    show_default="0.5 with --run; the model's own rule with --from-onnx",
    help="Decision threshold stored in the model (on its calibrated output), or 'val' to choose it on "
    "the validation split by --threshold-rule and --target-recall.",
)
@target_recall_option
@threshold_rule_option
@click.option(
    "--parity-images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of images for the parity gate [default: the run's validation images, else synthetic].",
)
@click.option("--n-parity", type=click.IntRange(1), default=32, show_default=True)
@click.option("--opset", type=click.IntRange(13), default=17, show_default=True)
@trust_options
def export(
    run_dir: Path | None,
    from_onnx: Path | None,
    out_path: Path,
    threshold: str,
    target_recall: float,
    threshold_rule: str,
    parity_images: Path | None,
    n_parity: int,
    opset: int,
    guard: bool,
    guard_false_flags: float,
    guard_outliers: Path | None,
    guard_outlier_share: float,
    calibration: str,
    manifest: Path | None,
) -> None:
    """Convert a training run to ONNX (uint8 NHWC in, P(positive) out) behind a parity gate, then fit
    the domain guard and the calibration on the run's splits and fold them into the graph."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if (run_dir is None) == (from_onnx is None):
        raise UsageError("give --run (a training run) or --from-onnx (an exported model), one of them")
    check_outliers(guard, guard_outliers, guard_outlier_share)
    if from_onnx is not None:
        if not from_onnx.is_file():
            raise UsageError(f"model file not found: {from_onnx}")
        attach_trust(
            from_onnx,
            out_path,
            manifest,
            guard,
            guard_false_flags,
            calibration,
            threshold,
            threshold_rule,
            target_recall,
            outliers=guard_outliers,
            outlier_share=guard_outlier_share,
        )
        return
    threshold = threshold or "0.5"
    from cxr.export.onnx_export import ParityError, export_onnx
    from cxr.imaging import list_images

    if not run_dir.is_dir():
        raise UsageError(f"run folder not found: {run_dir}")
    from cxr.thresholds import describe_rule

    rule = resolve_threshold(threshold, run_dir, target_recall, threshold_rule)
    value = rule["threshold"]
    click.echo(f"threshold: {describe_rule(rule)}")
    paths = [str(p) for p in list_images(parity_images)][:n_parity] if parity_images else None
    try:
        result = export_onnx(
            run_dir,
            out_path,
            parity_paths=paths,
            n_parity=n_parity,
            threshold=value,
            threshold_rule=rule,
            opset=opset,
        )
    except ParityError as exc:
        raise ParityFailed(str(exc)) from None
    p = result.parity
    click.echo(
        f"parity on {p.source}: max |dp| {p.max_abs_diff:.2e}, mean |dp| {p.mean_abs_diff:.2e}, "
        f"labels differ {p.labels_differ} (tolerance {p.tolerance:g}) -> passed"
    )
    size_mb = result.model_path.stat().st_size / 1e6
    click.echo(
        f"wrote {result.model_path} ({size_mb:.1f} MB, threshold {value:.4g}) and {result.parity_path}"
    )
    try:
        attach_trust(
            result.model_path,
            result.model_path,
            manifest or run_manifest(run_dir),
            guard,
            guard_false_flags,
            calibration,
            outliers=guard_outliers,
            outlier_share=guard_outlier_share,
        )
    except (
        InputError,
        UsageError,
    ) as exc:  # a model without the guard or calibration asked for is not left behind
        result.model_path.unlink(missing_ok=True)
        result.parity_path.unlink(missing_ok=True)
        raise UsageError(f"{exc}; nothing written") from None


def check_outliers(guard: bool, folder: Path | None, share: float) -> None:
    """Mistakes with --guard-outliers, found before anything is exported or written."""
    from cxr.export.trust import outlier_paths

    if folder is None:
        return
    if not guard:
        raise UsageError("--guard-outliers fits part of the domain guard: it cannot go with --no-guard")
    outlier_paths(folder, share)  # a missing folder or too few images: a one-line error now
    if share >= 1.0:
        click.echo(
            "warning: --guard-outlier-share 1 uses every patient of --guard-outliers: none is left "
            "out to measure the guard on",
            err=True,
        )


def run_manifest(run_dir: Path) -> Path | None:
    """The split manifest a run was trained on (its config's ``data``), where recorded."""
    from cxr.artifacts import RunFolder

    info = RunFolder(run_dir).read_info()
    return Path(info.manifest) if info and info.manifest else None
