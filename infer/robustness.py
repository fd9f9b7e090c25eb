"""Inference under the robustness suite: P(positive) of a decoded set, clean and perturbed.

The perturbations are the core's (``cxr.perturb``); this module only runs the model on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cxr.infer.model import OnnxClassifier
from cxr.perturb import SUITE, Perturbation, perturb_batch

CLEAN = "clean"


def score_perturbed(
    model: OnnxClassifier,
    images: np.ndarray,
    *,
    seed: int = 0,
    batch_size: int = 64,
    suite: Sequence[Perturbation] = SUITE,
    progress: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """{"clean": p, <perturbation name>: p, ...} for a uint8 NHWC array of model inputs."""

    def run(item: Perturbation | None) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            if item is not None:
                batch = perturb_batch(batch, item, seed, first_index=start)
            out.append(model.predict(batch))
        return np.concatenate(out) if out else np.zeros(0)

    scores = {CLEAN: run(None)}
    for item in suite:
        if progress:
            progress(item.name)
        scores[item.name] = run(item)
    return scores
