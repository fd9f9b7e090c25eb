"""Edits of an exported cxr ONNX graph that need no Keras: feature taps, the domain guard and the
calibration step are appended to the graph the export wrote (``onnx`` only, from the [train] extra).

The taps are the backbone's activations, found by their Keras layer names (``stem_activation``,
``blockN_activation`` in Lite, ``blockNx_activation`` in B0-B7, ``top_activation``), so the same code
serves every exported EfficientNet.
"""

from __future__ import annotations

import re

import numpy as np

from cxr.errors import InputError

# The output of a Keras activation layer of the backbone: ReLU6 in EfficientNet-Lite (one Clip node),
# swish in EfficientNet B0-B7 (Sigmoid then Mul: the Mul is the layer's output); expansion
# activations are left out.
ACTIVATION = re.compile(r"(stem|block(\d+[a-z]?)|top)_activation[^/]*/(Relu6|mul[^/]*):0$")
LOGIT_CONSUMER = "Sigmoid"
STD_EPSILON = 1e-6


class GraphEditError(InputError, ValueError):
    """The graph lacks what an edit needs (not an exported cxr EfficientNet). One-line message."""


def _shapes(proto) -> dict[str, list]:
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(proto)
    return {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in inferred.graph.value_info
    }


def activation_taps(proto) -> list[tuple[str, int]]:
    """(tensor name, channels) of the last activation of each channel width, from the stem to the
    top: one tap per stage of the backbone, in graph order."""
    shapes = _shapes(proto)
    found: dict[int, str] = {}
    for node in proto.graph.node:
        for name in node.output:
            if ACTIVATION.search(name) and len(shapes.get(name, [])) == 4:
                found[int(shapes[name][1])] = name  # a later activation of the same width replaces it
    if not found:
        raise GraphEditError("no backbone activations (stem/blockN/top_activation) in this graph")
    order = {name: i for i, node in enumerate(proto.graph.node) for name in node.output}
    return sorted(((name, channels) for channels, name in found.items()), key=lambda tap: order[tap[0]])


def _node(op: str, inputs: list[str], output: str, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, [output], name=output, **attrs)


def pooled_statistics(proto, tap: str, prefix: str) -> tuple[list, str]:
    """Nodes computing the per-channel mean and standard deviation of an NCHW tensor over space,
    concatenated to (N, 2C); returns (nodes, output name)."""
    from onnx import helper

    eps = f"{prefix}_eps"
    proto.graph.initializer.append(helper.make_tensor(eps, 1, [1], [STD_EPSILON]))
    nodes = [
        _node("ReduceMean", [tap], f"{prefix}_mean", axes=[2, 3], keepdims=0),
        _node("Mul", [tap, tap], f"{prefix}_sq"),
        _node("ReduceMean", [f"{prefix}_sq"], f"{prefix}_meansq", axes=[2, 3], keepdims=0),
        _node("Mul", [f"{prefix}_mean", f"{prefix}_mean"], f"{prefix}_mean2"),
        _node("Sub", [f"{prefix}_meansq", f"{prefix}_mean2"], f"{prefix}_var0"),
        _node("Relu", [f"{prefix}_var0"], f"{prefix}_var"),
        _node("Add", [f"{prefix}_var", eps], f"{prefix}_vareps"),
        _node("Sqrt", [f"{prefix}_vareps"], f"{prefix}_std"),
        _node("Concat", [f"{prefix}_mean", f"{prefix}_std"], f"{prefix}_stats", axis=1),
    ]
    return nodes, f"{prefix}_stats"


def with_feature_outputs(proto, taps: list[tuple[str, int]]):
    """A copy of ``proto`` with one extra output per tap: its pooled statistics (N, 2C)."""
    import copy

    from onnx import TensorProto, helper

    proto = copy.deepcopy(proto)
    for index, (tap, channels) in enumerate(taps):
        nodes, out = pooled_statistics(proto, tap, f"tap{index}")
        proto.graph.node.extend(nodes)
        proto.graph.output.append(
            helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 2 * channels])
        )
    return proto


def logit_name(proto) -> str:
    """The tensor the final Sigmoid reads (the positive logit). Sigmoids inside swish activations
    (x * sigmoid(x), EfficientNet B0-B7) feed a Mul and are not the head's."""
    into_mul = {name for node in proto.graph.node if node.op_type == "Mul" for name in node.input}
    sigmoids = [
        node for node in proto.graph.node if node.op_type == LOGIT_CONSUMER and node.output[0] not in into_mul
    ]
    if len(sigmoids) != 1:
        raise GraphEditError(f"expected one Sigmoid before the probability, found {len(sigmoids)}")
    return sigmoids[0].input[0]


def with_logit_output(proto):
    """A copy of ``proto`` that also outputs the positive logit as ``logit`` (N, 1)."""
    import copy

    from onnx import TensorProto, helper

    proto = copy.deepcopy(proto)
    name = logit_name(proto)
    proto.graph.node.append(_node("Identity", [name], "logit"))
    proto.graph.output.append(helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1]))
    return proto


def as_float32(values) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32))
