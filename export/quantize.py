"""An INT8 copy of an exported cxr model, behind an accuracy gate (``cxr quantize``).

onnxruntime's static quantization, QDQ format: weights int8, symmetric, per output channel;
activations uint8, asymmetric, per tensor, their ranges calibrated (MinMax) on images of the
validation split decoded by ``cxr.imaging`` exactly as inference decodes them. The graph is first
pre-processed by onnxruntime (batch normalisation folded into the convolutions, shapes inferred),
then only the backbone is quantized: its Conv, Clip/Relu and Add nodes, grouped by Keras block
(the preprocessing layers before the stem are the group ``input``). The domain guard, the
calibration step, the head and the Grad-CAM output stay float. The guard's mean of squares at each
tap is computed as ``ReduceSumSquare`` times 1/(H*W) instead of ``ReduceMean(x * x)``
(``fuse_guard_squares``): the same statistic with one reader of the tap fewer and no squared copy of
it, which matters in the INT8 graph, where onnxruntime dequantizes a tap once for every float node
that reads it.

Some groups are too sensitive for int8 (the first layers, where a rounding step is a grey level or
so of the input). With ``float_groups=None`` ("auto") each group is quantized alone and ranked by
the mean |dp| it causes on a subset of the validation images; the most sensitive groups are then
kept float, one at a time, until the gate passes within half of each limit (``Search.margin``:
headroom for images the gate has not seen) or ``max_float_groups`` is reached, when the best
candidate within the limits is kept (fewest flips, then smallest ROC AUC drop).

The gate compares the INT8 graph with the fp32 file on the whole validation split: max |dp|, the
share of labels flipped at the model's threshold, and ROC AUC; beyond the limits nothing is
written. The guard's scores move with the quantized activations it reads, so its threshold and
reference scores are refitted on the INT8 validation scores by the rule fp32 uses (the
``1 - false_flag_rate`` quantile; see ``cxr.export.trust``); the calibration (a, b) is kept and
checked to give the same mapping from the logit to the probability.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import InputError

QUANTIZED_OPS = ("Conv", "Clip", "Relu", "Add")
GROUP = re.compile(r"(stem|block\d+[a-z]?|top)_")
INPUT_GROUP = "input"
DEFAULT_MAX_AUC_DROP = 0.002
DEFAULT_MAX_FLIP_SHARE = 0.005
DEFAULT_MAX_FLOAT_GROUPS = 8
DEFAULT_SEARCH_MARGIN = 0.5
SENSITIVITY_IMAGES = 256
CALIBRATION_BATCH = 32
MAPPING_TOLERANCE = 1e-5
TRUST_PREFIXES = ("guard", "calibration", "calibrated_logit", "domain_score")


class QuantizeError(InputError, ValueError):
    """A model or manifest that cannot be quantized. One-line message."""


class GateFailed(QuantizeError):
    """The INT8 graph differs from fp32 beyond the gate's limits; nothing was written."""


@dataclass(frozen=True)
class GateFigures:
    """INT8 against fp32 on one set of labelled images, at the model's threshold."""

    split: str
    n: int
    max_abs_dp: float
    mean_abs_dp: float
    flips: int
    flip_share: float
    roc_auc_fp32: float
    roc_auc_int8: float
    max_auc_drop: float
    max_flip_share: float

    @property
    def auc_drop(self) -> float:
        return self.roc_auc_fp32 - self.roc_auc_int8

    @property
    def passed(self) -> bool:
        return self.auc_drop <= self.max_auc_drop and self.flip_share <= self.max_flip_share

    def within(self, fraction: float) -> bool:
        """Within ``fraction`` of each limit (the search's margin)."""
        return (
            self.auc_drop <= fraction * self.max_auc_drop
            and self.flip_share <= fraction * self.max_flip_share
        )

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{self.split} split, {self.n} images: max |dp| {self.max_abs_dp:.3g}, mean |dp| "
            f"{self.mean_abs_dp:.2g}, labels flipped {self.flips} ({self.flip_share:.2%}, limit "
            f"{self.max_flip_share:.2%}), ROC AUC {self.roc_auc_fp32:.4f} -> {self.roc_auc_int8:.4f} "
            f"({-self.auc_drop:+.4f}, limit -{self.max_auc_drop:g}) -> {verdict}"
        )

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "auc_drop": self.auc_drop, "passed": self.passed}


@dataclass(frozen=True)
class Search:
    """The gate's limits and how the float groups are searched: with ``--float-groups auto`` the most
    sensitive groups are kept float, one at a time, until the gate passes within ``margin`` of each
    limit (headroom for new images: a flip share measured on ~1,000 images is uncertain by about
    +-0.3 points), at most ``max_float_groups`` (then the best candidate within the limits); the file
    is written if the gate passes its limits."""

    max_auc_drop: float = DEFAULT_MAX_AUC_DROP
    max_flip_share: float = DEFAULT_MAX_FLIP_SHARE
    margin: float = DEFAULT_SEARCH_MARGIN
    max_float_groups: int = DEFAULT_MAX_FLOAT_GROUPS


def compare(
    p_fp32: np.ndarray,
    p_int8: np.ndarray,
    y: np.ndarray,
    threshold: float,
    split: str,
    max_auc_drop: float = DEFAULT_MAX_AUC_DROP,
    max_flip_share: float = DEFAULT_MAX_FLIP_SHARE,
) -> GateFigures:
    """The gate's figures for two models' probabilities on the same labelled images."""
    from sklearn.metrics import roc_auc_score

    diff = np.abs(p_int8 - p_fp32)
    flips = int(np.sum((p_int8 >= threshold) != (p_fp32 >= threshold)))
    both = len(set(y.tolist())) == 2
    auc = (lambda p: float(roc_auc_score(y, p))) if both else (lambda p: float("nan"))
    return GateFigures(
        split,
        len(y),
        float(diff.max()),
        float(diff.mean()),
        flips,
        flips / max(len(y), 1),
        auc(p_fp32),
        auc(p_int8),
        max_auc_drop,
        max_flip_share,
    )


@dataclass(frozen=True)
class LabelledImages:
    """Decoded images of one split of a manifest, their labels and the calibration-set hash."""

    split: str
    images: np.ndarray
    labels: np.ndarray
    paths: tuple[str, ...]  # the manifest's relative paths

    def fingerprint(self) -> dict[str, Any]:
        """What the metadata records of the set: the hash of its sorted paths, and their count."""
        text = "\n".join(sorted(self.paths))
        return {
            "split": self.split,
            "count": len(self.paths),
            "paths_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        }


def load_split(
    manifest: Path, split: str, size: int, positive: str, limit: int | None = None
) -> LabelledImages:
    """Decode a manifest's split with the shared preprocessing (``cxr.imaging.decode_many``); with
    ``limit``, an evenly spaced subset in manifest order."""
    from cxr.data import DataPrepError, load_manifest
    from cxr.imaging import ImageDecodeError, decode_many

    try:
        frame = load_manifest(manifest)
        rows = frame[frame["split"] == split]
        if rows.empty:
            raise QuantizeError(f"{manifest} has no '{split}' rows")
        if limit and limit < len(rows):
            rows = rows.iloc[np.linspace(0, len(rows) - 1, limit).round().astype(int)]
        images = decode_many(rows["abspath"].tolist(), size)
    except (DataPrepError, ImageDecodeError) as exc:
        raise QuantizeError(f"manifest {manifest}: {exc}") from None
    return LabelledImages(split, images, (rows["label"] == positive).to_numpy(int), tuple(rows["path"]))


# -- the graph: pre-processing, the backbone's groups ---------------------------------------------


def preprocess(model_path: Path, out_path: Path) -> None:
    """onnxruntime's quantization pre-processing: batch normalisation folded into the convolutions
    (basic graph optimisation) and ONNX shape inference."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet_logging():
        quant_pre_process(str(model_path), str(out_path), skip_symbolic_shape=True)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime's quantization tools log advice through the root logger: errors only meanwhile."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _last_activation(proto) -> str:
    from cxr.export.graph_edit import ACTIVATION

    found = [name for node in proto.graph.node for name in node.output if ACTIVATION.search(name)]
    if not found:
        raise QuantizeError(
            "no backbone activations (stem/blockN/top_activation) in this graph: not an exported cxr "
            "EfficientNet"
        )
    return found[-1]


def _group_of(node, consumers: dict[str, list]) -> str:
    """The Keras block a node belongs to: from its name or output, else from the activation or residual
    Add that reads it (an expansion or projection convolution), else from its data input."""
    readers = [c.name for c in consumers.get(node.output[0], [])]
    data = node.input[0] if node.input else ""
    texts = [
        node.name,
        node.output[0],
        *(r for r in readers if "activation" in r),
        *([data] if "activation" in data else []),
        *readers,
        data,
    ]
    for text in texts:
        match = GROUP.search(text)
        if match:
            return match.group(1)
    return INPUT_GROUP


def backbone_groups(proto) -> dict[str, list[str]]:
    """Node names of the backbone that int8 can run (``QUANTIZED_OPS``), by group, in graph order:
    the ancestors of the last backbone activation, so never a guard, calibration, head or CAM node."""
    producer = {name: node for node in proto.graph.node for name in node.output}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ancestors: set[str] = set()
    stack = [_last_activation(proto)]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in ancestors:
            ancestors.add(node.name)
            stack.extend(node.input)
    groups: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.name in ancestors and node.op_type in QUANTIZED_OPS:
            groups.setdefault(_group_of(node, consumers), []).append(node.name)
    trust = [n for names in groups.values() for n in names if n.startswith(TRUST_PREFIXES)]
    if trust:
        raise QuantizeError(f"the backbone reads the guard or calibration ({trust[0]}); not a cxr graph")
    return groups


def name_nodes(proto) -> bool:
    """Give every unnamed node a unique name (its first output's), as node lists select by name;
    True when a name was given."""
    taken = {node.name for node in proto.graph.node}
    changed = False
    for node in proto.graph.node:
        if not node.name:
            name = node.output[0]
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            changed = True
    return changed


def fuse_guard_squares(proto) -> list[str]:
    """The guard's mean of squares, ``ReduceMean(Mul(x, x))``, as ``ReduceSumSquare(x) * 1/(H*W)``: the
    same statistic (H*W = 64, a power of two, at the shipped taps), without the squared copy of each
    tap, and one read of the tap fewer (in the INT8 graph onnxruntime gives every reader of a tap its
    own DequantizeLinear). In place; returns the taps rewritten (those of unknown spatial size are left)."""
    from onnx import helper, numpy_helper

    shapes = {
        info.name: [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        for info in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
    }
    by_output = {node.output[0]: node for node in proto.graph.node}
    done = []
    for node in list(proto.graph.node):
        prefix = node.output[0][: -len("_meansq")] if node.output[0].endswith("_meansq") else None
        square = by_output.get(node.input[0]) if prefix and node.op_type == "ReduceMean" else None
        if square is None or square.op_type != "Mul" or square.input[0] != square.input[1]:
            continue
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        shape = shapes.get(square.input[0]) or []
        if axes != [2, 3] or len(shape) != 4 or None in shape[2:]:
            continue
        readers = [n for n in proto.graph.node if square.output[0] in n.input]
        if len(readers) != 1:
            continue
        area = np.array([1.0 / (shape[2] * shape[3])], np.float32)
        proto.graph.initializer.append(numpy_helper.from_array(area, f"{prefix}_inv_area"))
        position = list(proto.graph.node).index(node)
        proto.graph.node.remove(node)
        proto.graph.node.insert(
            position,
            helper.make_node(
                "Mul",
                [f"{prefix}_sumsq", f"{prefix}_inv_area"],
                [node.output[0]],
                name=node.name or node.output[0],
            ),
        )
        proto.graph.node.insert(
            list(proto.graph.node).index(square),
            helper.make_node(
                "ReduceSumSquare",
                [square.input[0]],
                [f"{prefix}_sumsq"],
                name=f"{prefix}_sumsq",
                axes=[2, 3],
                keepdims=0,
            ),
        )
        proto.graph.node.remove(square)
        done.append(square.input[0])
    return done


def trust_nodes(proto) -> list[str]:
    """The guard and calibration nodes (kept out of quantization; named in ``nodes_to_exclude``)."""
    return [
        node.name
        for node in proto.graph.node
        if node.name.startswith(TRUST_PREFIXES)
        or any(name.startswith(TRUST_PREFIXES) for name in node.output)
    ]


# -- quantizing and running ---------------------------------------------------------------------------------


def _reader(images: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(
                [
                    {"pixels": images[i : i + CALIBRATION_BATCH]}
                    for i in range(0, len(images), CALIBRATION_BATCH)
                ]
            )

        def get_next(self):
            return next(self._batches, None)

    return Batches()


def quantize_nodes(
    pre_path: Path, out_path: Path, nodes: list[str], exclude: list[str], calibration: np.ndarray, cache: Path
) -> None:
    """quantize_static on ``nodes`` (QDQ, per-channel int8 weights, uint8 activations, MinMax); the
    ranges are calibrated once and kept in ``cache`` for the next call."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    with _quiet_logging():
        quantize_static(
            str(pre_path),
            str(out_path),
            None if cache.is_file() else _reader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache),
        )


def run_outputs(model, images: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """The probability (and domain score, where there is one) of ``images``: a path or a ModelProto."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.name in ("probability", "domain_score")]
    outs = [session.run(names, {"pixels": images[i : i + batch]}) for i in range(0, len(images), batch)]
    return {
        name: np.concatenate([o[k].reshape(-1) for o in outs]).astype(np.float64)
        for k, name in enumerate(names)
    }


# -- choosing the float groups ------------------------------------------------------------------------------


@dataclass
class Workspace:
    """The pre-processed graph, its backbone groups, the nodes kept out, the calibration images and
    the cache of their activation ranges, and how many candidates the gate has seen."""

    pre_path: Path
    groups: dict[str, list[str]]
    exclude: list[str]
    calibration: np.ndarray
    cache: Path
    gate_tries: int = 0
    guard_taps_fused: int = 0

    def quantize(self, float_groups: list[str], out_path: Path) -> Path:
        nodes = [n for g, names in self.groups.items() if g not in float_groups for n in names]
        if not nodes:
            raise QuantizeError("every group of the backbone is kept float: nothing to quantize")
        quantize_nodes(self.pre_path, out_path, nodes, self.exclude, self.calibration, self.cache)
        if not _has_quantize_nodes(out_path):
            raise QuantizeError(
                f"groups {', '.join(g for g in self.groups if g not in float_groups)} left nothing "
                "that int8 runs (no QuantizeLinear in the graph)"
            )
        return out_path


def _has_quantize_nodes(path: Path) -> bool:
    import onnx

    return any(node.op_type == "QuantizeLinear" for node in onnx.load(str(path)).graph.node)


def sensitivity(work: Workspace, images: np.ndarray, reference: np.ndarray, tmp: Path) -> dict[str, float]:
    """Mean |dp| on ``images`` with one group quantized at a time, the others float."""
    found = {}
    for group in work.groups:
        path = work.quantize([g for g in work.groups if g != group], tmp / "one_group.onnx")
        found[group] = float(np.mean(np.abs(run_outputs(path, images)["probability"] - reference)))
    return found


def parse_float_groups(spec: str) -> list[str] | None:
    """'auto' -> None (search); 'none' -> []; else the comma-separated group names."""
    spec = spec.strip()
    if spec == "auto":
        return None
    if spec in ("none", ""):
        return []
    return [g.strip() for g in spec.split(",") if g.strip()]


# -- the whole step ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizeResult:
    """What ``quantize_model`` wrote and measured."""

    out_path: Path
    gate: GateFigures
    float_groups: tuple[str, ...]
    quantized_groups: tuple[str, ...]
    sensitivity: dict[str, float]
    guard: dict[str, Any] | None
    calibration_check: dict[str, Any] | None
    metadata: dict[str, Any] = field(default_factory=dict)


Say = Callable[[str], None]


def quantize_model(
    model_path: Path,
    out_path: Path,
    manifest: Path,
    *,
    search: Search = Search(),
    float_groups: list[str] | None = None,
    calibration_images: int | None = None,
    calibration: LabelledImages | None = None,
    say: Say = lambda text: None,
) -> QuantizeResult:
    """Quantize ``model_path`` (an exported cxr model) to ``out_path`` if the gate passes on the
    manifest's validation split; GateFailed (nothing written) otherwise. ``float_groups``: None
    searches them (see ``Search``). ``calibration`` replaces the calibration images (tests); ``say``
    receives progress lines."""
    import onnx

    from cxr.artifacts import ModelContract, ModelContractError
    from cxr.files import sha256_file

    try:
        contract = ModelContract.from_file(model_path)
    except ModelContractError as exc:
        raise QuantizeError(str(exc)) from None
    if contract.facts.get("quantization"):
        raise QuantizeError(f"{model_path} is already quantized; quantize its fp32 source")
    val = load_split(manifest, "val", contract.input_size, contract.positive_class)
    calib = calibration or (
        load_split(manifest, "val", contract.input_size, contract.positive_class, calibration_images)
        if calibration_images
        else val
    )
    say(
        f"validation split: {val.fingerprint()['count']} images; calibration: {len(calib.paths)} images of "
        "the "
        f"{calib.split} split"
    )
    reference = run_outputs(model_path, val.images)
    with tempfile.TemporaryDirectory(prefix="cxr-quantize-") as tmp_name:
        tmp = Path(tmp_name)
        work = _workspace(model_path, tmp, calib.images, float_groups)
        chosen, ranking, candidate, gate, outs = _choose(
            work, val, reference, contract.threshold, float_groups, search, tmp, say
        )
        proto = onnx.load(str(candidate))
        guard = _refit_guard(contract, reference, outs)
        check = calibration_mapping(proto, contract, val.images[:128])
        quantized = [g for g in work.groups if g not in chosen]
        facts = {
            "float_groups": list(chosen),
            "quantized_groups": quantized,
            "gate_tries": work.gate_tries,
            "guard_taps_fused": work.guard_taps_fused,
            "search": {
                "float_groups": "auto" if float_groups is None else "given",
                "margin": search.margin,
                "max_float_groups": search.max_float_groups,
            },
            "sensitivity_mean_abs_dp": {g: round(v, 5) for g, v in ranking.items()},
            "calibration_set": calib.fingerprint(),
            "gate": gate.record(),
            "calibration_check": check,
            "source": {"file": Path(model_path).name, "sha256": sha256_file(model_path)},
        }
        meta = _metadata(contract, guard, quantization_facts(facts))
        _write(proto, meta, out_path)
    return QuantizeResult(Path(out_path), gate, tuple(chosen), tuple(quantized), ranking, guard, check, meta)


def quantization_facts(measured: dict[str, Any]) -> dict[str, Any]:
    """The ``quantization`` metadata: how (fixed by this module) and what was measured."""
    return {
        "dtype": "int8",
        "format": "QDQ",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, asymmetric, per tensor",
        "method": "onnxruntime quantize_static, MinMax calibration",
        "onnxruntime": _ort_version(),
        "quantized_ops": list(QUANTIZED_OPS),
        "excluded": "domain guard, calibration, head and Grad-CAM nodes (float)",
        **measured,
    }


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _workspace(
    model_path: Path, tmp: Path, calibration: np.ndarray, float_groups: list[str] | None
) -> Workspace:
    import onnx

    pre_path = tmp / "preprocessed.onnx"
    preprocess(model_path, pre_path)
    pre = onnx.load(str(pre_path))
    named = name_nodes(pre)
    fused = fuse_guard_squares(pre)
    if named or fused:
        onnx.save(pre, str(pre_path))
    groups = backbone_groups(pre)
    unknown = sorted(set(float_groups or []) - set(groups))
    if unknown:
        raise QuantizeError(
            f"--float-groups: no group {unknown[0]!r} in this backbone (groups: {', '.join(groups)})"
        )
    return Workspace(
        pre_path, groups, trust_nodes(pre), calibration, tmp / "ranges.json", guard_taps_fused=len(fused)
    )


def _choose(
    work: Workspace,
    val: LabelledImages,
    reference: dict[str, np.ndarray],
    threshold: float,
    float_groups: list[str] | None,
    search: Search,
    tmp: Path,
    say: Say,
) -> tuple[list[str], dict[str, float], Path, GateFigures, dict[str, np.ndarray]]:
    """The float groups, the sensitivity ranking (when searched), the candidate graph that passes the
    gate, its figures and its validation outputs; GateFailed when none passes. The search stops at the
    first candidate within ``search.margin`` of each limit, else keeps the best one within the limits
    (fewest flips, then smallest AUC drop, then fewest float groups)."""
    ranking: dict[str, float] = {}
    chosen, passed = list(float_groups or []), None
    while True:
        outs = run_outputs(work.quantize(chosen, tmp / "candidate.onnx"), val.images)
        work.gate_tries += 1
        gate = compare(
            reference["probability"],
            outs["probability"],
            val.labels,
            threshold,
            "validation",
            search.max_auc_drop,
            search.max_flip_share,
        )
        margin = gate.within(search.margin)
        say(
            f"float groups [{', '.join(chosen) or 'none'}]: {gate.describe()}"
            + (f" (within {search.margin:.0%} of the limits)" if margin and float_groups is None else "")
        )
        if gate.passed and (passed is None or _better(gate, len(chosen), passed[2], len(passed[0]))):
            passed = (list(chosen), shutil.copy(tmp / "candidate.onnx", tmp / "passed.onnx"), gate, outs)
        if float_groups is not None or margin or len(chosen) >= search.max_float_groups:
            break
        ranking = ranking or _ranking(work, val, reference, tmp, say)
        remaining = [g for g in sorted(ranking, key=lambda g: -ranking[g]) if g not in chosen]
        if len(remaining) <= 1:
            break
        chosen.append(remaining[0])
    if passed is None:
        kept = f"with {', '.join(chosen)} float" if chosen else "with the whole backbone int8"
        raise GateFailed(f"int8 gate failed {kept}: {gate.describe()}; no file written")
    return passed[0], ranking, Path(passed[1]), passed[2], passed[3]


def _better(gate: GateFigures, n_float: int, best: GateFigures, best_float: int) -> bool:
    return (gate.flips, gate.auc_drop, n_float) < (best.flips, best.auc_drop, best_float)


def _ranking(
    work: Workspace, val: LabelledImages, reference: dict[str, np.ndarray], tmp: Path, say: Say
) -> dict[str, float]:
    subset = np.linspace(0, len(val.images) - 1, min(SENSITIVITY_IMAGES, len(val.images))).round().astype(int)
    ranking = sensitivity(work, val.images[subset], reference["probability"][subset], tmp)
    say(
        "sensitivity (mean |dp|, one group int8): "
        + ", ".join(f"{g} {v:.2g}" for g, v in sorted(ranking.items(), key=lambda kv: -kv[1]))
    )
    return ranking


def _refit_guard(
    contract, reference: dict[str, np.ndarray], outs: dict[str, np.ndarray]
) -> dict[str, Any] | None:
    """The guard's metadata for the INT8 graph: threshold and reference scores refitted on the INT8
    validation scores by the fp32 rule, and what moved."""
    guard = contract.facts.get("guard")
    if not guard:
        return None
    fp32, int8 = reference["domain_score"], outs["domain_score"]
    rate = float(guard["false_flag_rate"])
    threshold = float(np.quantile(int8, 1.0 - rate))
    refit = {
        "rule": "validation quantile 1 - false_flag_rate (as fp32)",
        "fp32_threshold": float(guard["threshold"]),
        "val_flagged_fp32": float(np.mean(fp32 > guard["threshold"])),
        "val_flagged_int8_at_fp32_threshold": float(np.mean(int8 > guard["threshold"])),
        "val_flagged_int8": float(np.mean(int8 > threshold)),
        "median_score_ratio_int8_to_fp32": float(np.median(int8 / fp32)),
        "score_rank_correlation": float(_spearman(fp32, int8)),
    }
    from cxr.export.trust import REFERENCE_DECIMALS

    return {
        **guard,
        "threshold": threshold,
        "reference_scores": [round(float(v), REFERENCE_DECIMALS) for v in np.sort(int8)],
        "int8_refit": refit,
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def calibration_mapping(proto, contract, images: np.ndarray) -> dict[str, Any] | None:
    """The calibration in the INT8 graph: its (a, b) are the fp32 model's, and the probability is
    sigmoid(a * logit + b) of the graph's own logit (QuantizeError otherwise)."""
    from onnx import TensorProto, helper, numpy_helper

    calib = contract.calibration
    if calib is None:
        return None
    inits = {
        i.name: float(numpy_helper.to_array(i).reshape(-1)[0])
        for i in proto.graph.initializer
        if i.name in ("calibration_a", "calibration_b")
    }
    scaled = next((n for n in proto.graph.node if n.output[0] == "calibration_scaled"), None)
    if scaled is None or len(inits) != 2:
        raise QuantizeError("the calibration step is missing from the quantized graph")
    if not (
        np.isclose(inits["calibration_a"], calib.a, rtol=1e-6)
        and np.isclose(inits["calibration_b"], calib.b, rtol=1e-6, atol=1e-7)
    ):
        raise QuantizeError("the quantized graph's calibration differs from the model's metadata")
    probe = proto.__class__()
    probe.CopyFrom(proto)
    probe.graph.output.append(helper.make_tensor_value_info(scaled.input[0], TensorProto.FLOAT, None))
    import onnxruntime as ort

    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    p, logit = session.run(["probability", scaled.input[0]], {"pixels": images})
    expected = 1.0 / (1.0 + np.exp(-(calib.a * logit.reshape(-1).astype(np.float64) + calib.b)))
    diff = float(np.max(np.abs(p.reshape(-1) - expected)))
    if diff > MAPPING_TOLERANCE:
        raise QuantizeError(
            f"the quantized graph's calibration maps the logit differently (max |dp| {diff:.2g})"
        )
    return {
        "method": calib.method,
        "a": calib.a,
        "b": calib.b,
        "same_mapping": True,
        "max_abs_diff": diff,
        "n_images": len(images),
    }


def _metadata(contract, guard: dict[str, Any] | None, quantization: dict[str, Any]) -> dict[str, Any]:
    meta = {**contract.metadata(), "quantization": quantization}
    if guard is not None:
        meta["guard"] = guard
    return meta


def _write(proto, meta: dict[str, Any], out_path: Path) -> None:
    """The metadata validated by the contract, the file written atomically and loaded back."""
    import onnx

    from cxr.artifacts import ModelContract, ModelContractError
    from cxr.artifacts.model_contract import METADATA_PREFIX
    from cxr.files import atomic_path, write_json_atomic

    try:
        contract = ModelContract.from_metadata(
            {f"{METADATA_PREFIX}{k}": v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        )
        props = contract.to_metadata()
    except ModelContractError as exc:
        raise QuantizeError(f"the quantized model breaks its contract: {exc}") from None
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    with atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
        ModelContract.from_file(tmp)
    write_json_atomic(sidecar_path(out_path), meta["quantization"])


def sidecar_path(out_path: Path) -> Path:
    """``models/model1.int8.onnx`` -> ``models/model1.int8.quantization.json``."""
    return Path(out_path).with_suffix(".quantization.json")


def default_out(model_path: Path) -> Path:
    """``models/model1.onnx`` -> ``models/model1.int8.onnx``."""
    return Path(model_path).with_suffix(".int8.onnx")
