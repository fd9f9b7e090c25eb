"""Export stage core: ``export_onnx`` turns a training run into a self-describing ONNX model.

The graph takes uint8 NHWC pixels (0-255) and casts inside, so the scorer feeds the
shared preprocessing's output directly; normalisation is inside the Keras graph.
The output is P(positive class). A parity gate against Keras guards the file: on
failure nothing is left at the output path.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxr.artifacts import ModelContract, Parity, RunFolder, RunFolderError
from cxr.artifacts.model_contract import CAM_NAME, INPUT_NAME, OUTPUT_NAME
from cxr.artifacts.run_facts import RunFacts
from cxr.artifacts.training_config import TrainingConfig
from cxr.environment import package_versions
from cxr.errors import InputError
from cxr.files import atomic_path, sha256_file
from cxr.imaging import RESIZE_RULE, decode_image
from cxr.messages import first_line

DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4
CAM_TOLERANCE = 1e-3


class ExportError(InputError, RuntimeError):
    """A run that cannot be exported (missing or foreign files). One-line message."""


class ParityError(ExportError):
    """ONNX and Keras disagree beyond the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    model_path: Path
    parity_path: Path
    parity: Parity
    metadata: dict[str, str]


def load_keras_model(path: str | Path):
    """A .keras file as a Keras model; a one-line ExportError when it is not one."""
    import keras

    import cxr.keras_layers  # noqa: F401 - registers the layers a trained model may contain

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - zip, h5 and deserialisation errors all mean "not a model"
        raise ExportError(f"cannot load {path} as a Keras model: {first_line(exc)[:300]}") from None


def build_contract(
    config: TrainingConfig, run: RunFacts, threshold: float, threshold_rule: dict
) -> ModelContract:
    """The model's contract: what inference needs, plus the facts of its training."""
    recalibration = run.bn_recalibration
    facts = {
        "variant": config.variant,
        "backbone": config.backbone,
        "weights": str(config.weights),
        "augment_policy": config.augment_policy,
        "backend": run.backend,
        "training_precision": run.precision,
        "freeze_bn": config.freeze_bn,
        "epochs_run": run.epochs_run,
        "training_finished": run.finished,
        "best_epoch": run.best_epoch,
        "bn_recalibration": recalibration.summary() if recalibration else None,
        "config_sha256": run.config_sha256,
        "manifest_sha256": run.manifest_sha256,
        "training_config": config.to_json(),
        "versions": package_versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return ModelContract(
        tuple(config.classes),
        float(threshold),
        int(config.input_size),
        "uint8",
        RESIZE_RULE,
        threshold_rule,
        facts,
    )


def _serving_function(model, input_size: int):
    """A tf.function taking uint8 NHWC pixels: P(positive), and the Grad-CAM map where the head allows."""
    import tensorflow as tf

    from cxr.export.gradcam import has_gradcam_head, probability_and_cam

    spec = (tf.TensorSpec((None, input_size, input_size, 3), tf.uint8, name=INPUT_NAME),)
    compute = probability_and_cam(model) if has_gradcam_head(model) else None

    @tf.function(input_signature=spec)
    def serve(pixels):
        x = tf.cast(pixels, tf.float32)
        if compute is not None:
            return compute(x)
        return tf.reshape(model(x, training=False), (-1,))

    return serve, compute is not None


def _frozen_onnx(serve, opset: int):
    """tf2onnx on the frozen graph: ``from_function`` would leave some Keras 3 captured tensors
    (the Normalization layer's mean and variance) as extra graph inputs."""
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(),
        input_names=[t.name for t in frozen.inputs],
        output_names=[t.name for t in frozen.outputs],
        opset=opset,
    )
    return proto


def _apply_contract(proto, with_cam: bool, metadata: dict[str, str]) -> None:
    """The contract's input/output names, a dynamic batch dimension and the cxr.* metadata."""
    _rename_value(proto, proto.graph.input[0].name, INPUT_NAME)
    _rename_value(proto, proto.graph.output[0].name, OUTPUT_NAME)
    if with_cam:
        _rename_value(proto, proto.graph.output[1].name, CAM_NAME)
    for value in [proto.graph.input[0], *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (
        "cxr pneumonia classifier: uint8 NHWC pixels 0-255 in; outputs 'probability' = P(positive "
        "class) and, where the head allows, 'cam' = Grad-CAM of the positive logit (N, h, w) in 0..1"
    )


def convert(model, input_size: int, opset: int, out_path: Path, metadata: dict[str, str]) -> None:
    """Keras model -> checked ONNX file with a uint8 input, an in-graph cast and the metadata."""
    import onnx
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    serve, with_cam = _serving_function(model, input_size)
    proto = _frozen_onnx(serve, opset)
    _apply_contract(proto, with_cam, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))


def _rename_value(proto, old: str, new: str) -> None:
    """Rename a graph input or output and every node reference to it."""
    if old == new:
        return
    for node in proto.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for value in list(proto.graph.input) + list(proto.graph.output):
        if value.name == old:
            value.name = new


def parity_batch(paths: list[str], input_size: int, n_synthetic: int, seed: int) -> tuple[np.ndarray, str]:
    """Images for the parity gate: decoded with the shared preprocessing, or synthetic."""
    if paths:
        return np.stack([decode_image(p, input_size) for p in paths]), f"{len(paths)} real images"
    rng = np.random.default_rng(seed)
    return rng.integers(
        0, 256, (n_synthetic, input_size, input_size, 3), dtype=np.uint8
    ), f"{n_synthetic} synthetic images"


def _onnx_outputs(onnx_path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the exported graph on a uint8 batch (onnxruntime, CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.uint8)})))


def check_parity(
    keras_model, onnx_path: Path, images: np.ndarray, threshold: float, tolerance: float = PARITY_TOLERANCE
) -> Parity:
    """Keras against onnxruntime on ``images``: how far the probabilities (and Grad-CAM) lie apart."""
    from cxr.export.gradcam import gradcam_keras, has_gradcam_head

    p_keras = (
        keras_model.predict(images.astype(np.float32), batch_size=32, verbose=0)
        .reshape(-1)
        .astype(np.float64)
    )
    outputs = _onnx_outputs(onnx_path, images)
    p_onnx = outputs[OUTPUT_NAME].reshape(-1).astype(np.float64)
    diff = np.abs(p_keras - p_onnx)
    labels_differ = int(np.sum((p_keras >= threshold) != (p_onnx >= threshold)))
    parity = Parity(
        n_images=int(len(images)),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        labels_differ=labels_differ,
        tolerance=tolerance,
        threshold=threshold,
        passed=bool(diff.max() <= tolerance and labels_differ == 0),
    )
    if CAM_NAME in outputs and has_gradcam_head(keras_model):
        _, cam_reference = gradcam_keras(keras_model, images[:8].astype(np.float32))
        cam_diff = float(np.abs(outputs[CAM_NAME][:8] - cam_reference).max())
        parity = replace(
            parity,
            cam_max_abs_diff=cam_diff,
            cam_tolerance=CAM_TOLERANCE,
            passed=parity.passed and cam_diff <= CAM_TOLERANCE,
        )
    return parity


def default_parity_paths(run: RunFacts, n: int, seed: int) -> list[str]:
    """N validation images of the run's own manifest, when that manifest is reachable."""
    from cxr.data import DataPrepError, load_manifest

    if not run.manifest:
        return []
    try:
        manifest = load_manifest(run.manifest)
    except (DataPrepError, OSError):
        return []
    val = manifest[manifest["split"] == "val"]
    val = val[[Path(p).is_file() for p in val["abspath"]]]
    return val.sample(n=min(n, len(val)), random_state=seed)["abspath"].tolist() if len(val) else []


def export_onnx(
    run_dir: str | Path,
    out_path: str | Path,
    *,
    parity_paths: list[str] | None = None,
    n_parity: int = 32,
    threshold: float = 0.5,
    threshold_rule: dict | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
) -> ExportResult:
    """Convert ``run_dir/best.keras`` to ``out_path`` (+ ``<stem>.parity.json``) behind the parity gate."""
    run_dir, out_path = Path(run_dir), Path(out_path)
    folder = RunFolder(run_dir)
    try:
        config, run = folder.export_facts()
    except RunFolderError as exc:
        raise ExportError(str(exc)) from None
    model = load_keras_model(folder.best)
    size = config.input_size
    contract = build_contract(
        config, run, threshold, threshold_rule or {"threshold": threshold, "rule": "fixed"}
    )
    metadata = contract.to_metadata()
    if parity_paths is None:
        parity_paths = default_parity_paths(run, n_parity, seed)
    images, source = parity_batch(parity_paths, size, n_parity, seed)
    with atomic_path(out_path) as tmp:
        convert(model, size, opset, tmp, metadata)
        parity = replace(check_parity(model, tmp, images, threshold, tolerance), source=source, opset=opset)
        if not parity.passed:
            raise ParityError(parity_failure(parity))
        parity = replace(parity, model_sha256=sha256_file(tmp), model=out_path.name, run=str(run_dir))
    parity_path = parity.write(Parity.path_for(out_path))
    return ExportResult(out_path, parity_path, parity, metadata)


def parity_failure(parity: Parity) -> str:
    """Why the parity gate failed, in one line."""
    cam = (
        f", Grad-CAM max |d| {parity.cam_max_abs_diff:.3g} (tolerance {parity.cam_tolerance:g})"
        if parity.cam_max_abs_diff is not None
        else ""
    )
    return (
        f"parity gate failed: max |dp| {parity.max_abs_diff:.3g} (tolerance {parity.tolerance:g}), "
        f"{parity.labels_differ} labels differ{cam}; no model written"
    )
