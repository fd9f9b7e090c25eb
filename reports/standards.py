"""What the reporting guidelines for clinical prediction models and imaging AI ask of a report
(TRIPOD+AI, BMJ 2024; CLAIM 2024): performance by subgroup with CIs (TRIPOD+AI 23a), a
checklist answered from the run's own facts, and a failure analysis of the errors (CLAIM 39).

Subgroups come from the data itself: bacterial vs viral pneumonia (Kermany file names), the
original image's size band (read from the file header, where the images are at hand), and any
column of a ``--groups`` CSV (``path,group...``). A subgroup with too few patients for a
bootstrap CI is shown and flagged, never dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.artifacts import unescape_path
from cxr.artifacts.metric_records import FailureDirection, Interval, SubgroupRow
from cxr.artifacts.metrics_report import MetricsReport, ModelEntry, ModelMetrics
from cxr.artifacts.report_sections import ChecklistItem
from cxr.reports.metrics import MIN_PER_CLASS, wilson_interval

SIZE_BANDS = ((0, "< 1000 px"), (1000, "1000-1999 px"), (2000, ">= 2000 px"))
_TYPE = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)


def pneumonia_type(path: str, label: str, negative: str) -> str:
    """'bacterial', 'viral', the negative class name, or 'unknown' (from Kermany file names)."""
    match = _TYPE.search(path.rsplit("/", 1)[-1])
    if match:
        return "bacterial" if match.group(1).lower() == "bacteria" else "viral"
    return negative if label == negative else "unknown"


def size_band(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as img:
            longest = max(img.size)
    except Exception:  # noqa: BLE001 - DICOM or unreadable: unknown
        return "unknown"
    return [name for low, name in SIZE_BANDS if longest >= low][-1]


def read_groups_csv(path: str | Path) -> pd.DataFrame:
    """``path,group...``: one or more subgroup columns per file (paths as in the predictions)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "path" not in frame.columns or len(frame.columns) < 2:
        raise ValueError(f"groups file {path} needs a 'path' column and at least one group column")
    return frame.drop_duplicates("path").set_index("path")


def subgroup_columns(
    data: pd.DataFrame, negative: str, images_root: Path | None, groups: pd.DataFrame | None
) -> dict[str, pd.Series]:
    columns = {
        "pneumonia type (file name)": pd.Series(
            [pneumonia_type(p, t, negative) for p, t in zip(data["path"], data["true_label"])],
            index=data.index,
        )
    }
    if images_root is not None:
        columns["original size band"] = pd.Series(
            [size_band(Path(images_root) / unescape_path(p)) for p in data["path"]], index=data.index
        )
    for column in groups.columns if groups is not None else []:
        columns[column] = data["path"].map(groups[column]).fillna("(not in groups file)")
    return columns


def _auc_ci(
    y: np.ndarray, p: np.ndarray, patients: np.ndarray, n_boot: int, seed: int
) -> tuple[float, Interval]:
    from sklearn.metrics import roc_auc_score

    from cxr.reports.metrics import bootstrap_ci

    low, high = bootstrap_ci(y, p, 0.5, patients, n_boot=n_boot, seed=seed)["roc_auc"]
    return float(roc_auc_score(y, p)), (low, high)


def subgroup_metrics(
    data: pd.DataFrame, threshold: float, columns: dict[str, pd.Series], *, n_boot: int = 1000, seed: int = 0
) -> tuple[SubgroupRow, ...]:
    """Per subgroup: counts, recall / specificity / accuracy with Wilson intervals and ROC AUC with a
    patient-bootstrap interval. No interval from fewer than ``MIN_PER_CLASS`` trials (``flag`` says
    so), and no subgroup of a factor that puts every image in one group."""
    rows = []
    for column, values in columns.items():
        if values.nunique() < 2:
            continue
        for value in sorted(values.unique()):
            rows.append(_subgroup_row(data[values == value], column, value, threshold, n_boot, seed))
    return tuple(rows)


def _proportion_masks(y: np.ndarray, pred: np.ndarray) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    """(metric, the images it counts, the images it counts as hits) of each proportion."""
    return (
        ("recall", y == 1, pred == 1),
        ("specificity", y == 0, pred == 0),
        ("accuracy", np.ones_like(y, bool), pred == y),
    )


def _subgroup_row(
    part: pd.DataFrame, column: str, value: str, threshold: float, n_boot: int, seed: int
) -> SubgroupRow:
    y, p, patients = part["y"].to_numpy(), part["p"].to_numpy(), part["patient_id"].to_numpy()
    n_positive, n_negative = int(y.sum()), int((1 - y).sum())
    metrics: dict[str, float] = {}
    ci95: dict[str, Interval | None] = {}
    too_few = []
    for name, mask, hit in _proportion_masks(y, (p >= threshold).astype(int)):
        if mask.any():
            metrics[name] = float(hit[mask].mean())
            if mask.sum() >= MIN_PER_CLASS:
                low, high = wilson_interval(int(hit[mask].sum()), int(mask.sum()))
                ci95[name] = (low, high)
            else:
                too_few.append(name)
    if len(np.unique(y)) == 2:
        metrics["roc_auc"], ci = _auc_ci(y, p, patients, n_boot, seed)
        if min(n_positive, n_negative) >= MIN_PER_CLASS:
            ci95["roc_auc"] = ci
        else:
            too_few.append("roc_auc")
    flag = (
        f"too few images for an interval ({', '.join(too_few)}; fewer than {MIN_PER_CLASS})"
        if too_few
        else ""
    )
    return SubgroupRow(
        factor=column,
        group=value,
        n_images=int(len(part)),
        n_patients=len(set(patients)),
        n_positive=n_positive,
        n_negative=n_negative,
        metrics=metrics,
        ci95=ci95,
        flag=flag,
    )


def failure_analysis(
    data: pd.DataFrame, threshold: float, classes: tuple[str, str], columns: dict[str, pd.Series]
) -> dict[str, FailureDirection]:
    """Per error direction: count, the distribution of p, and the subgroups the errors fall in."""
    pred = (data["p"] >= threshold).astype(int)
    directions = {
        "false_positive": (data["y"] == 0) & (pred == 1),
        "false_negative": (data["y"] == 1) & (pred == 0),
    }
    result = {}
    for name, mask in directions.items():
        p = data.loc[mask, "p"].to_numpy()
        truth, called = (classes[0], classes[1]) if name == "false_positive" else (classes[1], classes[0])
        result[name] = FailureDirection(
            description=f"{truth} called {called}",
            n=int(mask.sum()),
            p_quantiles={q: float(np.quantile(p, float(q))) for q in ("0", "0.25", "0.5", "0.75", "1")}
            if len(p)
            else {},
            p_values=tuple(float(v) for v in np.sort(p)),
            subgroups={
                factor: {str(k): int(v) for k, v in values[mask].value_counts().items()}
                for factor, values in columns.items()
            },
        )
    return result


def external_data_sentence(result: ModelEntry) -> str:
    """Whether the evaluated images come from the training source, from the run's facts: a split
    of the training manifest is the same source; anything else is another source, with the
    set-level shift verdict where the model has a domain guard."""
    settings = result.settings
    source = settings.labels_source
    if source.startswith("manifest"):
        return (
            f"same source as training ({source}): a held-out, patient-disjoint split, so this is internal, "
            "not external, validation"
        )
    domain = result.domain if isinstance(result, ModelMetrics) else None
    shift = (domain.shift if domain else None) or settings.shift
    verdict = (
        shift.line()
        if shift
        else (
            "no shift test (the model has no domain guard)"
            if settings.guard is None
            else "no shift test (too few images)"
        )
    )
    return (
        f"other source (images not from the training manifest; labels from {source or 'folder names'}); "
        f"{verdict}"
    )


def _threshold_rules(models: dict[str, ModelEntry]) -> list[str]:
    from cxr.thresholds import describe_rule

    rules = []
    for name, result in models.items():
        rule = result.settings.threshold_rule
        if "rule" in rule:
            rules.append(f"{name}: {describe_rule({'threshold': result.threshold, **rule})}")
    return rules


def _input_handling(models: dict[str, ModelEntry]) -> str:
    errors = sum(r.n_errors for r in models.values())
    flagged = sum(r.settings.n_qc_flagged for r in models.values())
    outside = sum(r.settings.n_outside_domain for r in models.values())
    unscored = sum(r.n_unscored_outside_domain or 0 for r in models.values())
    return (
        f"every file gets a row; unreadable files get an error row and no prediction ({errors} across "
        f"{len(models)} prediction sets here); suspect images are flagged in the 'qc' column with the reason "
        f"({flagged} here, {outside} of them outside the training domain: uniform, colour, tiny, "
        f"a DICOM header against the model, a guessed bit depth, or unlike the training images)"
        + (f"; {unscored} flagged images were left unscored (--foreign skip)" if unscored else "")
        + "; none is silently dropped"
    )


def checklist(report: MetricsReport) -> tuple[ChecklistItem, ...]:
    """TRIPOD+AI / CLAIM 2024 items, each answered from this report's facts or 'not available' with why."""
    models = report.models
    first = report.labelled_model()
    summaries = report.shortcut or ()
    split_levels = sorted({s.split_by for s in summaries} - {""})
    rows = []

    def add(item: str, ref: str, answer: str) -> None:
        rows.append(ChecklistItem(item, ref, answer))

    add(
        "Performance with CIs in key subgroups",
        "TRIPOD+AI 23a",
        "see the subgroup tables (95% intervals: Wilson for proportions, patient bootstrap for ROC AUC; "
        f"no interval from fewer than {MIN_PER_CLASS} images, which the table flags)"
        if first.subgroups
        else "not available: no subgroup could be derived from these predictions",
    )
    rules = _threshold_rules(models)
    add(
        "How the decision threshold was chosen",
        "TRIPOD+AI 15",
        "; ".join(rules) if rules else "not available: the predictions carry no threshold rule (older files)",
    )
    source = first.settings.labels_source
    add(
        "Differences between development and evaluation data",
        "TRIPOD+AI 16",
        f"evaluation data: {source or 'labels from folder names'}; "
        + (
            "a held-out, patient-disjoint split of the development source: same centre, scanner mix and "
            "preprocessing, so it measures internal, not external, validity"
            if "manifest" in source
            else "its relation to the development data is not recorded in these predictions"
        ),
    )
    add("Handling of poor-quality or unusable inputs", "TRIPOD+AI 27a", _input_handling(models))
    add(
        "Level at which partitions are disjoint",
        "CLAIM 20",
        f"split by {', '.join(split_levels)} (cxr data prepare: StratifiedGroupKFold grouped by patient)"
        if split_levels
        else (
            "patient (manifest split from cxr data prepare)"
            if "manifest" in source
            else "not available: no split manifest was given for these predictions"
        ),
    )
    robustness = report.robustness or {}
    add(
        "Robustness analysis",
        "CLAIM 30",
        f"robustness suite ({len(next(iter(robustness.values())).perturbations) - 1} seeded perturbations) "
        f"for {', '.join(robustness)}; see the robustness tables"
        if robustness
        else "not available: run cxr robustness (or cxr evaluate --robustness) and pass --robustness",
    )
    add(
        "Failure analysis of misclassified cases",
        "CLAIM 39",
        "see the failure analysis: per error direction the distribution of p, the subgroups, and Grad-CAM "
        "overlays of the most confident errors"
        if first.failure_analysis
        else "not available",
    )
    add(
        "Intended use",
        "CLAIM 41 / TRIPOD+AI 4",
        "research only: a second reader on pediatric AP/PA chest X-rays; not a medical device, "
        "not for triage without a clinician",
    )
    add("External testing", "CLAIM 33 / TRIPOD+AI 12", external_data_sentence(first))
    if summaries:
        add(
            "Shortcut (confounding) check",
            "CLAIM 9 / TRIPOD+AI 26",
            "; ".join(f"{s.source or 'data'}: {s.verdict}" for s in summaries),
        )
    return tuple(rows)
