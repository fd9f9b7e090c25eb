"""Thin CLI of the inference stage: ``cxr-infer FOLDER --model M`` (also ``cxr infer``).

Exit codes: 0 every file scored; 1 finished, but some files got error rows; 2 usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cxr.options import (EXIT_OK, EXIT_PARTIAL, batch_size_option, device_option, fail_usage,
                         model_option, n_boot_option, quiet_option, workers_option)


def progress_bar(quiet: bool):
    """A progress callback that shows files done and images/s on a TTY (stderr)."""
    from tqdm import tqdm

    state = {}

    def advance(n: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr,
                                disable=quiet or not sys.stderr.isatty())
        state["bar"].update(n)

    advance.close = lambda: state["bar"].close() if "bar" in state else None
    return advance


def load_model_or_exit(model_path: str, device: str):
    from cxr.infer.model import ModelLoadError, OnnxClassifier, ProviderError

    try:
        return OnnxClassifier(model_path, device=device)
    except (ModelLoadError, ProviderError) as exc:
        fail_usage(str(exc))


def ground_truth_or_exit(model, labels_csv: Path | None, manifest: Path | None,
                         split: str) -> tuple[list[str] | None, dict[str, str] | None]:
    """(files to score or None for all, labels or None) from --labels or --manifest/--split."""
    from cxr.infer.score import ScoreInputError, manifest_split, read_labels_csv

    try:
        if manifest is not None:
            return manifest_split(manifest, split, model.info.classes)
        return None, (read_labels_csv(labels_csv, model.info.classes) if labels_csv else None)
    except ScoreInputError as exc:
        fail_usage(str(exc))


def score_or_exit(folder, model, out_dir: Path, **kwargs):
    from cxr.infer.score import ScoreInputError, score_folder

    bar = progress_bar(kwargs.pop("quiet"))
    try:
        return score_folder(folder, model, out_dir / "predictions.csv", progress=bar, **kwargs)
    except ScoreInputError as exc:
        fail_usage(str(exc))
    finally:
        bar.close()


def write_report(result, folder: Path, out_dir: Path, full: bool, n_boot: int = 1000, model=None) -> dict | None:
    """The reports stage on these predictions, when they carry ground truth."""
    from cxr.reports.summary import ReportInputError, summarize

    if not (result.predictions["true_label"] != "").any():
        return None
    try:
        cam_model = model if model is not None and model.has_cam else None
        return summarize([result.csv_path], out_dir, images_root=folder, with_figures=full, n_boot=n_boot,
                         cam_model=cam_model)
    except ReportInputError as exc:
        click.echo(f"no report: {exc}", err=True)
        return None


@click.command("infer")
@click.argument("folder", type=click.Path(path_type=Path))
@model_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("cxr_out"),
              show_default=True, help="Folder for predictions.csv and the report.")
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Ground truth CSV (path,label); default: parent folders named after the model's classes.")
@batch_size_option
@device_option
@workers_option
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Score only the files of a split manifest (paths relative to FOLDER); labels come from it.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True,
              help="With --manifest: which split to score.")
@click.option("--tta", is_flag=True, help="Test-time augmentation: average over flips and small shifts (6x cost).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run; files already scored are kept.")
@click.option("--no-report", is_flag=True, help="With ground truth, write only metrics.json (no figures/HTML).")
@n_boot_option
@quiet_option
def infer(folder: Path, model_path: str, out_dir: Path, labels_csv: Path | None, batch_size: int, device: str,
          workers: int | None, manifest: Path | None, split: str, tta: bool, resume: bool, no_report: bool,
          n_boot: int, quiet: bool) -> None:
    """Score every image under FOLDER (recursively) with an exported ONNX model."""
    if not folder.is_dir():
        fail_usage(f"folder not found: {folder}")
    model = load_model_or_exit(model_path, device)
    if not quiet:
        click.echo(f"provider: {model.provider} | model {model.path.name} ({model.info.sha256[:12]}), "
                   f"threshold {model.info.threshold:g}, classes {model.info.classes}", err=True)
    only, labels = ground_truth_or_exit(model, labels_csv, manifest, split)
    result = score_or_exit(folder, model, out_dir, batch_size=batch_size, workers=workers, labels=labels,
                           resume=resume, quiet=quiet, only=only, tta=tta)
    report = write_report(result, folder, out_dir, full=not no_report, n_boot=n_boot, model=model)
    click.echo(f"scored {result.n_files - result.n_errors}/{result.n_files} files "
               f"({result.images_per_second:.1f} img/s) -> {result.csv_path}")
    if report is not None:
        m = next(iter(report["models"].values()))["at_model_threshold"]["metrics"]
        click.echo(f"metrics (threshold {model.info.threshold:g}): accuracy {m['accuracy']:.3f}, "
                   f"recall {m['recall']:.3f}, specificity {m['specificity']:.3f}, ROC AUC {m['roc_auc']:.3f} -> "
                   f"{out_dir / ('metrics.json' if no_report else 'report.html')}")
    if result.n_errors:
        click.echo(f"{result.n_errors} file(s) could not be scored; see the 'error' column", err=True)
        sys.exit(EXIT_PARTIAL)
    sys.exit(EXIT_OK)


@click.command("explain")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=Path), required=True,
              help="Exported .onnx (uses its 'cam' output, no TensorFlow), a .keras file or a training run folder.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("explanations"),
              show_default=True)
def explain(images: tuple[Path, ...], model_path: Path, out_dir: Path) -> None:
    """Grad-CAM heatmap overlays (PNG) for each IMAGE: the image, the overlay and the probability."""
    from cxr.infer.explain import explain_files
    from cxr.infer.model import ModelLoadError

    if not model_path.exists():
        fail_usage(f"model not found: {model_path}")
    try:
        results = explain_files(list(images), model_path, out_dir)
    except (ModelLoadError, OSError, ValueError, RuntimeError) as exc:
        fail_usage(str(exc).splitlines()[0])
    for item in results:
        click.echo(f"{item.path}: " + (f"p={item.probability:.4f} -> {item.figure}" if item.figure else
                                       f"error: {item.error}"))
    sys.exit(EXIT_PARTIAL if any(item.error for item in results) else EXIT_OK)


def main() -> None:
    """Entry point of ``cxr-infer``."""
    infer(prog_name="cxr-infer")


__all__ = ["explain", "infer", "main"]
