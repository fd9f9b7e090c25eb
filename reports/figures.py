"""PNG figures: training curves, image grids, confusion matrix, ROC/PR, reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxr.artifacts.metric_records import FailureDirection
from cxr.plots import plot_history, save_image_grid
from cxr.plots import save_figure as _save
from cxr.plots import subplots as _subplots

__all__ = [
    "plot_history",
    "save_image_grid",
    "plot_confusion",
    "plot_curve",
    "plot_reliability",
    "cam_overlay",
    "save_explanation",
    "cam_colorbar",
    "plot_probability_distribution",
    "plot_roc",
]


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], out: str | Path, title: str = "") -> Path:
    """Confusion matrix as counts and row-normalised rates, side by side."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, axes = _subplots(1, 2, figsize=(10.5, 3.8))
    for ax, data, fmt, name in (
        (axes[0], matrix, "{:d}", "counts"),
        (axes[1], rates, "{:.1%}", "rates (per true class)"),
    ):
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (r, c), value in np.ndenumerate(data):
            ax.text(
                c,
                r,
                fmt.format(value),
                ha="center",
                va="center",
                color="white" if rates[r, c] > 0.5 else "black",
                fontsize=12,
            )
        ax.set_xticks(range(len(classes)), [f"pred {c}" for c in classes])
        ax.set_yticks(range(len(classes)), [f"true {c}" for c in classes] if ax is axes[0] else [])
        ax.set_title(name)
    fig.suptitle(title or "confusion matrix")
    return _save(fig, out)


def plot_curve(
    x: np.ndarray,
    y: np.ndarray,
    out: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    diagonal: bool = False,
    baseline: float | None = None,
) -> Path:
    fig, ax = _subplots(figsize=(4.8, 4.4))
    ax.plot(x, y, lw=2)
    if diagonal:
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="grey", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_reliability(
    mean_predicted: np.ndarray,
    fraction_positive: np.ndarray,
    counts: np.ndarray,
    out: str | Path,
    title: str = "reliability diagram",
    before: tuple[np.ndarray, np.ndarray, str] | None = None,
) -> Path:
    """The reliability diagram; ``before``: (mean predicted, fraction positive, label) of the same
    images before calibration, drawn beside the model's."""
    fig, (ax, hist) = _subplots(2, 1, figsize=(4.8, 5.6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    if before is not None:
        ax.plot(before[0], before[1], marker="s", lw=1.5, color="tab:orange", alpha=0.8, label=before[2])
    ax.plot(
        mean_predicted, fraction_positive, marker="o", lw=2, label="model" if before is None else "calibrated"
    )
    ax.set_ylabel("observed fraction positive")
    ax.set_title(title)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    edges = np.linspace(0, 1, len(counts) + 1)
    hist.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="white")
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("images")
    return _save(fig, out)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a Grad-CAM map (h, w in 0..1, any resolution) over a uint8 RGB image (jet colormap)."""
    from matplotlib import colormaps
    from PIL import Image

    height, width = image.shape[:2]
    cam_img = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    weight = np.asarray(cam_img, dtype=np.float32)[..., None] / 255.0
    heat = colormaps["jet"](weight[..., 0])[..., :3] * 255
    blend = alpha * weight  # where the map is 0 the image shows through unchanged
    return np.uint8(np.clip((1 - blend) * image.astype(np.float32) + blend * heat, 0, 255))


def cam_colorbar(fig, axes) -> None:
    """The Grad-CAM colour scale (jet, 0 = no weight, 1 = the map's strongest region) beside ``axes``."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps["jet"]), ax=axes, fraction=0.046, pad=0.04)
    bar.set_label("Grad-CAM weight (1 = strongest)")


def save_explanation(
    image: np.ndarray,
    cam: np.ndarray,
    probability: float,
    classes: Sequence[str],
    threshold: float,
    out: str | Path,
    title: str = "",
) -> Path:
    """Image | Grad-CAM overlay with its colour bar; the title says the label called, P(positive)
    and the threshold."""
    positive = classes[-1]
    label = classes[int(probability >= threshold)]
    fig, axes = _subplots(1, 2, figsize=(7.8, 3.8))
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(cam_overlay(image, cam))
    axes[1].set_title(
        f"Grad-CAM: called {label}\nP({positive}) = {probability:.3f}, threshold {threshold:.3g}", fontsize=9
    )
    for ax in axes:
        ax.axis("off")
    cam_colorbar(fig, axes[1])
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def plot_probability_distribution(p: np.ndarray, threshold: float, positive: str, out: str | Path) -> Path:
    """Histogram of P(positive) over the scored images, with the threshold marked."""
    fig, ax = _subplots(figsize=(6.4, 3.2))
    ax.hist(p, bins=np.linspace(0, 1, 41), color="tab:blue")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    n_called = int((np.asarray(p) >= threshold).sum())
    ax.set_title(f"P({positive}) of {len(p)} scored images: {n_called} at or above the threshold")
    ax.set_xlabel(f"P({positive})")
    ax.set_ylabel("images")
    ax.legend()
    return _save(fig, out)


def plot_roc(
    fpr: np.ndarray,
    tpr: np.ndarray,
    operating: tuple[float, float],
    threshold: float,
    auc: float,
    out: str | Path,
) -> Path:
    """The ROC curve with the operating point (1 - specificity, sensitivity at ``threshold``) marked."""
    fig, ax = _subplots(figsize=(4.0, 3.8))
    ax.plot(fpr, tpr, lw=2)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.plot(
        *operating,
        "o",
        color="tab:red",
        ms=8,
        label=f"threshold {threshold:.3g}:\nsens {operating[1]:.3f}, spec {1 - operating[0]:.3f}",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC, AUC {auc:.3f}")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_error_probabilities(
    analysis: dict[str, FailureDirection], threshold: float, out: str | Path
) -> Path:
    """Histograms of P(positive) for each error direction (failure analysis)."""
    fig, axes = _subplots(1, 2, figsize=(10, 3.2))
    for ax, (name, part) in zip(axes, analysis.items()):
        ax.hist(
            part.p_values, bins=np.linspace(0, 1, 21), color="tab:red" if "positive" in name else "tab:blue"
        )
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
        ax.set_title(f"{part.description} (n={part.n})")
        ax.set_xlabel("P(positive)")
        ax.set_ylabel("images")
        ax.legend()
    fig.suptitle("failure analysis: where the errors' probabilities lie")
    return _save(fig, out)
