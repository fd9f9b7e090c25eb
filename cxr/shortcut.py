"""The shortcut check: how well trivial image statistics alone separate the classes.

A classifier that a few numbers per image can imitate may be reading acquisition, not
anatomy. For each image, at the model's input (the shared preprocessing, ``decode_image``):

- ``noise_sigma``: Immerkaer's fast noise estimate (1996), the mean absolute response of a
  Laplacian-difference kernel, which cancels smooth structure;
- ``hf_energy``: the share of the image's variance left after a 3x3 box blur (high frequencies);
- ``mean``, ``std``: intensity;
- ``width``, ``height``: the original size, read from the file's header, where known.

Each feature group gets a cross-validated ROC AUC: logistic regression on standardised
log-features, ``StratifiedGroupKFold`` by patient, so no patient is on both sides. An AUC
near 0.5 means the statistics carry no class information; near 1.0, they alone separate
the classes, and so can a network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.imaging import decoded_stream

FEATURE_GROUPS = {
    "noise / high-frequency texture": ("noise_sigma", "hf_energy"),
    "intensity (mean, std)": ("mean", "std"),
    "original size (width, height)": ("width", "height"),
}
RISK_AUC = 0.75
ANALYSIS_SIZE = 128


def immerkaer_sigma(gray: np.ndarray) -> float:
    """Noise standard deviation estimate of a 2-D image (Immerkaer 1996)."""
    from scipy.signal import convolve2d

    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    h, w = gray.shape
    response = np.abs(convolve2d(gray.astype(np.float64), kernel, mode="valid")).sum()
    return float(response * math.sqrt(math.pi / 2) / (6.0 * (w - 2) * (h - 2)))


def high_frequency_share(gray: np.ndarray) -> float:
    """Variance of (image - 3x3 box blur) over the image's variance."""
    from scipy.ndimage import uniform_filter

    gray = gray.astype(np.float64)
    total = gray.var()
    return float((gray - uniform_filter(gray, size=3, mode="reflect")).var() / total) if total > 0 else 0.0


def original_size(path: str | Path) -> tuple[float, float]:
    """(width, height) from the image header without decoding; NaN where unknown."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return float(img.size[0]), float(img.size[1])
    except Exception:  # noqa: BLE001 - DICOM and odd files: size unknown
        return float("nan"), float("nan")


def image_features(image: np.ndarray) -> dict[str, float]:
    gray = image[..., 0].astype(np.float64)
    return {
        "noise_sigma": immerkaer_sigma(gray),
        "hf_energy": high_frequency_share(gray),
        "mean": float(gray.mean()),
        "std": float(gray.std()),
    }


def feature_table(paths: list[str], size: int = ANALYSIS_SIZE, workers: int = 0) -> pd.DataFrame:
    """One row of features per path (NaN for files that do not decode)."""
    rows = []
    for path, (image, _) in zip(paths, decoded_stream(paths, size, workers, chunk=32)):
        features = (
            image_features(image)
            if image is not None
            else dict.fromkeys(("noise_sigma", "hf_energy", "mean", "std"), float("nan"))
        )
        features["width"], features["height"] = original_size(path)
        rows.append(features)
    return pd.DataFrame(rows)


def _cross_validated_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_splits = min(5, int(np.bincount(y).min()), len(np.unique(groups)))
    if n_splits < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = cross_val_predict(
        model, np.log1p(np.abs(x)), y, groups=groups, cv=folds, method="predict_proba"
    )[:, 1]
    return float(roc_auc_score(y, scores))


@dataclass(frozen=True)
class GroupCheck:
    """One feature group: over how many images, its cross-validated ROC AUC (None, with a ``note``
    why, where it cannot be computed), each feature's own AUC and the class medians."""

    features: tuple[str, ...]
    n: int
    cv_auc: float | None = None
    note: str = ""
    univariate_auc: dict[str, float] = field(default_factory=dict)
    median_negative: dict[str, float] = field(default_factory=dict)
    median_positive: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, str | int | float | list[str] | dict[str, float] | None]:
        head = {"features": list(self.features), "n": self.n, "cv_auc": self.cv_auc}
        if self.cv_auc is None:
            return {**head, "note": self.note}
        return {
            **head,
            "univariate_auc": self.univariate_auc,
            "median_negative": self.median_negative,
            "median_positive": self.median_positive,
        }


@dataclass(frozen=True)
class ShortcutResult:
    """The shortcut check of a set of images: each feature group's result, the verdict and what
    the medians say."""

    n_images: int
    classes: tuple[str, str]
    groups: dict[str, GroupCheck]
    analysis_size: int = ANALYSIS_SIZE
    risk_auc: float = RISK_AUC
    method: str = "logistic regression on standardised log-features, StratifiedGroupKFold(5) by patient"

    @property
    def verdict(self) -> str:
        risky = [
            f"{name} (AUC {g.cv_auc:.2f})"
            for name, g in self.groups.items()
            if g.cv_auc is not None and g.cv_auc >= self.risk_auc
        ]
        if risky:
            return f"SHORTCUT RISK: {', '.join(risky)} separate the classes without looking at anatomy"
        return f"no trivial image statistic reaches AUC {self.risk_auc}"

    @property
    def findings(self) -> list[str]:
        """What the medians say, in words: which class is smoother at the model input, and whether
        the original sizes differ (the acquisition confound)."""
        negative, positive = self.classes
        lines = []
        texture = self.groups["noise / high-frequency texture"]
        if texture.cv_auc is not None:
            lo, hi = texture.median_negative["noise_sigma"], texture.median_positive["noise_sigma"]
            smoother, other = (negative, positive) if lo < hi else (positive, negative)
            lines.append(
                f"at the model input ({self.analysis_size} px) {smoother} images are the smoother class: "
                f"noise estimate {min(lo, hi):.3g} vs {max(lo, hi):.3g} grey levels for {other} "
                f"(texture AUC {texture.cv_auc:.2f})"
            )
        size = self.groups["original size (width, height)"]
        if size.cv_auc is not None:
            lines.append(_size_finding(size, negative, positive))
        return lines

    def to_json(self) -> dict[str, object]:
        """summary.json's ``shortcut_check``."""
        return {
            "n_images": self.n_images,
            "classes": list(self.classes),
            "analysis_size": self.analysis_size,
            "risk_auc": self.risk_auc,
            "method": self.method,
            "groups": {name: group.to_json() for name, group in self.groups.items()},
            "verdict": self.verdict,
            "findings": self.findings,
        }


def _group_result(
    features: pd.DataFrame, columns: tuple[str, ...], y: np.ndarray, groups: np.ndarray, seed: int
) -> GroupCheck:
    from sklearn.metrics import roc_auc_score

    data = features[list(columns)]
    usable = data.notna().all(axis=1).to_numpy()
    n = int(usable.sum())
    if n < 10 or len(np.unique(y[usable])) < 2:
        return GroupCheck(columns, n, note="unknown for these files")
    values = data[usable].to_numpy()
    if np.allclose(values, values[0]):
        return GroupCheck(
            columns,
            n,
            note=f"the same for every image ({', '.join(f'{v:g}' for v in values[0])}): carries no class "
            "information here",
        )
    return GroupCheck(
        columns,
        n,
        cv_auc=_cross_validated_auc(values, y[usable], groups[usable], seed),
        univariate_auc={c: float(roc_auc_score(y[usable], data.loc[usable, c])) for c in columns},
        median_negative={c: float(data.loc[usable & (y == 0), c].median()) for c in columns},
        median_positive={c: float(data.loc[usable & (y == 1), c].median()) for c in columns},
    )


def shortcut_check(
    paths: list[str],
    labels: list[str],
    patient_ids: list[str],
    classes: list[str] | tuple[str, ...],
    *,
    seed: int = 0,
    workers: int = 0,
    size: int = ANALYSIS_SIZE,
) -> ShortcutResult:
    """Cross-validated AUC of each feature group, with a verdict per group and overall."""
    y = np.array([int(label == classes[1]) for label in labels])
    groups = np.asarray(patient_ids)
    features = feature_table(list(paths), size, workers)
    results = {
        name: _group_result(features, columns, y, groups, seed) for name, columns in FEATURE_GROUPS.items()
    }
    return ShortcutResult(len(paths), (classes[0], classes[1]), results, analysis_size=size)


def _size_finding(size: GroupCheck, negative: str, positive: str) -> str:
    """One line on the original sizes: whether their medians differ by class, and whether the sizes
    separate the classes at all (an AUC within 0.1 of chance does not)."""
    n, p = size.median_negative, size.median_positive
    auc = size.cv_auc
    separates = abs(auc - 0.5) >= 0.1
    if (n["width"], n["height"]) != (p["width"], p["height"]):
        return (
            f"original sizes differ by class: median {n['width']:.0f}x{n['height']:.0f} ({negative}) vs "
            f"{p['width']:.0f}x{p['height']:.0f} ({positive}) (size AUC {auc:.2f}), so each class is "
            "downscaled by a different factor to the same input"
        )
    if separates:
        return (
            f"original sizes: the same median {n['width']:.0f}x{n['height']:.0f} in both classes, but their "
            f"spread differs by class (size AUC {auc:.2f})"
        )
    return (
        f"original sizes: the same median {n['width']:.0f}x{n['height']:.0f} in both classes, "
        f"and they do not separate the classes (size AUC {auc:.2f})"
    )


def describe(result: ShortcutResult) -> list[str]:
    """Printable lines."""
    lines = [f"shortcut check ({result.n_images} images, {result.method}):"]
    negative, positive = result.classes
    for name, group in result.groups.items():
        if group.cv_auc is None:
            lines.append(f"  {name}: {group.note}")
            continue
        medians = ", ".join(
            f"{c} {group.median_negative[c]:.3g} vs {group.median_positive[c]:.3g}" for c in group.features
        )
        lines.append(
            f"  {name}: cross-validated AUC {group.cv_auc:.3f} (medians {negative} vs {positive}: {medians})"
        )
    lines.append(f"  verdict: {result.verdict}")
    lines += [f"  finding: {line}" for line in result.findings]
    return lines
