"""A tiny hand-built cxr ONNX model (no TensorFlow): P = sigmoid(k * (mean pixel - c))."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from cxr.artifacts import ModelContract


def _texture_nodes() -> tuple[list, list]:
    """m = mean |x[:, :, j+1] - x[:, :, j]|: high-frequency energy, what a shortcut model reads."""
    nodes = [
        helper.make_node("Slice", ["x", "one", "big", "axis2"], ["right"]),
        helper.make_node("Slice", ["x", "zero", "minus_one", "axis2"], ["left"]),
        helper.make_node("Sub", ["right", "left"], ["diff"]),
        helper.make_node("Abs", ["diff"], ["energy"]),
        helper.make_node("ReduceMean", ["energy"], ["m"], axes=[1, 2, 3], keepdims=0),
    ]
    constants = [
        helper.make_tensor(name, TensorProto.INT64, [1], [value])
        for name, value in (("one", 1), ("big", 1 << 30), ("zero", 0), ("minus_one", -1), ("axis2", 2))
    ]
    return nodes, constants


def make_tiny_model(
    path: Path,
    size: int = 32,
    threshold: float = 0.5,
    scale: float = 0.08,
    centre: float = 85.0,
    metadata: dict | None = None,
    input_size_in_graph: int | None = None,
    reads: str = "brightness",
) -> Path:
    """P = sigmoid(scale * (m - centre)) with m the mean pixel (``reads='brightness'``) or the mean
    absolute horizontal pixel difference (``reads='texture'``: a brittle, noise-reading model)."""
    graph_size = input_size_in_graph or size
    if reads == "texture":
        features, constants = _texture_nodes()
    else:
        features, constants = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0)], []
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
        *features,
        helper.make_node("Sub", ["m", "centre"], ["d"]),
        helper.make_node("Mul", ["d", "scale"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", graph_size, graph_size, 3])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])],
        initializer=[
            helper.make_tensor("centre", TensorProto.FLOAT, [], [centre]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
            *constants,
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = ModelContract(
        ("NORMAL", "PNEUMONIA"), threshold, size, facts={"variant": "tiny-test"}
    ).to_metadata()
    for key, value in (metadata or {}).items():  # raw overrides, for hostile tests too
        meta[f"cxr.{key}"] = value if isinstance(value, str) else json.dumps(value)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _tiny_logits(path: Path, size: int, seed: int):
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from tests.synthetic import synthetic_xray

    rng = np.random.default_rng(seed + 1)
    images = np.stack(
        [
            np.repeat(
                np.asarray(Image.fromarray(synthetic_xray(rng, bool(i % 2), 96)).resize((size, size)))[
                    :, :, None
                ],
                3,
                2,
            )
            for i in range(32)
        ]
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    p = session.run(["probability"], {"pixels": images})[0].astype(np.float64).clip(1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def make_tiny_backbone(
    path: Path,
    size: int = 32,
    seed: int = 0,
    threshold: float = 0.5,
    threshold_rule: dict | None = None,
    head_scale: float = 1.0,
    head_bias: float = 0.0,
    _standardise: bool = True,
) -> Path:
    """A tiny EfficientNet-shaped cxr model (no TensorFlow): two strided convolutions down to 8x8, four
    ReLU6 activations named as Keras names EfficientNet's (``blockN_activation``), global pooling and a
    logit into a Sigmoid: enough graph for the domain guard and the calibration step."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    weights, nodes = (
        [],
        [
            helper.make_node("Cast", ["pixels"], ["x_hwc"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["x_hwc"], ["x_chw0"], perm=[0, 3, 1, 2]),
            helper.make_node("Mul", ["x_chw0", "inv255"], ["x_chw"]),
        ],
    )
    weights.append(helper.make_tensor("inv255", TensorProto.FLOAT, [], [1 / 255]))
    channels, previous = 3, "x_chw"
    layers = [("functional/stem_activation/Relu6:0", 8, 2), ("functional/block0_activation/Relu6:0", 12, 2)]
    layers += [(f"functional/block{b}_activation/Relu6:0", 12, 1) for b in range(11, 15)]
    for index, (name, out_channels, stride) in enumerate(layers):
        w = rng.normal(0, 1 / np.sqrt(channels * 9), (out_channels, channels, 3, 3)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{index}"))
        nodes += [
            helper.make_node(
                "Conv", [previous, f"w{index}"], [f"conv{index}"], pads=[1, 1, 1, 1], strides=[stride, stride]
            ),
            helper.make_node("Clip", [f"conv{index}", "zero_f", "six_f"], [name]),
        ]
        channels, previous = out_channels, name
    head = (rng.normal(0, 1, (channels, 1)) * head_scale).astype(np.float32)
    weights += [
        helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("six_f", TensorProto.FLOAT, [], [6.0]),
        numpy_helper.from_array(head, "head_w"),
        helper.make_tensor("head_b", TensorProto.FLOAT, [1], [head_bias]),
        helper.make_tensor("flat", TensorProto.INT64, [1], [-1]),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["pooled4"]),
        helper.make_node("Flatten", ["pooled4"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "head_w"], ["logit0"]),
        helper.make_node("Add", ["logit0", "head_b"], ["add_2:0"]),
        helper.make_node("Sigmoid", ["add_2:0"], ["Sigmoid:0"]),
        helper.make_node("Reshape", ["Sigmoid:0", "flat"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_backbone",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rule = threshold_rule or {"rule": "fixed", "threshold": threshold}
    meta = ModelContract(
        ("NORMAL", "PNEUMONIA"), threshold, size, threshold_rule=rule, facts={"variant": "tiny-backbone-test"}
    ).to_metadata()
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    if _standardise:  # spread the logits of chest-like images over about +-2, as a trained head would
        logits = _tiny_logits(path, size, seed)
        scale = 2.0 / max(float(logits.std()), 1e-9)
        return make_tiny_backbone(
            path,
            size,
            seed,
            threshold,
            threshold_rule,
            scale,
            -float(logits.mean()) * scale,
            _standardise=False,
        )
    return path
    return path
