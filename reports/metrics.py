"""Binary classification metrics with patient-level bootstrap CIs and threshold tables.

ROC AUC and PR AUC always come from probabilities, never from hard labels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cxr.calibration import expected_calibration_error
from sklearn import metrics as skm

from cxr.artifacts import METRIC_NAMES  # the one list, owned by the metrics.json artifact


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


def bootstrap_ci(y: np.ndarray, p: np.ndarray, threshold: float, groups: Sequence[str] | None = None,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, list[float]]:
    """Percentile bootstrap CIs. With ``groups`` (patient ids) whole patients are resampled."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(len(y))]
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    samples = {name: [] for name in METRIC_NAMES}
    for _ in range(n_boot):
        picked = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[g] for g in picked])
        if len(np.unique(y[idx])) < 2:
            continue
        for name, value in binary_metrics(y[idx], p[idx], threshold).items():
            samples[name].append(value)
    return {name: [float(np.nanpercentile(v, 100 * alpha / 2)), float(np.nanpercentile(v, 100 * (1 - alpha / 2)))]
            if v else [float("nan"), float("nan")] for name, v in samples.items()}


def threshold_table(y: np.ndarray, p: np.ndarray, thresholds: Sequence[float]) -> list[dict[str, Any]]:
    rows = []
    for t in thresholds:
        m = binary_metrics(y, p, t)
        rows.append({"threshold": round(float(t), 4), **{k: m[k] for k in
                     ("recall", "specificity", "precision", "f1", "accuracy")}})
    return rows


def reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, fraction positive) of non-empty bins, and counts of all bins."""
    from sklearn.calibration import calibration_curve

    fraction, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, n_bins + 1))[0]
    return mean_pred, fraction, counts
