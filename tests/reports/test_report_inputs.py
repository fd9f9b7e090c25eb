"""What the report stage is handed: Grad-CAM computed by the app layer (the stage loads no model),
and its options and inputs as records."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.reports.grids import CamOverlays, Thumbnails, labelled_grids
from cxr.reports.summary import PredictionSet, ReportInputs, ReportOptions, images_shown, images_to_review

ROOT = Path(__file__).resolve().parents[2]
MODEL_RUNTIMES = ("onnxruntime", "tensorflow", "keras", "torch", "jax", "cxr.infer", "cxr.export")


def _predictions(folder: Path, n: int = 40, labelled: bool = True) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = ("NORMAL", "PNEUMONIA")[i % 2]
        rel = f"{label}/person{i}_bacteria_{i}.png"
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / rel)
        p = float(np.clip(0.3 * (i % 2) + rng.uniform(0, 0.7), 0, 1))
        rows.append(
            {
                "path": rel,
                "p_PNEUMONIA": f"{p:.6f}",
                "threshold": 0.5,
                "true_label": label if labelled else "",
                "error": "",
                "model": "m.onnx",
                "model_sha256": "a" * 64,
            }
        )
    path = folder / "predictions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_no_report_module_loads_a_model() -> None:
    """reports/ imports no model runtime and no stage that does: Grad-CAM and model facts come in."""
    offences = []
    for path in sorted((ROOT / "reports").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offences += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in MODEL_RUNTIMES or n in MODEL_RUNTIMES
            ]
            offences += [f"{path.name}: {n}" for n in names if n.startswith(("cxr.infer", "cxr.export"))]
    assert not offences, offences


@pytest.mark.slow  # over 5 s on 2 cores: full reports with Grad-CAM grids
def test_grad_cam_handed_in_is_overlaid_on_the_images_shown(tmp_path: Path) -> None:
    """The app computes Grad-CAM for ``images_shown``; the grids overlay exactly those maps."""
    preds = _predictions(tmp_path / "images")
    inputs = ReportInputs((preds,), images_root=tmp_path / "images")
    options = ReportOptions(n_boot=20, seed=1)
    shown = images_shown(inputs, options)
    assert 16 <= len(shown) <= 32 and len(set(shown)) == len(shown)
    assert images_shown(inputs, ReportOptions(with_figures=False)) == ()
    data, prediction_set = PredictionSet.read(preds).labelled(), PredictionSet.read(preds)
    cams = CamOverlays({path: np.ones((4, 4), np.float32) for path in shown})
    made = {}
    for name, overlays in (("plain", None), ("cam", cams)):
        thumbnails = Thumbnails(tmp_path / "images", 64, overlays)
        (tmp_path / name).mkdir()
        made[name] = labelled_grids("", data, prediction_set.classes, 0.5, thumbnails, tmp_path / name, 1)
    assert made["plain"].keys() == made["cam"].keys() >= {"samples", "false_positives", "false_negatives"}
    assert all(made["plain"][k].read_bytes() != made["cam"][k].read_bytes() for k in made["cam"])


def test_the_images_to_review_are_the_highest_scored(tmp_path: Path) -> None:
    preds = _predictions(tmp_path / "images", labelled=False)
    frame = pd.read_csv(preds)
    top = frame.sort_values("p_PNEUMONIA", ascending=False)["path"].head(12).tolist()
    assert list(images_to_review(preds)) == top
