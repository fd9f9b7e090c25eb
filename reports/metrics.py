"""Binary classification metrics with patient-level bootstrap CIs and threshold tables.

ROC AUC and PR AUC always come from probabilities, never from hard labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from cxr.artifacts import METRIC_NAMES  # the one list, owned by the metrics.json artifact
from cxr.artifacts.metric_records import ThresholdRow
from cxr.calibration import expected_calibration_error

METRIC_ORDER = METRIC_NAMES


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    return {
        "loss": float(skm.log_loss(y, p, labels=[0, 1])),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(skm.average_precision_score(y, p)) if both else float("nan"),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)) if both else float("nan"),
        "mcc": float(skm.matthews_corrcoef(y, pred)),
        "brier": float(skm.brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
    }


ECE_BINS = 10


def _resample_weights(n: int, groups, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) image weights: how often each image is drawn when whole patients (or, without
    groups, images) are resampled with replacement; the same draws as one draw per resample."""
    rng = np.random.default_rng(seed)
    if groups is None:
        inverse, n_groups = np.arange(n), n
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        n_groups = int(inverse.max()) + 1
    picked = rng.integers(0, n_groups, (n_boot, n_groups))
    counts = np.zeros((n_boot, n_groups))
    np.add.at(counts, (np.arange(n_boot)[:, None], picked), 1.0)
    return counts[:, inverse]


def weighted_metrics(w: np.ndarray, y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Every headline metric for each row of image weights ``w`` (n_boot, n) at once: the same values
    as computing them on the resampled images, duplicates included."""
    y = y.astype(float)
    eps = 1e-15
    pc = np.clip(p, eps, 1 - eps)
    pred = (p >= threshold).astype(float)
    total = w.sum(1)
    pos, neg = w @ y, w @ (1 - y)
    tp, fp = w @ (y * pred), w @ ((1 - y) * pred)
    fn, tn = pos - tp, neg - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(pos > 0, tp / pos, 0.0)
        specificity = np.where(neg > 0, tn / neg, np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        mcc = np.where(denom > 0, (tp * tn - fp * fn) / denom, 0.0)
    out = {
        "loss": w @ -(y * np.log(pc) + (1 - y) * np.log(1 - pc)) / total,
        "accuracy": (tp + tn) / total,
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
        "balanced_accuracy": (recall + specificity) / 2,
        "mcc": mcc,
        "brier": w @ (p - y) ** 2 / total,
    }
    out["roc_auc"], out["pr_auc"] = _ranked(w, y, p, pos, neg)
    bins = np.minimum((p * ECE_BINS).astype(int), ECE_BINS - 1)
    onehot = np.eye(ECE_BINS)[bins]
    out["ece"] = np.abs(w @ (onehot * y[:, None]) - w @ (onehot * p[:, None])).sum(1) / total
    return out


def _ranked(w, y, p, pos, neg):
    """Weighted ROC AUC (ties count half) and average precision (sklearn's step rule)."""
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ps)) + 1]  # tie groups, highest p first
    wp, wn = w[:, order] * y[order], w[:, order] * (1 - y[order])
    gp, gn = np.add.reduceat(wp, starts, axis=1), np.add.reduceat(wn, starts, axis=1)
    ctp, cfp = np.cumsum(gp, 1), np.cumsum(gn, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # AUC: each positive group beats the negatives below it (cfp counted from the top: below = neg - cfp)
        auc = (gp * (neg[:, None] - cfp) + 0.5 * gp * gn).sum(1) / (pos * neg)
        prec = np.where(ctp + cfp > 0, ctp / (ctp + cfp), 0.0)
        ap = (gp / pos[:, None] * prec).sum(1)
    return auc, ap


def bootstrap_ci(
    y,
    p,
    threshold: float,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, list[float]]:
    """Percentile bootstrap CIs. With ``groups`` (patient ids) whole patients are resampled. All
    resamples at once in numpy (image weights, rank-based AUC); resamples holding one class only
    are left out."""
    y, p = np.asarray(y).astype(int), np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    w = _resample_weights(len(y), groups, n_boot, seed)
    values = weighted_metrics(w, y, p, threshold)
    keep = ((w @ y) > 0) & ((w @ (1 - y)) > 0)
    result = {}
    for name in METRIC_ORDER:
        v = values[name][keep]
        result[name] = (
            [float(np.nanpercentile(v, 100 * alpha / 2)), float(np.nanpercentile(v, 100 * (1 - alpha / 2)))]
            if len(v) and np.isfinite(v).any()
            else [float("nan"), float("nan")]
        )
    return result


MIN_PER_CLASS = 10  # no interval from fewer positives or negatives than this: "too few"
WILSON = "Wilson score (images)"
BOOTSTRAP = "patient bootstrap"
TOO_FEW = "too few"


def wilson_interval(k: float, n: float, alpha: float = 0.05) -> list[float]:
    """The Wilson score interval of a proportion ``k / n`` (scipy's binomtest)."""
    from scipy.stats import binomtest

    ci = binomtest(int(round(k)), int(round(n))).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return [float(ci.low), float(ci.high)]


def _proportions(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, tuple[int, int]]:
    """(successes, trials) of each headline metric that is a simple proportion."""
    pred = p >= threshold
    pos, neg = y == 1, y == 0
    tp, tn, fp = int((pred & pos).sum()), int((~pred & neg).sum()), int((pred & neg).sum())
    return {
        "accuracy": (tp + tn, len(y)),
        "recall": (tp, int(pos.sum())),
        "specificity": (tn, int(neg.sum())),
        "precision": (tp, tp + fp),
    }


def confidence_intervals(
    y,
    p,
    threshold: float,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[dict[str, list[float] | None], dict[str, str]]:
    """(ci95, method) of every headline metric: Wilson for proportions (accuracy, precision, recall,
    specificity), the patient bootstrap for the rest (ROC AUC, Brier, ECE, ...). No interval
    (``None``, method "too few") when the set holds fewer than ``MIN_PER_CLASS`` positives or
    negatives, or a proportion has fewer than ``MIN_PER_CLASS`` trials."""
    y, p = np.asarray(y).astype(int), np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if min(int(y.sum()), int((1 - y).sum())) < MIN_PER_CLASS:
        return {name: None for name in METRIC_ORDER}, {name: TOO_FEW for name in METRIC_ORDER}
    boot = bootstrap_ci(y, p, threshold, groups, n_boot=n_boot, seed=seed, alpha=alpha)
    ci: dict[str, list[float] | None] = {}
    method: dict[str, str] = {}
    proportions = _proportions(y, p, threshold)
    for name in METRIC_ORDER:
        if name in proportions:
            k, n = proportions[name]
            ci[name], method[name] = (
                (wilson_interval(k, n, alpha), WILSON) if n >= MIN_PER_CLASS else (None, TOO_FEW)
            )
        else:
            ci[name], method[name] = boot[name], BOOTSTRAP
    return ci, method


def threshold_table(y: np.ndarray, p: np.ndarray, thresholds: Sequence[float]) -> tuple[ThresholdRow, ...]:
    """Recall, specificity, precision, F1 and accuracy at each threshold."""
    rows = []
    for t in thresholds:
        m = binary_metrics(y, p, t)
        rows.append(
            ThresholdRow(
                round(float(t), 4), m["recall"], m["specificity"], m["precision"], m["f1"], m["accuracy"]
            )
        )
    return tuple(rows)


def reliability_curve(
    y: np.ndarray, p: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, fraction positive) of non-empty bins, and counts of all bins."""
    from sklearn.calibration import calibration_curve

    fraction, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, n_bins + 1))[0]
    return mean_pred, fraction, counts
