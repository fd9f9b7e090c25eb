"""A tiny hand-built cxr ONNX model (no TensorFlow): P = sigmoid(k * (mean pixel - c))."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper


def make_tiny_model(path: Path, size: int = 32, threshold: float = 0.5, scale: float = 0.08, centre: float = 85.0,
                    metadata: dict | None = None, input_size_in_graph: int | None = None) -> Path:
    graph_size = input_size_in_graph or size
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sub", ["m", "centre"], ["d"]),
        helper.make_node("Mul", ["d", "scale"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", graph_size, graph_size, 3])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])],
        initializer=[helper.make_tensor("centre", TensorProto.FLOAT, [], [centre]),
                     helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"classes": ["NORMAL", "PNEUMONIA"], "threshold": threshold, "input_size": size,
            "input_layout": "NHWC", "input_dtype": "uint8", "resize_rule": "squash-bilinear-antialias",
            "variant": "tiny-test"}
    meta.update(metadata or {})
    for key, value in meta.items():
        model.metadata_props.add(key=f"cxr.{key}", value=value if isinstance(value, str) else json.dumps(value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
