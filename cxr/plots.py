"""The plots that more than one stage draws (training curves, image grids), on matplotlib's
object API: no pyplot, no global backend state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr.files import atomic_path


def subplots(nrows: int = 1, ncols: int = 1, figsize=(6, 4), **kwargs):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig, out: Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return out


def plot_history(history: pd.DataFrame, out: str | Path, title: str = "") -> Path:
    """Training vs validation accuracy and loss per epoch (the seed's figures 3 and 6)."""
    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history) + 1)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        if metric in history:
            ax.plot(epochs, history[metric], marker="o", label=f"training {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "training curves")
    return save_figure(fig, out)


def save_image_grid(
    images,
    out: str | Path,
    titles: Sequence[str] | None = None,
    title: str = "",
    columns: int = 4,
    title_colors: Sequence[str] | None = None,
    decorate=None,
) -> Path:
    """A grid of 0-255 images (N, H, W, 3) with optional per-image titles; ``decorate(fig, axes)``
    adds to the figure before it is saved (a colour bar)."""
    images = np.clip(np.asarray(images, dtype=np.float32), 0, 255).astype(np.uint8)
    n = len(images)
    rows = max(1, int(np.ceil(n / columns)))
    fig, axes = subplots(rows, columns, figsize=(columns * 2.6, rows * 2.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            if titles:
                ax.set_title(titles[i], fontsize=8, color=(title_colors[i] if title_colors else "black"))
    if title:
        fig.suptitle(title)
    if decorate is not None:
        decorate(fig, axes)
    return save_figure(fig, out)
