"""The ``cxr`` command group. Each stage's thin commands live in that stage's ``cli`` module."""

from __future__ import annotations

from pathlib import Path

import click

from cxr import __version__
from cxr.options import EXIT_USAGE, seed_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cxr")
def cxr() -> None:
    """Pneumonia on pediatric chest X-rays: data -> train -> export -> infer -> report/evaluate."""


@cxr.group()
def data() -> None:
    """Data preparation: merge, dedupe and split by patient."""


@data.command("prepare")
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="Kaggle-layout folder or folder of class subfolders [default: ../shared/data/chest_xray].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("data/splits"), show_default=True)
@click.option("--split-by", type=click.Choice(["patient", "image"]), default="patient", show_default=True,
              help="'image' reproduces the seed's leaky image-level split.")
@click.option("--classes", default="NORMAL,PNEUMONIA", show_default=True, help="Class folder names, negative first.")
@seed_option
def data_prepare(source: Path | None, out_dir: Path, split_by: str, classes: str, seed: int | None) -> None:
    """Write data/splits/manifest.csv and summary.json (images are not copied)."""
    from cxr.data import DEFAULT_SOURCE, DataPrepError, prepare_splits

    try:
        result = prepare_splits(source or DEFAULT_SOURCE, out_dir, classes=tuple(classes.split(",")),
                                split_by=split_by, seed=42 if seed is None else seed)
    except DataPrepError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    s = result.summary
    for warning in result.warnings:
        click.echo(warning, err=True)
    click.echo(f"found {s['files_found']} files: kept {s['images_kept']} images, dropped {s['duplicates_dropped']} "
               f"duplicates, skipped {s['skipped']}, hidden {s['hidden_files_ignored']}")
    for split in ("train", "val", "test"):
        counts = ", ".join(f"{c} {n}" for c, n in s["counts"][split].items())
        click.echo(f"  {split:5s}: {counts}; {s['patients'][split]} patients")
    for item in s["skipped_files"]:
        click.echo(f"  skipped {item['path']}: {item['reason']}")
    click.echo(f"patients on several splits: {s['patients_on_several_splits']}")
    click.echo(f"wrote {result.manifest_path} and {result.summary_path}")


def _register_stages() -> None:
    from cxr.export.cli import export
    from cxr.infer.cli import explain, infer
    from cxr.reports.cli import card, evaluate, report
    from cxr.train.cli import recalibrate_bn, train, weights

    for command in (train, recalibrate_bn, export, infer, report, evaluate, explain, card, weights):
        cxr.add_command(command)


_register_stages()


def main() -> None:
    cxr(prog_name="cxr")
