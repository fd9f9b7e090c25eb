"""The image grids of a report: random test images and the most confident errors (with labels), the
images the domain guard flagged, and the images to review first (without labels). Grad-CAM is
overlaid where the app layer computed it (``CamOverlays``): the report stage loads no model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.artifacts import unescape_path
from cxr.artifacts.metric_records import FlaggedImage, SuspiciousImage
from cxr.reports import figures

SAMPLES_SHOWN = 16
ERRORS_SHOWN = 8
FLAGGED_SHOWN = 16
ERROR_GRIDS = (("false_positives", 0), ("false_negatives", 1))  # (grid, true class)


@dataclass(frozen=True)
class CamOverlays:
    """Grad-CAM maps ((h, w) in 0..1) of the images a report shows, by their path in the predictions,
    computed with the model by the app layer. An image without a map is shown without one."""

    maps: dict[str, np.ndarray] = field(default_factory=dict)

    def overlay(self, image: np.ndarray, path: str) -> np.ndarray:
        cam = self.maps.get(path)
        return image if cam is None else figures.cam_overlay(image, cam)


@dataclass(frozen=True)
class Thumbnails:
    """How a report draws the images it shows: decoded from under ``root`` at ``size`` pixels, with
    the Grad-CAM of ``cams`` overlaid (and its colour bar) where given."""

    root: Path
    size: int
    cams: CamOverlays | None = None

    @property
    def suffix(self) -> str:
        return " (Grad-CAM overlays)" if self.cams is not None else ""

    @property
    def colorbar(self) -> Callable | None:
        return figures.cam_colorbar if self.cams is not None else None

    def file(self, path: str) -> Path:
        return self.root / unescape_path(path)

    def image(self, path: str, with_cam: bool = True) -> np.ndarray | None:
        """The thumbnail of ``path`` (as in the predictions); None when it does not decode."""
        from cxr.imaging import decode_or_error

        image, _ = decode_or_error(self.file(path), self.size)
        if image is None or not with_cam or self.cams is None:
            return image
        return self.cams.overlay(image, path)


def grid_rows(data: pd.DataFrame, threshold: float, seed: int) -> dict[str, pd.DataFrame]:
    """The labelled rows each grid shows: random ones (seeded), then the most confident false
    positives and false negatives at ``threshold``."""
    rows = {"samples": data.sample(n=min(SAMPLES_SHOWN, len(data)), random_state=seed)}
    wrong = data[(data["p"] >= threshold).astype(int) != data["y"]]
    confident = wrong.assign(c=(wrong["p"] - wrong["y"]).abs()).sort_values("c", ascending=False)
    for grid, y_true in ERROR_GRIDS:
        rows[grid] = confident[confident["y"] == y_true].head(ERRORS_SHOWN)
    return rows


def _labelled_grid(
    rows: pd.DataFrame,
    thumbnails: Thumbnails,
    classes: tuple[str, str],
    threshold: float,
    out: Path,
    title: str,
) -> Path | None:
    """Thumbnails titled with the true and the called class (green when right, red when wrong)."""
    images, titles, colors = [], [], []
    for row in rows.itertuples():
        image = thumbnails.image(row.path)
        if image is None:
            continue
        pred = classes[int(row.p >= threshold)]
        images.append(image)
        titles.append(f"true {row.true_label}\npred {pred} (p={row.p:.2f})")
        colors.append("green" if pred == row.true_label else "red")
    if not images:
        return None
    return figures.save_image_grid(
        images,
        out,
        titles,
        f"{title}; threshold {threshold:.3g}",
        title_colors=colors,
        decorate=thumbnails.colorbar,
    )


def _captioned_grid(
    paths: list[str], captions: list[str], thumbnails: Thumbnails, out: Path, title: str, with_cam: bool
) -> Path | None:
    """Thumbnails of ``paths``, each titled with its file name and caption; None when none decodes."""
    images, titles = [], []
    for path, caption in zip(paths, captions):
        image = thumbnails.image(path, with_cam)
        if image is None:
            continue
        images.append(image)
        titles.append(f"{thumbnails.file(path).name[:24]}\n{caption}")
    if not images:
        return None
    return figures.save_image_grid(
        images, out, titles, title, decorate=thumbnails.colorbar if with_cam else None
    )


def flagged_grid(flagged: tuple[FlaggedImage, ...], thumbnails: Thumbnails, out: Path) -> Path | None:
    """Thumbnails of the images the domain guard flagged, highest score first (no Grad-CAM)."""
    shown = flagged[:FLAGGED_SHOWN]
    return _captioned_grid(
        [item.path for item in shown],
        [f"score {item.domain_score:.2f}" for item in shown],
        thumbnails,
        out,
        "images outside the training domain (highest score first)",
        with_cam=False,
    )


def labelled_grids(
    prefix: str,
    data: pd.DataFrame,
    classes: tuple[str, str],
    threshold: float,
    thumbnails: Thumbnails,
    out: Path,
    seed: int,
) -> dict[str, Path]:
    """The sample and error grids of one model's labelled predictions, by figure name."""
    rows = grid_rows(data, threshold, seed)
    titles = {"samples": f"random test images (seed {seed}){thumbnails.suffix}"}
    for grid, y_true in ERROR_GRIDS:
        titles[grid] = (
            f"most confident {grid.replace('_', ' ')}: {classes[y_true]} called {classes[1 - y_true]}"
            f"{thumbnails.suffix}"
        )
    made = {
        grid: _labelled_grid(rows[grid], thumbnails, classes, threshold, out / f"{prefix}{grid}.png", title)
        for grid, title in titles.items()
    }
    return {grid: path for grid, path in made.items() if path is not None}


def suspicious_grid(
    suspicious: tuple[SuspiciousImage, ...],
    positive: str,
    threshold: float,
    thumbnails: Thumbnails,
    out: Path,
) -> Path | None:
    """Thumbnails (with Grad-CAM where computed) of the highest-scored images of a run without labels."""
    return _captioned_grid(
        [item.path for item in suspicious],
        [f"P({positive}) = {item.p:.3f}" for item in suspicious],
        thumbnails,
        out,
        f"highest P({positive}) first; threshold {threshold:.3g}{thumbnails.suffix}",
        with_cam=True,
    )
