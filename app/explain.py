"""``cxr explain``: Grad-CAM explanations from an exported model's 'cam' output (no TensorFlow),
or from a Keras model or run folder (autodiff reference, needs the [train] extra). Explaining a
.keras model composes the training artifacts with the export stage's Grad-CAM, so it lives in
the app layer."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from cxr.app.errors import EXIT_OK, EXIT_PARTIAL, Command, UsageError
from cxr.imaging import decode_or_error


@dataclass(frozen=True)
class Explanation:
    path: Path
    probability: float | None
    figure: Path | None
    error: str = ""


def _keras_explainer(model_path: Path):
    """(predict_cam function, input size, classes, threshold) for a run folder or a .keras file; a
    Keras model has no threshold until it is exported, so 0.5."""
    from cxr.artifacts import RunFolder
    from cxr.export.gradcam import gradcam_keras
    from cxr.export.onnx_export import load_keras_model

    run = RunFolder(model_path if model_path.is_dir() else model_path.parent)
    model = load_keras_model(run.best if model_path.is_dir() else model_path)
    classes = list(run.read_config().classes) if run.has_config() else ["NEGATIVE", "POSITIVE"]
    size = int(model.input_shape[1])
    return (lambda batch: gradcam_keras(model, batch.astype(np.float32))), size, classes, 0.5


def _onnx_explainer(model_path: Path):
    from cxr.infer.model import ModelLoadError, OnnxClassifier

    model = OnnxClassifier(model_path, device="cpu")
    if not model.has_cam:
        raise ModelLoadError(f"{model_path} has no 'cam' output (re-export it with this version of cxr)")
    return model.explain, model.info.input_size, model.info.classes, model.info.threshold


def explain_files(paths: list[Path], model_path: str | Path, out_dir: str | Path) -> list[Explanation]:
    """Write ``<stem>_gradcam.png`` (image, overlay, probability) for each image."""
    from cxr.reports.figures import save_explanation

    model_path, out_dir = Path(model_path), Path(out_dir)
    explain, size, classes, threshold = (
        _onnx_explainer if model_path.suffix == ".onnx" else _keras_explainer
    )(model_path)
    results, used = [], set()
    for path in map(Path, paths):
        image, error = decode_or_error(path, size)
        if image is None:
            results.append(Explanation(path, None, None, error))
            continue
        prob, cam = explain(image[None])
        figure = save_explanation(
            image,
            cam[0],
            float(prob[0]),
            classes,
            threshold,
            out_dir / _unique_name(path, used),
            title=path.name,
        )
        results.append(Explanation(path, float(prob[0]), figure))
    return results


def _unique_name(path: Path, used: set[str]) -> str:
    """``<stem>_gradcam.png``; the same stem again (``a/x.jpeg``, ``b/x.jpeg``) gets ``-2``, ``-3``..."""
    name, n = f"{path.stem}_gradcam.png", 1
    while name in used:
        n += 1
        name = f"{path.stem}-{n}_gradcam.png"
    used.add(name)
    return name


@click.command("explain", cls=Command)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Exported .onnx (uses its 'cam' output, no TensorFlow), a .keras file or a training run folder.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("explanations"),
    show_default=True,
)
def explain(images: tuple[Path, ...], model_path: Path, out_dir: Path) -> None:
    """Grad-CAM heatmap overlays (PNG) for each IMAGE: the image, the overlay and the probability."""
    if not model_path.exists():
        raise UsageError(f"model not found: {model_path}")
    results = explain_files(list(images), model_path, out_dir)
    for item in results:
        click.echo(
            f"{item.path}: "
            + (f"p={item.probability:.4f} -> {item.figure}" if item.figure else f"error: {item.error}")
        )
    sys.exit(EXIT_PARTIAL if any(item.error for item in results) else EXIT_OK)
