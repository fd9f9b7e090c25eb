"""Grad-CAM explanations from an exported model's 'cam' output (no TensorFlow), or from a
Keras model (autodiff reference, needs the [train] extra)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.imaging import decode_or_error


@dataclass
class Explanation:
    path: Path
    probability: float | None
    figure: Path | None
    error: str = ""


def _keras_explainer(model_path: Path):
    """(predict_cam function, input size, positive class) for a run folder or a .keras file."""
    import json

    from cxr.export.gradcam import gradcam_keras
    from cxr.export.onnx_export import load_keras_model

    run_dir = model_path if model_path.is_dir() else model_path.parent
    keras_file = model_path / "best.keras" if model_path.is_dir() else model_path
    model = load_keras_model(keras_file)
    config_file = run_dir / "config.json"
    classes = json.loads(config_file.read_text())["classes"] if config_file.is_file() else ["NEGATIVE", "POSITIVE"]
    size = int(model.input_shape[1])
    return (lambda batch: gradcam_keras(model, batch.astype(np.float32))), size, classes[1]


def _onnx_explainer(model_path: Path):
    from cxr.infer.model import OnnxClassifier

    model = OnnxClassifier(model_path, device="cpu")
    if not model.has_cam:
        from cxr.infer.model import ModelLoadError

        raise ModelLoadError(f"{model_path} has no 'cam' output (re-export it with this version of cxr)")
    return model.explain, model.info.input_size, model.info.positive_class


def explain_files(paths: list[Path], model_path: str | Path, out_dir: str | Path) -> list[Explanation]:
    """Write ``<stem>_gradcam.png`` (image, overlay, probability) for each image."""
    from cxr.reports.figures import save_explanation

    model_path, out_dir = Path(model_path), Path(out_dir)
    explain, size, positive = (_onnx_explainer if model_path.suffix == ".onnx" else _keras_explainer)(model_path)
    results = []
    for path in map(Path, paths):
        image, error = decode_or_error(path, size)
        if image is None:
            results.append(Explanation(path, None, None, error))
            continue
        prob, cam = explain(image[None])
        figure = save_explanation(image, cam[0], float(prob[0]), positive, out_dir / f"{path.stem}_gradcam.png",
                                  title=path.name)
        results.append(Explanation(path, float(prob[0]), figure))
    return results
