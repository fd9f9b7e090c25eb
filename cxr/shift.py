"""Set-level data shift: are this run's images, taken together, unlike the training data?

The domain guard gives every image a score; the model carries the scores of its validation images
(images it was not trained on, from the training source). A one-sided two-sample Kolmogorov-Smirnov
test (scipy's ``ks_2samp``, exact p-values for small samples) asks whether the run's scores are
higher than those: only images less like the training data count as shift, so a run of training
images, or of one class only, is not called shifted for scoring lower. The verdict is one line. A
run with fewer than ``MIN_IMAGES`` scored images gets no verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ALPHA = 0.01  # the p-value under which a run is called shifted
MIN_IMAGES = 10
EXACT_LIMIT = 100_000  # n x m up to which the KS p-value is computed exactly
NOT_TESTED = f"data shift: not tested (fewer than {MIN_IMAGES} images with a domain score)"


@dataclass(frozen=True)
class ShiftVerdict:
    """The set-level test of one run against the training reference."""

    n_images: int
    n_reference: int
    statistic: float  # the KS distance: 0 = the same distribution, 1 = no overlap
    p_value: float
    n_flagged: int  # images the guard flagged one by one
    expected_flag_rate: float  # the guard's false-flag rate on validation images
    alpha: float = ALPHA

    @property
    def shifted(self) -> bool:
        return self.p_value < self.alpha

    @property
    def flagged_share(self) -> float:
        return self.n_flagged / self.n_images if self.n_images else 0.0

    def line(self) -> str:
        p = "p < 0.001" if self.p_value < 0.001 else f"p = {self.p_value:.3f}"
        flagged = f"{self.flagged_share:.0%} of images flagged, {self.expected_flag_rate:.0%} expected"
        if self.shifted:
            return f"data shift: these images differ from the training data ({p}; {flagged})"
        return f"data shift: none detected ({p}; {flagged})"

    def to_dict(self) -> dict[str, int | float | bool | str]:
        """The verdict as predictions.meta.json and metrics.json record it."""
        return {
            **asdict(self),
            "shifted": self.shifted,
            "flagged_share": self.flagged_share,
            "verdict": self.line(),
            "test": (
                "one-sided two-sample Kolmogorov-Smirnov (higher domain scores) "
                "against the validation reference"
            ),
        }

    @classmethod
    def from_dict(cls, data: dict[str, int | float | bool | str] | None) -> ShiftVerdict | None:
        """The verdict a file recorded (None for none); the derived entries are computed again."""
        if not data:
            return None
        fields = (
            "n_images",
            "n_reference",
            "statistic",
            "p_value",
            "n_flagged",
            "expected_flag_rate",
            "alpha",
        )
        return cls(**{k: data[k] for k in fields if k in data})


def shift_test(
    scores: np.ndarray,
    reference: np.ndarray | tuple[float, ...],
    threshold: float,
    expected_flag_rate: float,
    alpha: float = ALPHA,
) -> ShiftVerdict | None:
    """The verdict for ``scores`` (NaN ignored), or None with fewer than MIN_IMAGES of them."""
    from scipy.stats import ks_2samp

    scores = np.asarray(scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    reference = np.asarray(reference, dtype=float)
    if len(scores) < MIN_IMAGES or len(reference) < MIN_IMAGES:
        return None
    # H1: the run's CDF lies below the reference's (higher scores). Exact p-values for small sets, the
    # asymptotic distribution for large ones (scipy's exact one-sided calculation gives up there).
    method = "exact" if len(scores) * len(reference) <= EXACT_LIMIT else "asymp"
    result = ks_2samp(scores, reference, alternative="less", method=method)
    return ShiftVerdict(
        int(len(scores)),
        int(len(reference)),
        float(result.statistic),
        float(result.pvalue),
        int((scores > threshold).sum()),
        float(expected_flag_rate),
        alpha,
    )


def random_set_p_values(
    scores: np.ndarray, guard, rng: np.random.Generator, draws: int, size: int
) -> np.ndarray:
    """The shift test's p-value on ``draws`` random sets of ``size`` of ``scores`` (drawn without
    replacement, one after the other from ``rng``), against ``guard``'s reference scores: how often a
    set of that size is called shifted."""
    return np.array(
        [
            shift_test(
                rng.choice(scores, size, replace=False),
                guard.reference_scores,
                guard.threshold,
                guard.false_flag_rate,
            ).p_value
            for _ in range(draws)
        ]
    )


def import_test_in_background() -> None:
    """Start importing scipy.stats (about half a second on a cold process) in a daemon thread, so
    that the set-level test at the end of a run does not wait for it: the import overlaps with
    scoring. Worker processes start by forkserver or spawn, never by fork, so the thread is safe."""
    import importlib
    import threading

    threading.Thread(
        target=importlib.import_module, args=("scipy.stats",), name="cxr-shift-import", daemon=True
    ).start()
