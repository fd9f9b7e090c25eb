"""Decision thresholds chosen on validation predictions, with a margin for new patients.

Rule ``wilson`` (the default): the highest threshold at which the lower bound of the
two-sided 95% Wilson interval of validation recall reaches the target. The point estimate
of recall is then above the target by a margin that shrinks as the validation set grows,
so a threshold that just reaches 95% on validation does not give 94% on the next patients.
Rule ``point``: the highest threshold whose validation recall reaches the target (no margin).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from cxr.errors import InputError

THRESHOLD_RULES = ("wilson", "point")
CONFIDENCE = 0.95
# A threshold rule as a model's metadata (``threshold_rule``) and metrics.json record it: the
# threshold and its rule, and for a rule run on validation data the facts below.
RuleFacts = dict[str, float | int | str | list[float] | None]


class ThresholdError(InputError, ValueError):
    """No threshold satisfies the rule on these predictions. One-line message."""


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided Wilson score interval of a proportion (scipy's binomtest)."""
    from scipy.stats import binomtest

    if trials <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _positives_needed(n_positive: int, target_recall: float, rule: str, confidence: float) -> int:
    """How many of the positives must score at or above the threshold."""
    if rule == "point":
        return max(1, int(np.ceil(target_recall * n_positive)))
    for needed in range(max(1, int(np.ceil(target_recall * n_positive))), n_positive + 1):
        if wilson_interval(needed, n_positive, confidence)[0] >= target_recall:
            return needed
    raise ThresholdError(
        f"{n_positive} validation positives are too few for a {confidence:.0%} Wilson lower bound "
        f"of recall to reach {target_recall}; use --threshold-rule point or more validation data"
    )


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold chosen on validation predictions: the threshold, the rule and its target, the
    positives and negatives it was chosen on, the recall it reaches (with its Wilson interval) and
    the specificity there; where the predictions came from and how many were used, where known."""

    threshold: float
    rule: str
    target_recall: float
    confidence: float
    n_positive: int
    n_negative: int
    val_recall: float
    val_recall_wilson95: tuple[float, float]
    val_specificity: float
    source: str | None = None
    n_val: int | None = None

    def from_source(self, source: str, n_val: int) -> ThresholdChoice:
        return replace(self, source=source, n_val=n_val)

    def to_json(self) -> RuleFacts:
        data = {**asdict(self), "val_recall_wilson95": list(self.val_recall_wilson95)}
        return {
            key: value for key, value in data.items() if value is not None or key not in ("source", "n_val")
        }


def choose_threshold(
    y: np.ndarray, p: np.ndarray, target_recall: float, rule: str = "wilson", confidence: float = CONFIDENCE
) -> ThresholdChoice:
    """The threshold and the facts of its rule, for labels ``y`` (1 = positive) and P(positive) ``p``."""
    if rule not in THRESHOLD_RULES:
        raise ThresholdError(f"unknown threshold rule {rule!r}; choose one of {THRESHOLD_RULES}")
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    positives = np.sort(p[y == 1])[::-1]
    if len(positives) == 0:
        raise ThresholdError("no positive validation examples to choose a threshold on")
    needed = _positives_needed(len(positives), target_recall, rule, confidence)
    threshold = float(positives[needed - 1])
    reached = int((positives >= threshold).sum())  # ties at the threshold count too
    low, high = wilson_interval(reached, len(positives), confidence)
    negatives = p[y == 0]
    return ThresholdChoice(
        threshold=threshold,
        rule=rule,
        target_recall=float(target_recall),
        confidence=confidence,
        n_positive=int(len(positives)),
        n_negative=int(len(negatives)),
        val_recall=reached / len(positives),
        val_recall_wilson95=(low, high),
        val_specificity=float((negatives < threshold).mean()) if len(negatives) else float("nan"),
    )


def describe_rule(facts: RuleFacts) -> str:
    """One line for reports and cards."""
    if facts.get("rule") == "fixed":
        return f"fixed at {facts['threshold']:g} (not chosen on data)"
    if facts.get("rule") not in THRESHOLD_RULES:
        return (
            f"{facts['threshold']:g}; how it was chosen is not recorded in the model "
            "(exported before cxr recorded it)"
        )
    low, high = facts["val_recall_wilson95"]
    margin = "lower bound of the 95% Wilson interval" if facts["rule"] == "wilson" else "point estimate"
    return (
        f"highest threshold whose validation recall {margin} reaches {facts['target_recall']:g}: "
        f"{facts['threshold']:.4g} (validation recall {facts['val_recall']:.3f}, "
        f"95% CI {low:.3f}-{high:.3f}, "
        f"{facts['n_positive']} positives; specificity {facts['val_specificity']:.3f})"
    )


def choose_val_threshold(
    val_predictions: str | Path, target_recall: float, rule: str = "wilson"
) -> RuleFacts:
    """``choose_threshold`` on a training run's val_predictions.csv, read by its owner
    (``cxr.artifacts.Predictions``: the Predictions schema, or a legacy ``path,label,p_<class>`` file)."""
    from cxr.artifacts import Predictions, PredictionsError

    try:
        frame, prob_col = Predictions.read(val_predictions)
    except PredictionsError as exc:
        raise ThresholdError(f"not a run's val_predictions.csv: {exc}") from None
    frame = frame[(frame["error"] == "") & (frame["true_label"] != "")]
    p = frame[prob_col].astype(float).to_numpy()
    y = (frame["true_label"] == prob_col[2:]).astype(int).to_numpy()
    return (
        choose_threshold(y, p, target_recall, rule)
        .from_source(str(val_predictions), int(len(frame)))
        .to_json()
    )
