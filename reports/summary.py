"""Report stage core: ``summarize`` builds metrics.json, figures, report.md and report.html
from prediction CSVs (the output of ``cxr-infer``), never from models."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.artifacts import MetricsReport, Predictions, PredictionsError, unescape_path
from cxr.data import patient_id_from_name
from cxr.errors import InputError
from cxr.reports import figures
from cxr.reports.metrics import (
    binary_metrics,
    confidence_intervals,
    reliability_curve,
    threshold_table,
)
from cxr.reports.robustness import plot_robustness
from cxr.reports.standards import (
    checklist,
    failure_analysis,
    subgroup_columns,
    subgroup_metrics,
)
from cxr.thresholds import choose_val_threshold

# Published figures from other data splits, for context only (not comparable one to one).
PUBLISHED = [
    {
        "name": "Kermany et al. 2018 (paper)",
        "split": "original Kaggle test split (624 images), Inception V3",
        "accuracy": 0.96,
        "precision": 0.97,
        "recall": 0.96,
        "f1": 0.96,
        "roc_auc": 0.991,
    },
    {
        "name": "original notebook, model1",
        "split": "the notebook's image-level random split (patients leak)",
        "accuracy": 0.891,
        "precision": 0.995,
        "recall": 0.855,
        "f1": 0.920,
        "roc_auc": 0.990,
    },
    {
        "name": "original notebook, model2",
        "split": "the notebook's image-level random split (patients leak)",
        "accuracy": 0.880,
        "precision": 0.910,
        "recall": 0.926,
        "f1": 0.918,
        "roc_auc": 0.934,
    },
]


class ReportInputError(InputError, ValueError):
    """A prediction file that cannot be reported on. One-line message."""


def read_predictions(path: str | Path) -> tuple[pd.DataFrame, str]:
    """A predictions CSV and its positive-class probability column name."""
    try:
        return Predictions.read(path)
    except PredictionsError as exc:
        raise ReportInputError(str(exc)) from None


def _labelled(frame: pd.DataFrame, prob_col: str, classes: list[str]) -> pd.DataFrame:
    usable = frame[(frame["error"] == "") & frame["true_label"].isin(classes) & (frame[prob_col] != "")].copy()
    usable["y"] = (usable["true_label"] == classes[1]).astype(int)
    usable["p"] = usable[prob_col].astype(float)
    known = usable["patient_id"] != ""
    usable.loc[~known, "patient_id"] = [patient_id_from_name(Path(p).name) for p in usable.loc[~known, "path"]]
    return usable


def _block(y, p, threshold, groups, n_boot, seed) -> dict[str, Any]:
    ci, method = confidence_intervals(y, p, threshold, groups, n_boot=n_boot, seed=seed)
    return {
        "threshold": float(threshold),
        "metrics": binary_metrics(y, p, threshold),
        "ci95": ci,
        "ci_method": method,
        "n_positive": int(np.sum(y)),
        "n_negative": int(len(y) - np.sum(y)),
    }


def _model_name(frame: pd.DataFrame, path: Path) -> str:
    names = sorted(set(frame.get("model", pd.Series([], dtype=str))) - {""})
    return names[0].replace(".onnx", "") if len(names) == 1 else path.stem  # "model1", "model1+tta"


def evaluate_predictions(
    frame: pd.DataFrame,
    prob_col: str,
    *,
    val_threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    images_root: Path | None = None,
    group_table: pd.DataFrame | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics (with CIs) of one prediction table at 0.5, at the model's threshold and at the
    validation-chosen threshold."""
    positive = prob_col[2:]
    negatives = sorted(set(frame["true_label"]) - {positive, ""})
    classes = [negatives[0] if negatives else "NEGATIVE", positive]
    data = _labelled(frame, prob_col, classes)
    if len(data) == 0 or data["y"].nunique() < 2:
        unscored = frame[(frame["error"] == "") & (frame[prob_col] == "") & (frame["true_label"] != "")]
        why = (
            f" ({len(unscored)} labelled images were left unscored as outside the training domain by "
            "--foreign skip; rerun with --foreign flag to score them)"
            if len(unscored)
            else ""
        )
        raise ReportInputError("need labelled predictions of both classes to compute metrics" + why)
    y, p, groups = data["y"].to_numpy(), data["p"].to_numpy(), data["patient_id"].to_numpy()
    model_threshold = float(frame["threshold"].iloc[0]) if "threshold" in frame and len(frame) else 0.5
    scored = (frame["error"] == "") & (frame[prob_col] != "")
    result = {
        "classes": classes,
        "n_rows": int(len(frame)),
        "n_scored": int(scored.sum()),
        "n_unscored_outside_domain": int(((frame["error"] == "") & ~scored).sum()),
        "n_errors": int((frame["error"] != "").sum()),
        "n_labelled": int(len(data)),
        "n_patients": int(len(set(groups))),
        "bootstrap": {"n": n_boot, "seed": seed, "unit": "patient"},
        "model_sha256": sorted(set(frame.get("model_sha256", [""])))[0] if len(frame) else "",
        "at_0.5": _block(y, p, 0.5, groups, n_boot, seed),
    }
    result["at_model_threshold"] = (
        result["at_0.5"] if model_threshold == 0.5 else _block(y, p, model_threshold, groups, n_boot, seed)
    )
    if val_threshold is not None:
        result["at_val_threshold"] = _block(y, p, val_threshold, groups, n_boot, seed)
    grid = sorted(
        {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, model_threshold}
        | ({val_threshold} if val_threshold is not None else set())
    )
    result["threshold_table"] = threshold_table(y, p, grid)
    columns = subgroup_columns(data, classes[0], images_root, group_table)
    result["subgroups"] = subgroup_metrics(data, model_threshold, columns, n_boot=n_boot, seed=seed)
    result["failure_analysis"] = failure_analysis(data, model_threshold, classes, columns)
    if settings is not None:
        result["domain"] = domain_section(frame, prob_col, data, settings, model_threshold, n_boot, seed)
    return result


def _figures(
    name: str,
    frame: pd.DataFrame,
    prob_col: str,
    result: dict,
    out: Path,
    images_root: Path | None,
    seed: int,
    cam_model=None,
) -> dict[str, str]:
    from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

    data = _labelled(frame, prob_col, result["classes"])
    y, p = data["y"].to_numpy(), data["p"].to_numpy()
    t = result["at_model_threshold"]["threshold"]
    made = {}
    made["confusion"] = figures.plot_confusion(
        confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]),
        result["classes"],
        out / f"{name}confusion.png",
        title=f"confusion matrix at threshold {t:.3g}",
    )
    fpr, tpr, _ = roc_curve(y, p)
    at_t = result["at_model_threshold"]["metrics"]
    made["roc"] = figures.plot_roc(
        fpr,
        tpr,
        (1 - at_t["specificity"], at_t["recall"]),
        t,
        result["at_0.5"]["metrics"]["roc_auc"],
        out / f"{name}roc.png",
    )
    precision, recall, _ = precision_recall_curve(y, p)
    made["pr"] = figures.plot_curve(
        recall,
        precision,
        out / f"{name}pr.png",
        xlabel="recall",
        ylabel="precision",
        baseline=float(y.mean()),
        title=f"precision-recall, AP {result['at_0.5']['metrics']['pr_auc']:.3f}",
    )
    before = None
    calibration = (result.get("settings") or {}).get("calibration")
    if calibration:
        raw = uncalibrated(p, calibration)
        ece_raw = binary_metrics(y, raw, 0.5)["ece"]
        before = (*reliability_curve(y, raw)[:2], f"before calibration (ECE {ece_raw:.3f})")
    made["reliability"] = figures.plot_reliability(
        *reliability_curve(y, p),
        out / f"{name}reliability.png",
        title=f"reliability, ECE {result['at_0.5']['metrics']['ece']:.3f}",
        before=before,
    )
    made["error_p"] = figures.plot_error_probabilities(result["failure_analysis"], t, out / f"{name}error_p.png")
    if images_root is not None:
        made.update(
            _image_grids(name, data, t, result["classes"], out, images_root, seed, cam_model, result.get("domain"))
        )
    return {k: Path(v).name for k, v in made.items()}


def uncalibrated(p: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """The model's probabilities before its calibration step (``sigmoid(a * logit + b)`` undone)."""
    p = np.clip(np.asarray(p, float), 1e-12, 1 - 1e-12)
    logit = (np.log(p / (1 - p)) - float(calibration["b"])) / float(calibration["a"])
    return 1.0 / (1.0 + np.exp(-logit))


OUTSIDE = "outside training domain"
FLAGGED_LISTED = 24


def domain_section(
    frame: pd.DataFrame,
    prob_col: str,
    data: pd.DataFrame,
    settings: dict[str, Any],
    threshold: float,
    n_boot: int,
    seed: int,
) -> dict[str, Any] | None:
    """What the domain guard said about these predictions: how many flagged, the shift verdict,
    the flagged images (highest score first) and the metrics on the in-domain rows."""
    if not settings.get("guard") or "domain_score" not in frame:
        return None
    outside = frame["qc"].str.contains(OUTSIDE, regex=False)
    scores = pd.to_numeric(frame["domain_score"], errors="coerce")
    flagged = frame[outside].assign(score=scores[outside]).sort_values("score", ascending=False)
    section = {
        "guard": settings["guard"],
        "n_with_score": int(scores.notna().sum()),
        "n_flagged": int(outside.sum()),
        "shift": settings.get("shift"),
        "foreign": settings.get("foreign", "flag"),
        "flagged": [
            {
                "path": r.path,
                "domain_score": float(r.score),
                "p": float(r[prob_col]) if r[prob_col] != "" else None,
                "qc": r.qc,
            }
            for _, r in flagged.head(FLAGGED_LISTED).iterrows()
        ],
    }
    inside = data[~data["qc"].str.contains(OUTSIDE, regex=False)]
    if outside.any() and len(inside) and inside["y"].nunique() == 2:
        y, p, groups = inside["y"].to_numpy(), inside["p"].to_numpy(), inside["patient_id"].to_numpy()
        section["in_domain"] = {"n": int(len(inside)), **_block(y, p, threshold, groups, n_boot, seed)}
    return section


def _with_cam(image: np.ndarray, path: Path, cam_model) -> np.ndarray:
    """The image with the model's Grad-CAM overlaid (computed at the model's input size)."""
    from cxr.imaging import decode_or_error

    model_input, _ = decode_or_error(path, cam_model.info.input_size)
    if model_input is None:
        return image
    return figures.cam_overlay(image, cam_model.explain(model_input[None])[1][0])


def _thumbnail_grid(
    items: list[dict[str, Any]], root: Path, out: Path, caption, title: str, cam_model=None
) -> Path | None:
    """Thumbnails of the listed images (``item["path"]`` under ``root``; Grad-CAM overlaid with its
    colour bar when ``cam_model`` is given), each captioned ``caption(item)``; None when none decodes."""
    from cxr.imaging import decode_or_error

    images, titles = [], []
    for item in items:
        path = Path(root) / unescape_path(item["path"])
        arr, _ = decode_or_error(path, 224)
        if arr is None:
            continue
        images.append(_with_cam(arr, path, cam_model) if cam_model is not None else arr)
        titles.append(f"{path.name[:24]}\n{caption(item)}")
    if not images:
        return None
    decorate = figures.cam_colorbar if cam_model is not None else None
    return figures.save_image_grid(images, out, titles, title, decorate=decorate)


def _flagged_grid(flagged: list[dict[str, Any]], root: Path, out: Path) -> Path | None:
    """Thumbnails of the images the domain guard flagged, highest score first."""
    return _thumbnail_grid(
        flagged,
        root,
        out,
        lambda item: f"score {item['domain_score']:.2f}",
        "images outside the training domain (highest score first)",
    )


def _image_grids(
    name, data, threshold, classes, out, root, seed, cam_model=None, result_domain=None
) -> dict[str, Path]:
    from cxr.imaging import decode_or_error

    suffix = " (Grad-CAM overlays)" if cam_model is not None else ""

    def grid(rows: pd.DataFrame, filename: str, title: str) -> Path | None:
        images, titles, colors = [], [], []
        for row in rows.itertuples():
            path = Path(root) / unescape_path(row.path)
            arr, err = decode_or_error(path, 224)
            if arr is None:
                continue
            if cam_model is not None:
                arr = _with_cam(arr, path, cam_model)
            pred = classes[int(row.p >= threshold)]
            images.append(arr)
            titles.append(f"true {row.true_label}\npred {pred} (p={row.p:.2f})")
            colors.append("green" if pred == row.true_label else "red")
        return (
            figures.save_image_grid(
                images,
                out / filename,
                titles,
                f"{title}; threshold {threshold:.3g}",
                title_colors=colors,
                decorate=cam_bar,
            )
            if images
            else None
        )

    cam_bar = figures.cam_colorbar if cam_model is not None else None

    made = {}
    flagged = (result_domain or {}).get("flagged") or []
    if flagged:
        made["domain_flagged"] = _flagged_grid(flagged[:16], root, out / f"{name}domain_flagged.png")
    sample = data.sample(n=min(16, len(data)), random_state=seed)
    made["samples"] = grid(sample, f"{name}samples.png", f"random test images (seed {seed}){suffix}")
    wrong = data[(data["p"] >= threshold).astype(int) != data["y"]]
    confident = wrong.assign(c=(wrong["p"] - wrong["y"]).abs()).sort_values("c", ascending=False)
    for direction, y_true in (("false_positives", 0), ("false_negatives", 1)):
        made[direction] = grid(
            confident[confident["y"] == y_true].head(8),
            f"{name}{direction}.png",
            f"most confident {direction.replace('_', ' ')}: {classes[y_true]} called {classes[1 - y_true]}{suffix}",
        )
    return {k: v for k, v in made.items() if v is not None}


def _read_history(path: Path) -> pd.DataFrame:
    """A training run's history.csv; a one-line error when it cannot be read."""
    from cxr.messages import first_line

    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"cannot read the history {path}: {first_line(exc)}") from None


def summarize(
    prediction_files: list[str | Path],
    out_dir: str | Path,
    *,
    history: str | Path | list[str | Path] | None = None,
    val_predictions: str | Path | None = None,
    target_recall: float = 0.95,
    threshold_rule: str = "wilson",
    images_root: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    with_figures: bool = True,
    cam_model=None,
    robustness: dict[str, dict] | None = None,
    shortcut: list[dict[str, Any]] | None = None,
    image_grids_for: list[str] | None = None,
    embed_images: bool = True,
    groups: pd.DataFrame | None = None,
    shipped: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Metrics, CIs, threshold analysis, figures and HTML/Markdown report for prediction CSVs.

    ``cam_model``: an OnnxClassifier with a 'cam' output; its Grad-CAM is overlaid on the image grids.
    ``robustness``: per model name, the robustness suite's results (``cxr robustness``).
    ``shortcut``: shortcut checks of the data (``cxr data prepare``'s summary.json), each with a 'source'.
    ``image_grids_for``: the models that get image grids (default: every model).
    ``embed_images``: report.html holds its figures (one self-contained file) or links the PNGs beside it.
    ``shipped``: the models to mark as shipped; the first opens the report's summary.
    ``progress``: called with a line before each step (metrics, figures, the report files)."""
    from cxr.reports.render import write_reports

    say = progress or (lambda line: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    val = choose_val_threshold(val_predictions, target_recall, threshold_rule) if val_predictions else None
    report: dict[str, Any] = {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "val_threshold": val,
        "models": {},
        "published": PUBLISHED,
        "figures": {},
        "shipped": list(shipped or []),
    }
    for path in map(Path, prediction_files):
        frame, prob_col = read_predictions(path)
        name = _model_name(frame, path)
        settings = Predictions.read_settings(path) or {}
        say(f"report: metrics of {name} ({len(frame)} rows, {n_boot} bootstrap resamples)")
        result = evaluate_predictions(
            frame,
            prob_col,
            val_threshold=val["threshold"] if val else None,
            n_boot=n_boot,
            seed=seed,
            group_table=groups,
            images_root=Path(images_root) if images_root else None,
            settings=settings,
        )
        result["predictions"] = str(path)
        result["settings"] = settings
        if with_figures:
            prefix = f"{name}_" if len(prediction_files) > 1 else ""
            root = Path(images_root) if images_root and (image_grids_for is None or name in image_grids_for) else None
            say(f"report: figures of {name}" + (" (with Grad-CAM)" if cam_model is not None and root else ""))
            result["figures"] = _figures(prefix, frame, prob_col, result, out, root, seed, cam_model)
        report["models"][name] = result
    unknown = [name for name in report["shipped"] if name not in report["models"]]
    if unknown:
        raise ReportInputError(
            f"--shipped {unknown[0]}: no such model in these predictions (they hold {', '.join(report['models'])})"
        )
    histories = [history] if isinstance(history, (str, Path)) else list(history or [])
    for path in map(Path, histories) if with_figures else []:
        name = "curves" if len(histories) == 1 else "_".join(path.parent.parts[-2:]) + "_curves"
        report["figures"][name] = figures.plot_history(
            _read_history(path), out / f"{name}.png", title=f"training curves: {path.parent}"
        ).name
    if robustness:
        report["robustness"] = {name: dict(section) for name, section in robustness.items()}
        for name, section in report["robustness"].items():
            if with_figures:
                section["figure"] = plot_robustness(
                    section,
                    out / f"{name}_robustness.png",
                    title=f"{name}: robustness at threshold {section['threshold']:.3g} ({section['n_images']} images)",
                ).name
    if shortcut:
        report["shortcut"] = list(shortcut)
    report["checklist"] = checklist(report)
    MetricsReport.write(out / MetricsReport.FILE, report)
    if with_figures:
        say(f"report: writing {out / 'report.html'} and report.md")
        write_reports(report, out, embed_images)
    return report


SUSPICIOUS_SHOWN = 12


def unlabelled_summary(frame: pd.DataFrame, prob_col: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What a run without labels can say: how many images were called positive at the model's
    threshold, the distribution of P(positive), and the most suspicious images (highest P first)."""
    threshold = float(frame["threshold"].iloc[0]) if "threshold" in frame and len(frame) else 0.5
    scored = frame[(frame["error"] == "") & (frame[prob_col] != "")].assign(p=lambda f: f[prob_col].astype(float))
    p = scored["p"].to_numpy()
    outside = frame["qc"].str.contains(OUTSIDE, regex=False) if "qc" in frame else pd.Series(False, frame.index)
    qc_flagged = (frame["qc"] != "") if "qc" in frame else pd.Series(False, frame.index)
    top = scored.sort_values("p", ascending=False).head(SUSPICIOUS_SHOWN)
    positive = prob_col[2:]
    return {
        "labelled": False,
        "classes": settings.get("classes") or ["NEGATIVE", positive],
        "threshold": threshold,
        "n_rows": int(len(frame)),
        "n_scored": int(len(scored)),
        "n_errors": int((frame["error"] != "").sum()),
        "n_unscored_outside_domain": int(len(frame) - len(scored) - (frame["error"] != "").sum()),
        "n_called_positive": int((p >= threshold).sum()),
        "n_called_negative": int((p < threshold).sum()),
        "n_outside_domain": int(outside.sum()),
        "n_qc_flagged": int(qc_flagged.sum()),
        "p_quantiles": {q: float(np.quantile(p, float(q))) for q in ("0", "0.1", "0.25", "0.5", "0.75", "0.9", "1")}
        if len(p)
        else {},
        "model_sha256": settings.get("model_sha256", ""),
        "suspicious": [{"path": r.path, "p": float(r.p), "qc": getattr(r, "qc", "")} for r in top.itertuples()],
    }


def summarize_unlabelled(
    prediction_file: str | Path,
    out_dir: str | Path,
    *,
    images_root: str | Path | None = None,
    cam_model=None,
    embed_images: bool = True,
) -> dict[str, Any]:
    """metrics.json, figures, report.md and report.html for predictions without ground truth."""
    from cxr.reports.render import write_reports

    out, path = Path(out_dir), Path(prediction_file)
    out.mkdir(parents=True, exist_ok=True)
    frame, prob_col = read_predictions(path)
    settings = Predictions.read_settings(path) or {}
    result = unlabelled_summary(frame, prob_col, settings)
    result.update({"predictions": str(path), "settings": settings})
    scored = pd.to_numeric(frame[prob_col], errors="coerce").dropna().to_numpy()
    result["figures"] = {
        "distribution": figures.plot_probability_distribution(
            scored, result["threshold"], prob_col[2:], out / "distribution.png"
        ).name
    }
    if images_root is not None and result["suspicious"]:
        grid = _suspicious_grid(result, Path(images_root), out / "suspicious.png", cam_model)
        if grid is not None:
            result["figures"]["suspicious"] = grid.name
    report = {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "labelled": False,
        "val_threshold": None,
        "models": {_model_name(frame, path): result},
        "published": PUBLISHED,
        "figures": {},
    }
    MetricsReport.write(out / MetricsReport.FILE, report)
    write_reports(report, out, embed_images)
    return report


def _suspicious_grid(result: dict[str, Any], root: Path, out: Path, cam_model) -> Path | None:
    """Thumbnails (with Grad-CAM where the model has it) of the highest-scored images."""
    positive, threshold = result["classes"][-1], result["threshold"]
    suffix = " (Grad-CAM overlays)" if cam_model is not None else ""
    return _thumbnail_grid(
        result["suspicious"],
        root,
        out,
        lambda item: f"P({positive}) = {item['p']:.3f}",
        f"highest P({positive}) first; threshold {threshold:.3g}{suffix}",
        cam_model,
    )
