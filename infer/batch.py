"""One batch of files, decoded and scored: the unit of work of both scoring plans and of a CPU-plan
worker process. Kept light (no pandas-heavy scoring module, no scikit-learn), because each
worker process imports it before its first batch."""

from __future__ import annotations

import numpy as np

from cxr.imaging import decode_or_error
from cxr.infer.model import ModelLoadError, OnnxClassifier, predict_with_domain

UNIFORM_SD = 2.0  # pixel sd (grey levels) under which an image is flagged as uniform
COLOUR_LEVELS = 6.0  # mean |channel - grey| (grey levels) above which an image is a colour image


_WORKER_MODELS: dict[str, OnnxClassifier] = {}  # filled lazily in CPU-plan worker processes


def worker_model(path: str, sha256: str) -> OnnxClassifier:
    """This worker's single-threaded CPU session on the model, loaded once; the file must still be
    the one the run started with."""
    model = _WORKER_MODELS.get(path)
    if model is None:
        model = _WORKER_MODELS[path] = OnnxClassifier(path, device="cpu", threads=1)
    if model.info.sha256 != sha256:
        raise ModelLoadError(f"{path} changed while it was scoring; rerun with --resume once it is in place")
    return model


def score_paths(job: tuple[str, str, list[str], bool]) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """CPU-plan worker: decode ``paths`` and score them; (probabilities, domain scores, errors, qc flags)."""
    model_path, sha256, paths, tta = job
    model = worker_model(model_path, sha256)
    decoded = [decode_or_error(path, model.info.input_size) for path in paths]
    return *predict_batch(model, decoded, tta), *errors_and_flags(decoded, paths)


def qc_flag(image: np.ndarray) -> str:
    """The ``qc`` column of a decoded image ('' when nothing is odd): uniform, or in colour (a
    radiograph is grey)."""
    sd = float(image.std())
    if sd < UNIFORM_SD:
        return f"uniform image (pixel sd {sd:.2f})"
    colour = float(np.abs(image.astype(np.int16) - image[:, :, :1]).mean())
    return f"colour image (mean channel difference {colour:.1f})" if colour > COLOUR_LEVELS else ""


def predict_where(
    model: OnnxClassifier, images: np.ndarray, ok: np.ndarray, tta: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(P(positive), domain score) per file of a batch: ``images`` holds the decoded files (those
    where ``ok``), and a file that did not decode gets NaN for both."""
    probs, domains = np.full(len(ok), np.nan), np.full(len(ok), np.nan)
    if ok.any():
        probs[ok], domains[ok] = predict_with_domain(model, images, tta)
    return probs, domains


def predict_batch(model: OnnxClassifier, decoded: list, tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """``predict_where`` on ``(image or None, error)`` pairs."""
    ok = np.array([image is not None for image, _ in decoded], bool)
    images = np.stack([image for image, _ in decoded if image is not None]) if ok.any() else None
    return predict_where(model, images, ok, tta)


def errors_and_flags(decoded: list, paths: list | None = None) -> tuple[list[str], list[str]]:
    """The ``error`` and ``qc`` columns of ``decode_or_error``'s ``(image, note)`` or ``(None, error)``
    pairs; with ``paths``, what the
    file itself says (a tiny image, an extreme aspect ratio, a DICOM header) joins the image's flag."""
    from cxr.imaging import source_flags

    errors = [message if image is None else "" for image, message in decoded]
    flags = [
        "; ".join(f for f in (qc_flag(image), note) if f) if image is not None else ""
        for image, note in decoded
    ]
    if paths is not None:
        flags = [
            "; ".join(f for f in (flag, source_flags(path) if image is not None and path else "") if f)
            for flag, path, (image, _) in zip(flags, paths, decoded)
        ]
    return errors, flags
