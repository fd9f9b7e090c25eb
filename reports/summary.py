"""Report stage core: ``summarize`` builds the metrics report (metrics.json), figures, report.md and
report.html from prediction CSVs (the output of ``cxr-infer``), never from models: Grad-CAM comes in
computed (``ReportInputs.cams``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.artifacts import MetricsReport, Predictions, PredictionsError
from cxr.artifacts.metric_records import (
    BootstrapSpec,
    DomainSection,
    FlaggedImage,
    MetricBlock,
    RunSettings,
    SuspiciousImage,
    threshold_choice_from_dict,
)
from cxr.artifacts.metrics_report import ModelMetrics, UnlabelledMetrics
from cxr.artifacts.report_sections import PublishedResult, RobustnessSection, ShortcutCheck
from cxr.data import patient_id_from_name
from cxr.errors import InputError
from cxr.reports import figures
from cxr.reports.grids import (
    CamOverlays,
    Thumbnails,
    flagged_grid,
    grid_rows,
    labelled_grids,
    suspicious_grid,
)
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
from cxr.thresholds import ThresholdChoice, choose_val_threshold

# Published figures from other data splits, for context only (not comparable one to one).
PUBLISHED = (
    PublishedResult(
        name="Kermany et al. 2018 (paper)",
        split="original Kaggle test split (624 images), Inception V3",
        accuracy=0.96,
        precision=0.97,
        recall=0.96,
        f1=0.96,
        roc_auc=0.991,
    ),
    PublishedResult(
        name="original notebook, model1",
        split="the notebook's image-level random split (patients leak)",
        accuracy=0.891,
        precision=0.995,
        recall=0.855,
        f1=0.920,
        roc_auc=0.990,
    ),
    PublishedResult(
        name="original notebook, model2",
        split="the notebook's image-level random split (patients leak)",
        accuracy=0.880,
        precision=0.910,
        recall=0.926,
        f1=0.918,
        roc_auc=0.934,
    ),
)
THUMBNAIL_SIZE = (
    224  # pixels of the images in the report's grids (a presentation choice, not the model's input)
)
OUTSIDE = "outside training domain"
FLAGGED_LISTED = 24
SUSPICIOUS_SHOWN = 12
THRESHOLD_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
QUANTILES = ("0", "0.1", "0.25", "0.5", "0.75", "0.9", "1")


class ReportInputError(InputError, ValueError):
    """A prediction file that cannot be reported on. One-line message."""


@dataclass(frozen=True)
class ReportOptions:
    """How a report is made: the validation threshold's target recall and rule, the bootstrap, the
    figures (and for which models the image grids; None: every model), whether report.html holds
    its figures, the models marked as shipped (the first opens the summary), the grids' image size."""

    target_recall: float = 0.95
    threshold_rule: str = "wilson"
    n_boot: int = 1000
    seed: int = 0
    with_figures: bool = True
    image_grids_for: tuple[str, ...] | None = None
    embed_images: bool = True
    shipped: tuple[str, ...] = ()
    thumbnail_size: int = THUMBNAIL_SIZE

    def draws_grids_for(self, name: str) -> bool:
        return self.image_grids_for is None or name in self.image_grids_for


DEFAULT_OPTIONS = ReportOptions()


@dataclass(frozen=True)
class ReportInputs:
    """What a report is made of: prediction CSVs, training histories (curves), a run's validation
    predictions (a threshold for the target recall), the folder the predictions' paths are under
    (image grids, size subgroups), robustness sections by model, shortcut checks of the data, a
    subgroup table (``path`` index, a column per factor) and Grad-CAM maps computed by the app."""

    prediction_files: tuple[Path, ...]
    history: tuple[Path, ...] = ()
    val_predictions: Path | None = None
    images_root: Path | None = None
    robustness: dict[str, RobustnessSection] = field(default_factory=dict)
    shortcut: tuple[ShortcutCheck, ...] = ()
    groups: pd.DataFrame | None = None
    cams: CamOverlays | None = None


@dataclass(frozen=True)
class PredictionSet:
    """One predictions CSV as the report reads it: its rows, the probability column (``p_<class>``)
    and the settings it was made with."""

    path: Path
    frame: pd.DataFrame
    prob_col: str
    settings: RunSettings

    @classmethod
    def read(cls, path: Path) -> PredictionSet:
        try:
            frame, prob_col = Predictions.read(path)
        except PredictionsError as exc:
            raise ReportInputError(str(exc)) from None
        return cls(path, frame, prob_col, RunSettings(Predictions.read_settings(path) or {}))

    @property
    def name(self) -> str:
        """The model's name: the one model file named in the rows ("model1"), else the file's stem."""
        names = sorted(set(self.frame.get("model", pd.Series([], dtype=str))) - {""})
        return names[0].replace(".onnx", "") if len(names) == 1 else self.path.stem

    @property
    def positive(self) -> str:
        return self.prob_col[2:]

    @property
    def model_threshold(self) -> float:
        frame = self.frame
        return float(frame["threshold"].iloc[0]) if "threshold" in frame and len(frame) else 0.5

    @property
    def classes(self) -> tuple[str, str]:
        """(negative, positive): the negative class is the other label in the rows."""
        negatives = sorted(set(self.frame["true_label"]) - {self.positive, ""})
        return negatives[0] if negatives else "NEGATIVE", self.positive

    def labelled(self) -> pd.DataFrame:
        """The scored rows with a label of either class, with ``y`` (1: positive), ``p`` and a patient id."""
        frame, prob_col = self.frame, self.prob_col
        usable = frame[
            (frame["error"] == "") & frame["true_label"].isin(self.classes) & (frame[prob_col] != "")
        ].copy()
        usable["y"] = (usable["true_label"] == self.positive).astype(int)
        usable["p"] = usable[prob_col].astype(float)
        known = usable["patient_id"] != ""
        usable.loc[~known, "patient_id"] = [
            patient_id_from_name(Path(p).name) for p in usable.loc[~known, "path"]
        ]
        return usable

    def scored(self) -> pd.Series:
        return (self.frame["error"] == "") & (self.frame[self.prob_col] != "")


def _block(y, p, threshold, groups, n_boot, seed, n: int | None = None) -> MetricBlock:
    ci, method = confidence_intervals(y, p, threshold, groups, n_boot=n_boot, seed=seed)
    return MetricBlock(
        threshold=float(threshold),
        metrics=binary_metrics(y, p, threshold),
        ci95={
            name: None if interval is None else (interval[0], interval[1]) for name, interval in ci.items()
        },
        ci_method=method,
        n_positive=int(np.sum(y)),
        n_negative=int(len(y) - np.sum(y)),
        n=n,
    )


def _refuse_unlabelled(preds: PredictionSet) -> None:
    frame = preds.frame
    unscored = frame[(frame["error"] == "") & (frame[preds.prob_col] == "") & (frame["true_label"] != "")]
    why = (
        f" ({len(unscored)} labelled images were left unscored as outside the training domain by "
        "--foreign skip; rerun with --foreign flag to score them)"
        if len(unscored)
        else ""
    )
    raise ReportInputError("need labelled predictions of both classes to compute metrics" + why)


def _threshold_blocks(
    data: pd.DataFrame, model_threshold: float, val_threshold: float | None, options: ReportOptions
) -> tuple[MetricBlock, MetricBlock, MetricBlock | None]:
    """The metrics at 0.5, at the model's threshold and at the validation threshold (None without one)."""
    y, p, groups = data["y"].to_numpy(), data["p"].to_numpy(), data["patient_id"].to_numpy()
    at_half = _block(y, p, 0.5, groups, options.n_boot, options.seed)
    at_model = (
        at_half
        if model_threshold == 0.5
        else _block(y, p, model_threshold, groups, options.n_boot, options.seed)
    )
    at_val = (
        None if val_threshold is None else _block(y, p, val_threshold, groups, options.n_boot, options.seed)
    )
    return at_half, at_model, at_val


def evaluate_predictions(
    preds: PredictionSet, inputs: ReportInputs, options: ReportOptions, val_threshold: float | None = None
) -> ModelMetrics:
    """Metrics (with CIs) of one prediction table at 0.5, at the model's threshold and at the
    validation-chosen threshold, with the trade-off, subgroups, failures and the domain guard."""
    data = preds.labelled()
    if len(data) == 0 or data["y"].nunique() < 2:
        _refuse_unlabelled(preds)
    frame, classes, model_threshold = preds.frame, preds.classes, preds.model_threshold
    y, p = data["y"].to_numpy(), data["p"].to_numpy()
    at_half, at_model, at_val = _threshold_blocks(data, model_threshold, val_threshold, options)
    grid = sorted(
        {*THRESHOLD_GRID, model_threshold} | ({val_threshold} if val_threshold is not None else set())
    )
    columns = subgroup_columns(data, classes[0], inputs.images_root, inputs.groups)
    scored = preds.scored()
    return ModelMetrics(
        classes=classes,
        n_rows=int(len(frame)),
        n_scored=int(scored.sum()),
        n_unscored_outside_domain=int(((frame["error"] == "") & ~scored).sum()),
        n_errors=int((frame["error"] != "").sum()),
        n_labelled=int(len(data)),
        n_patients=int(len(set(data["patient_id"]))),
        bootstrap=BootstrapSpec(options.n_boot, options.seed, "patient"),
        model_sha256=sorted(set(frame.get("model_sha256", [""])))[0] if len(frame) else "",
        at_half=at_half,
        at_model_threshold=at_model,
        at_val_threshold=at_val,
        threshold_table=threshold_table(y, p, grid),
        subgroups=subgroup_metrics(data, model_threshold, columns, n_boot=options.n_boot, seed=options.seed),
        failure_analysis=failure_analysis(data, model_threshold, classes, columns),
        domain=domain_section(preds, data, model_threshold, options),
        predictions=str(preds.path),
        settings=preds.settings,
    )


def uncalibrated(p: np.ndarray, a: float, b: float) -> np.ndarray:
    """The model's probabilities before its calibration step (``sigmoid(a * logit + b)`` undone)."""
    p = np.clip(np.asarray(p, float), 1e-12, 1 - 1e-12)
    logit = (np.log(p / (1 - p)) - float(b)) / float(a)
    return 1.0 / (1.0 + np.exp(-logit))


def _flagged_images(preds: PredictionSet, outside: pd.Series) -> tuple[FlaggedImage, ...]:
    """The images the guard flagged, highest score first (at most ``FLAGGED_LISTED``)."""
    frame, prob_col = preds.frame, preds.prob_col
    scores = pd.to_numeric(frame["domain_score"], errors="coerce")
    flagged = frame[outside].assign(score=scores[outside]).sort_values("score", ascending=False)
    return tuple(
        FlaggedImage(
            path=r.path,
            domain_score=float(r.score),
            p=float(r[prob_col]) if r[prob_col] != "" else None,
            qc=r.qc,
        )
        for _, r in flagged.head(FLAGGED_LISTED).iterrows()
    )


def domain_section(
    preds: PredictionSet, data: pd.DataFrame, threshold: float, options: ReportOptions
) -> DomainSection | None:
    """What the domain guard said about these predictions: how many flagged, the shift verdict,
    the flagged images (highest score first) and the metrics on the in-domain rows."""
    frame, settings = preds.frame, preds.settings
    guard = settings.guard
    if guard is None or "domain_score" not in frame:
        return None
    outside = frame["qc"].str.contains(OUTSIDE, regex=False)
    inside = data[~data["qc"].str.contains(OUTSIDE, regex=False)]
    in_domain = None
    if outside.any() and len(inside) and inside["y"].nunique() == 2:
        y, p, groups = inside["y"].to_numpy(), inside["p"].to_numpy(), inside["patient_id"].to_numpy()
        in_domain = _block(y, p, threshold, groups, options.n_boot, options.seed, n=int(len(inside)))
    return DomainSection(
        guard=guard,
        n_with_score=int(pd.to_numeric(frame["domain_score"], errors="coerce").notna().sum()),
        n_flagged=int(outside.sum()),
        shift=settings.shift,
        foreign=settings.foreign,
        flagged=_flagged_images(preds, outside),
        in_domain=in_domain,
    )


def _curve_figures(data: pd.DataFrame, result: ModelMetrics, prefix: str, out: Path) -> dict[str, Path]:
    """Confusion matrix, ROC, precision-recall and reliability diagram of one model."""
    from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

    y, p = data["y"].to_numpy(), data["p"].to_numpy()
    t = result.at_model_threshold.threshold
    at_t, at_half = result.at_model_threshold.metrics, result.at_half.metrics
    made = {}
    made["confusion"] = figures.plot_confusion(
        confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]),
        result.classes,
        out / f"{prefix}confusion.png",
        title=f"confusion matrix at threshold {t:.3g}",
    )
    fpr, tpr, _ = roc_curve(y, p)
    made["roc"] = figures.plot_roc(
        fpr, tpr, (1 - at_t["specificity"], at_t["recall"]), t, at_half["roc_auc"], out / f"{prefix}roc.png"
    )
    precision, recall, _ = precision_recall_curve(y, p)
    made["pr"] = figures.plot_curve(
        recall,
        precision,
        out / f"{prefix}pr.png",
        xlabel="recall",
        ylabel="precision",
        baseline=float(y.mean()),
        title=f"precision-recall, AP {at_half['pr_auc']:.3f}",
    )
    made["reliability"] = _reliability_figure(y, p, result, out / f"{prefix}reliability.png")
    return made


def _reliability_figure(y: np.ndarray, p: np.ndarray, result: ModelMetrics, out: Path) -> Path:
    """The reliability diagram, with the curve before calibration where the model was calibrated."""
    before = None
    calibration = result.settings.calibration
    if calibration:
        raw = uncalibrated(p, calibration.a, calibration.b)
        ece_raw = binary_metrics(y, raw, 0.5)["ece"]
        before = (*reliability_curve(y, raw)[:2], f"before calibration (ECE {ece_raw:.3f})")
    return figures.plot_reliability(
        *reliability_curve(y, p),
        out,
        title=f"reliability, ECE {result.at_half.metrics['ece']:.3f}",
        before=before,
    )


def _figures(
    preds: PredictionSet,
    result: ModelMetrics,
    prefix: str,
    out: Path,
    thumbnails: Thumbnails | None,
    seed: int,
) -> dict[str, str]:
    """Every figure of one model, by name (file names in ``out``); image grids only with ``thumbnails``."""
    data = preds.labelled()
    t = result.at_model_threshold.threshold
    made = _curve_figures(data, result, prefix, out)
    made["error_p"] = figures.plot_error_probabilities(
        result.failure_analysis, t, out / f"{prefix}error_p.png"
    )
    if thumbnails is not None:
        flagged = result.domain.flagged if result.domain else ()
        grid = flagged_grid(flagged, thumbnails, out / f"{prefix}domain_flagged.png") if flagged else None
        if grid is not None:
            made["domain_flagged"] = grid
        made.update(labelled_grids(prefix, data, result.classes, t, thumbnails, out, seed))
    return {k: Path(v).name for k, v in made.items()}


def _grid_models(inputs: ReportInputs, options: ReportOptions) -> list[PredictionSet]:
    """The prediction sets whose models get image grids."""
    if not (options.with_figures and inputs.images_root):
        return []
    sets = [PredictionSet.read(path) for path in inputs.prediction_files]
    return [preds for preds in sets if options.draws_grids_for(preds.name)]


def images_shown(inputs: ReportInputs, options: ReportOptions) -> tuple[str, ...]:
    """The images (paths as in the predictions) that the report's sample and error grids will show:
    those the app layer computes Grad-CAM for before ``summarize``."""
    shown: dict[str, None] = {}
    for preds in _grid_models(inputs, options):
        data = preds.labelled()
        if len(data) == 0 or data["y"].nunique() < 2:
            continue
        for rows in grid_rows(data, preds.model_threshold, options.seed).values():
            shown.update(dict.fromkeys(rows["path"]))
    return tuple(shown)


def _read_history(path: Path) -> pd.DataFrame:
    """A training run's history.csv; a one-line error when it cannot be read."""
    from cxr.messages import first_line

    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"cannot read the history {path}: {first_line(exc)}") from None


def _curves(histories: tuple[Path, ...], out: Path) -> dict[str, str]:
    """The training curves of each history, by name (file names in ``out``)."""
    made = {}
    for path in histories:
        name = "curves" if len(histories) == 1 else "_".join(path.parent.parts[-2:]) + "_curves"
        made[name] = figures.plot_history(
            _read_history(path), out / f"{name}.png", title=f"training curves: {path.parent}"
        ).name
    return made


def _robustness(inputs: ReportInputs, out: Path, with_figures: bool) -> dict[str, RobustnessSection] | None:
    """The robustness sections, each with its figure when figures are drawn; None without any."""
    if not inputs.robustness:
        return None
    if not with_figures:
        return dict(inputs.robustness)
    return {
        name: replace(
            section,
            figure=plot_robustness(
                section,
                out / f"{name}_robustness.png",
                title=f"{name}: robustness at threshold {section.threshold:.3g} ({section.n_images} images)",
            ).name,
        )
        for name, section in inputs.robustness.items()
    }


def _model_results(
    inputs: ReportInputs,
    out: Path,
    options: ReportOptions,
    val: ThresholdChoice | None,
    say: Callable[[str], None],
) -> dict[str, ModelMetrics]:
    """Each prediction file's metrics (and figures), by model name."""
    results = {}
    for path in inputs.prediction_files:
        preds = PredictionSet.read(Path(path))
        say(
            f"report: metrics of {preds.name} ({len(preds.frame)} rows, {options.n_boot} bootstrap resamples)"
        )
        result = evaluate_predictions(preds, inputs, options, val.threshold if val else None)
        if options.with_figures:
            prefix = f"{preds.name}_" if len(inputs.prediction_files) > 1 else ""
            thumbnails = (
                Thumbnails(Path(inputs.images_root), options.thumbnail_size, inputs.cams)
                if inputs.images_root and options.draws_grids_for(preds.name)
                else None
            )
            cam = " (with Grad-CAM)" if inputs.cams is not None and thumbnails else ""
            say(f"report: figures of {preds.name}{cam}")
            result = replace(result, figures=_figures(preds, result, prefix, out, thumbnails, options.seed))
        results[preds.name] = result
    return results


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def summarize(
    inputs: ReportInputs,
    out_dir: str | Path,
    options: ReportOptions = DEFAULT_OPTIONS,
    progress: Callable[[str], None] | None = None,
) -> MetricsReport:
    """Metrics, CIs, threshold analysis, figures and HTML/Markdown report for prediction CSVs;
    ``progress`` is called with a line before each step (metrics, figures, the report files)."""
    from cxr.reports.render import write_reports

    say = progress or (lambda line: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    val = None
    if inputs.val_predictions:
        chosen = choose_val_threshold(inputs.val_predictions, options.target_recall, options.threshold_rule)
        val = threshold_choice_from_dict(chosen)
    generated = _now()
    models = _model_results(inputs, out, options, val, say)
    unknown = [name for name in options.shipped if name not in models]
    if unknown:
        raise ReportInputError(
            f"--shipped {unknown[0]}: no such model in these predictions (they hold {', '.join(models)})"
        )
    report = MetricsReport(
        generated=generated,
        models=models,
        val_threshold=val,
        published=PUBLISHED,
        figures=_curves(tuple(inputs.history), out) if options.with_figures else {},
        shipped=tuple(options.shipped),
        robustness=_robustness(inputs, out, options.with_figures),
        shortcut=tuple(inputs.shortcut) or None,
    )
    report = replace(report, checklist=checklist(report))
    report.write(out / MetricsReport.FILE)
    if options.with_figures:
        say(f"report: writing {out / 'report.html'} and report.md")
        write_reports(report, out, options.embed_images)
    return report


def unlabelled_summary(preds: PredictionSet) -> UnlabelledMetrics:
    """What a run without labels can say: how many images were called positive at the model's
    threshold, the distribution of P(positive), and the most suspicious images (highest P first)."""
    frame, threshold = preds.frame, preds.model_threshold
    scored = frame[preds.scored()].assign(p=lambda f: f[preds.prob_col].astype(float))
    p = scored["p"].to_numpy()
    outside = (
        frame["qc"].str.contains(OUTSIDE, regex=False) if "qc" in frame else pd.Series(False, frame.index)
    )
    qc_flagged = (frame["qc"] != "") if "qc" in frame else pd.Series(False, frame.index)
    top = scored.sort_values("p", ascending=False).head(SUSPICIOUS_SHOWN)
    n_errors = int((frame["error"] != "").sum())
    return UnlabelledMetrics(
        classes=preds.settings.classes or ("NEGATIVE", preds.positive),
        threshold=threshold,
        n_rows=int(len(frame)),
        n_scored=int(len(scored)),
        n_errors=n_errors,
        n_unscored_outside_domain=int(len(frame) - len(scored) - n_errors),
        n_called_positive=int((p >= threshold).sum()),
        n_called_negative=int((p < threshold).sum()),
        n_outside_domain=int(outside.sum()),
        n_qc_flagged=int(qc_flagged.sum()),
        p_quantiles={q: float(np.quantile(p, float(q))) for q in QUANTILES} if len(p) else {},
        model_sha256=preds.settings.model_sha256,
        suspicious=tuple(SuspiciousImage(r.path, float(r.p), getattr(r, "qc", "")) for r in top.itertuples()),
        predictions=str(preds.path),
        settings=preds.settings,
    )


def images_to_review(prediction_file: Path) -> tuple[str, ...]:
    """The images (paths as in the predictions) that a report without labels shows first: those
    the app layer computes Grad-CAM for before ``summarize_unlabelled``."""
    return tuple(
        item.path for item in unlabelled_summary(PredictionSet.read(Path(prediction_file))).suspicious
    )


def _unlabelled_figures(
    preds: PredictionSet, result: UnlabelledMetrics, inputs: ReportInputs, out: Path, options: ReportOptions
) -> dict[str, str]:
    scored = pd.to_numeric(preds.frame[preds.prob_col], errors="coerce").dropna().to_numpy()
    made = {
        "distribution": figures.plot_probability_distribution(
            scored, result.threshold, preds.positive, out / "distribution.png"
        ).name
    }
    if inputs.images_root is not None and result.suspicious:
        thumbnails = Thumbnails(Path(inputs.images_root), options.thumbnail_size, inputs.cams)
        grid = suspicious_grid(
            result.suspicious, result.classes[-1], result.threshold, thumbnails, out / "suspicious.png"
        )
        if grid is not None:
            made["suspicious"] = grid.name
    return made


def summarize_unlabelled(
    inputs: ReportInputs, out_dir: str | Path, options: ReportOptions = DEFAULT_OPTIONS
) -> MetricsReport:
    """metrics.json, figures, report.md and report.html for predictions without ground truth (the
    first of ``inputs.prediction_files``)."""
    from cxr.reports.render import write_reports

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds = PredictionSet.read(Path(inputs.prediction_files[0]))
    result = unlabelled_summary(preds)
    result = replace(result, figures=_unlabelled_figures(preds, result, inputs, out, options))
    report = MetricsReport(generated=_now(), models={preds.name: result}, published=PUBLISHED)
    report.write(out / MetricsReport.FILE)
    write_reports(report, out, options.embed_images)
    return report
