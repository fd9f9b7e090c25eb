"""PNG figures: training curves, image grids, confusion matrix, ROC/PR, reliability diagram."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cxr.plots import plot_history, save_figure as _save, save_image_grid, subplots as _subplots

__all__ = ["plot_history", "save_image_grid", "plot_confusion", "plot_curve", "plot_reliability", "cam_overlay",
           "save_explanation"]


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], out: str | Path, title: str = "") -> Path:
    """Confusion matrix as counts and row-normalised rates, side by side."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, axes = _subplots(1, 2, figsize=(10.5, 3.8))
    for ax, data, fmt, name in ((axes[0], matrix, "{:d}", "counts"), (axes[1], rates, "{:.1%}", "rates (per true class)")):
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (r, c), value in np.ndenumerate(data):
            ax.text(c, r, fmt.format(value), ha="center", va="center",
                    color="white" if rates[r, c] > 0.5 else "black", fontsize=12)
        ax.set_xticks(range(len(classes)), [f"pred {c}" for c in classes])
        ax.set_yticks(range(len(classes)), [f"true {c}" for c in classes] if ax is axes[0] else [])
        ax.set_title(name)
    fig.suptitle(title or "confusion matrix")
    return _save(fig, out)


def plot_curve(x: np.ndarray, y: np.ndarray, out: str | Path, *, xlabel: str, ylabel: str, title: str,
               diagonal: bool = False, baseline: float | None = None) -> Path:
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


def plot_reliability(mean_predicted: np.ndarray, fraction_positive: np.ndarray, counts: np.ndarray,
                     out: str | Path, title: str = "reliability diagram",
                     before: tuple[np.ndarray, np.ndarray, str] | None = None) -> Path:
    """The reliability diagram; ``before``: (mean predicted, fraction positive, label) of the same
    images before calibration, drawn beside the model's."""
    fig, (ax, hist) = _subplots(2, 1, figsize=(4.8, 5.6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    if before is not None:
        ax.plot(before[0], before[1], marker="s", lw=1.5, color="tab:orange", alpha=0.8, label=before[2])
    ax.plot(mean_predicted, fraction_positive, marker="o", lw=2, label="model" if before is None else "calibrated")
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
    cam_img = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize((width, height), Image.Resampling.BILINEAR)
    weight = np.asarray(cam_img, dtype=np.float32)[..., None] / 255.0
    heat = colormaps["jet"](weight[..., 0])[..., :3] * 255
    blend = alpha * weight  # where the map is 0 the image shows through unchanged
    return np.uint8(np.clip((1 - blend) * image.astype(np.float32) + blend * heat, 0, 255))


def save_explanation(image: np.ndarray, cam: np.ndarray, probability: float, positive: str, out: str | Path,
                     title: str = "") -> Path:
    """Image | Grad-CAM overlay, with P(positive) in the title."""
    fig, axes = _subplots(1, 2, figsize=(7, 3.8))
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(cam_overlay(image, cam))
    axes[1].set_title(f"Grad-CAM, P({positive}) = {probability:.3f}")
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def plot_error_probabilities(analysis: dict, threshold: float, out: str | Path) -> Path:
    """Histograms of P(positive) for each error direction (failure analysis)."""
    fig, axes = _subplots(1, 2, figsize=(10, 3.2))
    for ax, (name, part) in zip(axes, analysis.items()):
        ax.hist(part["p_values"], bins=np.linspace(0, 1, 21), color="tab:red" if "positive" in name else "tab:blue")
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
        ax.set_title(f"{part['description']} (n={part['n']})")
        ax.set_xlabel("P(positive)")
        ax.set_ylabel("images")
        ax.legend()
    fig.suptitle("failure analysis: where the errors' probabilities lie")
    return _save(fig, out)
