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
    constants = [helper.make_tensor(name, TensorProto.INT64, [1], [value])
                 for name, value in (("one", 1), ("big", 1 << 30), ("zero", 0), ("minus_one", -1), ("axis2", 2))]
    return nodes, constants


def make_tiny_model(path: Path, size: int = 32, threshold: float = 0.5, scale: float = 0.08, centre: float = 85.0,
                    metadata: dict | None = None, input_size_in_graph: int | None = None,
                    reads: str = "brightness") -> Path:
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
        nodes, "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", graph_size, graph_size, 3])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])],
        initializer=[helper.make_tensor("centre", TensorProto.FLOAT, [], [centre]),
                     helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]), *constants])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = ModelContract(("NORMAL", "PNEUMONIA"), threshold, size, facts={"variant": "tiny-test"}).to_metadata()
    for key, value in (metadata or {}).items():  # raw overrides, for hostile tests too
        meta[f"cxr.{key}"] = value if isinstance(value, str) else json.dumps(value)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
