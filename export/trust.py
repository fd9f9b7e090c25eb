"""The domain guard and the calibration step, fitted on a model's own splits and folded into its ONNX
graph, so every engine (CPU, GPU, Ray) gets them and inference still needs no TensorFlow.

- **Guard** (``domain_score`` output): a Gaussian (Ledoit-Wolf) is fitted, per tap, on the pooled
  mean and standard deviation of the activations of the training images, at the taps chosen by
  ``scripts/domain_methods.py`` (the last four activations at 8x8: blocks 11-14 of EfficientNet-Lite2).
  An image's score is the geometric mean over the taps of its squared Mahalanobis distance divided by
  the median distance of the training images: about 1 for a typical training image, higher for an
  image less like them. The threshold is the validation scores' quantile for the stated false-flag
  rate. The validation scores themselves travel in the metadata as the reference for the set-level
  shift test.
- **Site classifier** (optional, ``--guard-outliers``): the Gaussian alone flags about 85% of the
  chest X-rays of other sites at 1% false flags (``scripts/guard_variants.py``). A logistic regression
  on the same pooled statistics, training images against chest X-rays of other sites and training
  images turned, inverted or halved (outlier exposure, Hendrycks et al. 2019; measured side by side
  in ``scripts/guard_site.py``), is folded in beside it: its logit is mapped onto the Gaussian's
  log scale by the validation images' mean and spread, and the score is the larger of the two. It is
  one more matrix product on statistics the guard already computes.
- **Calibration**: Platt scaling of the positive logit, ``sigmoid(a * logit + b)``, fitted on the
  validation split (temperature scaling is the special case ``b = 0``, measured beside it). The
  threshold rule then runs again on the calibrated validation probabilities.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cxr.calibration import expected_calibration_error
from cxr.export.graph_edit import GraphEditError, _node, logit_name, pooled_statistics
from cxr.thresholds import RuleFacts

DOMAIN_OUTPUT = "domain_score"
GUARD_METHOD = "mahalanobis-multi-depth"
SITE_METHOD = "site-classifier"
DEFAULT_FALSE_FLAGS = 0.01
DEFAULT_OUTLIER_SHARE = 0.5
SITE_PCA = 256  # the classifier sees the statistics through this many principal components
SITE_C = 0.01  # its inverse regularisation strength (scripts/guard_site.py measured 0.001-0.1)
GUARD_TAPS = 4
CALIBRATION_METHODS = ("platt", "temperature")
REFERENCE_DECIMALS = 4


@dataclass(frozen=True)
class GuardFacts:
    """Where a guard was fitted and its threshold set, on how many images, and a warning where
    they were too few."""

    fitted_on: str = "training split"
    threshold_on: str = "validation split"
    n_train: int = 0
    n_val: int = 0
    warning: str | None = None

    def to_json(self) -> dict[str, str | int]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class Outliers:
    """What the site classifier learns as "not like the training images": the pooled features (one
    array per tap) of other sites' chest X-rays, and of training images turned, inverted or halved
    (``made_up_outliers``); the folder's name, the share of its patients used, and their hashed ids
    (``cxr.foreign.patient_key``), so that measurements can leave those patients out."""

    features: list[np.ndarray]
    made_up: list[np.ndarray] | None = None
    source: str = ""
    share: float = 1.0
    patients: tuple[str, ...] = ()


@dataclass(frozen=True)
class SiteClassifier:
    """A linear classifier on the guard's pooled statistics, training images (0) against chest
    X-rays of other sites and made-up outliers (1), already mapped onto the guard's log scale: its
    log score is ``sum(stats_k @ weights_k) + bias``."""

    weights: tuple[np.ndarray, ...]
    bias: float
    n_sites: int  # chest X-rays of other sites
    n_made_up: int  # training images turned, inverted or halved
    source: str
    share: float
    patients: tuple[str, ...] = ()  # the other sites' patients learnt from, hashed

    def log_scores(self, features: list[np.ndarray]) -> np.ndarray:
        return sum(f @ w for f, w in zip(features, self.weights)) + self.bias

    def metadata(self) -> dict[str, str | int | float]:
        return {
            "fitted_on": f"training split against chest X-rays of other sites ({self.source}) and "
            "training images turned, inverted or halved",
            "n_other_site_images": self.n_sites,
            "n_made_up_images": self.n_made_up,
            "outlier_share": self.share,
            "held_out": "the outlier folder's other patients (cxr.foreign.not_learnt_from)",
            "patients_sha256": sorted(self.patients),
        }


def fit_site_classifier(
    train: list[np.ndarray], outliers: Outliers, val: list[np.ndarray], val_log: np.ndarray
) -> SiteClassifier:
    """Standardise, project on the training images' principal components, fit a balanced logistic
    regression, and fold the three linear steps into one weight vector per tap; then map the logit
    onto the guard's log scale so that the validation images have the same mean and spread on both."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_in, x_out = np.concatenate(train, 1), np.concatenate(outliers.features, 1)
    if outliers.made_up is not None:
        x_out = np.concatenate([x_out, np.concatenate(outliers.made_up, 1)])
    scaler = StandardScaler().fit(x_in)
    pca = PCA(min(SITE_PCA, *x_in.shape), random_state=0).fit(scaler.transform(x_in))
    project = lambda x: pca.transform(scaler.transform(x))  # noqa: E731 - used twice just below
    y = np.r_[np.zeros(len(x_in)), np.ones(len(x_out))]
    model = LogisticRegression(C=SITE_C, class_weight="balanced", max_iter=5000)
    model.fit(np.concatenate([project(x_in), project(x_out)]), y)
    direction = pca.components_.T @ model.coef_[0]
    weight = direction / scaler.scale_
    bias = float(model.intercept_[0] - (scaler.mean_ / scaler.scale_ + pca.mean_) @ direction)
    val_logit = np.concatenate(val, 1) @ weight + bias
    slope = float(np.std(val_log) / max(np.std(val_logit), 1e-12))
    shift = float(np.mean(val_log) - slope * np.mean(val_logit))
    splits = np.cumsum([f.shape[1] for f in train])[:-1]
    weights = tuple(np.split(weight * slope, splits))
    n_sites = int(len(outliers.features[0]))
    return SiteClassifier(
        weights,
        bias * slope + shift,
        n_sites,
        int(len(x_out)) - n_sites,
        outliers.source,
        outliers.share,
        outliers.patients,
    )


@dataclass(frozen=True)
class GuardFit:
    """A fitted guard: per tap (name, mean, precision square root, training median distance)."""

    taps: tuple[str, ...]
    means: tuple[np.ndarray, ...]
    roots: tuple[np.ndarray, ...]
    medians: tuple[float, ...]
    threshold: float
    false_flag_rate: float
    reference: tuple[float, ...]  # the validation images' scores, sorted
    facts: GuardFacts = field(default_factory=GuardFacts)
    site: SiteClassifier | None = None

    def gaussian_log(self, features: list[np.ndarray]) -> np.ndarray:
        """The mean over the taps of log(squared Mahalanobis distance / training median)."""
        logs = [
            np.log(np.maximum(((f - m) @ r) ** 2, 0).sum(1) / med)
            for f, m, r, med in zip(features, self.means, self.roots, self.medians)
        ]
        return np.mean(logs, axis=0)

    def scores(self, features: list[np.ndarray]) -> np.ndarray:
        """The guard's score from pooled features (one array per tap), as the graph computes it."""
        log = self.gaussian_log(features)
        if self.site is not None:
            log = np.maximum(log, self.site.log_scores(features))
        return np.exp(log)

    def metadata(self) -> dict[str, str | float | int | list[str] | list[float]]:
        """The model metadata's ``guard`` entry (``cxr.artifacts.model_contract.DomainGuard`` reads it)."""
        site = {"site_classifier": self.site.metadata()} if self.site else {}
        return {
            "method": f"{GUARD_METHOD}+{SITE_METHOD}" if self.site else GUARD_METHOD,
            "output": DOMAIN_OUTPUT,
            "threshold": self.threshold,
            "false_flag_rate": self.false_flag_rate,
            "taps": list(self.taps),
            "reference_scores": [round(float(v), REFERENCE_DECIMALS) for v in self.reference],
            **self.facts.to_json(),
            **site,
        }


def guard_taps(proto, count: int = GUARD_TAPS) -> list[tuple[str, int]]:
    """The guard's taps: the last ``count`` depthwise activations at 1/16 of the input size (8x8 for
    EfficientNet-Lite2 at 128 px: blocks 11-14, the end of the 528-channel stage and the 720-channel
    stage), found from the graph; fewer where the backbone has fewer at that size."""
    from cxr.export.graph_edit import ACTIVATION, _shapes

    shapes = _shapes(proto)
    acts = [
        (name, shapes[name])
        for node in proto.graph.node
        for name in node.output
        if ACTIVATION.search(name) and len(shapes.get(name, [])) == 4
    ]
    sides = sorted({int(shape[2]) for _, shape in acts if isinstance(shape[2], int) and shape[2] > 0})
    if not sides:
        raise GraphEditError("the guard needs backbone activations of known size; this graph has none")
    size = proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value or 128
    side = min(sides, key=lambda s: (abs(s - size / 16), s))  # 1/16 of the input, or the nearest there is
    return [(name, int(shape[1])) for name, shape in acts if shape[2] == side][-count:]


def feature_model(proto, taps: list[tuple[str, int]], with_logit: bool = True):
    """A copy of ``proto`` whose outputs are the taps' pooled statistics (and the logit)."""
    from onnx import TensorProto, helper

    from cxr.export.graph_edit import with_feature_outputs

    probe = with_feature_outputs(proto, taps)
    del probe.graph.output[: len(proto.graph.output)]
    if with_logit:
        probe.graph.node.append(_node("Identity", [logit_name(probe)], "logit"))
        probe.graph.output.append(helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1]))
    return probe


def run_features(probe, images: np.ndarray, batch: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
    """(pooled features per tap, logits) of uint8 NHWC images through a ``feature_model``."""
    import onnxruntime as ort

    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outs = [
        session.run(names, {session.get_inputs()[0].name: images[i : i + batch]})
        for i in range(0, len(images), batch)
    ]
    joined = [np.concatenate([o[k] for o in outs]).astype(np.float64) for k in range(len(names))]
    logits = joined[-1].reshape(-1) if names[-1] == "logit" else np.empty(0)
    return [j for n, j in zip(names, joined) if n != "logit"], logits


MIN_GUARD_VAL = 20  # the shift test's reference needs as many (model_metadata.schema.json)


def fit_guard(
    taps: list[str],
    train: list[np.ndarray],
    val: list[np.ndarray],
    false_flags: float,
    outliers: Outliers | None = None,
) -> GuardFit:
    """Ledoit-Wolf per tap on the training features, and with ``outliers`` the site classifier
    beside it; threshold at the validation quantile."""
    from sklearn.covariance import LedoitWolf

    if len(val[0]) < MIN_GUARD_VAL:
        raise GraphEditError(
            f"the domain guard sets its threshold on at least {MIN_GUARD_VAL} validation images; "
            f"this split has {len(val[0])} (export with --no-guard)"
        )

    means, roots, medians = [], [], []
    for features in train:
        lw = LedoitWolf().fit(features)
        root = np.linalg.cholesky(lw.precision_)  # precision = root @ root.T, so d^2 = |(x - m) @ root|^2
        means.append(lw.location_)
        roots.append(root)
        medians.append(float(np.median((((features - lw.location_) @ root) ** 2).sum(1))))
    draft = GuardFit(tuple(taps), tuple(means), tuple(roots), tuple(medians), 0.0, false_flags, ())
    if outliers is not None:
        site = fit_site_classifier(train, outliers, val, draft.gaussian_log(val))
        draft = replace(draft, site=site)
    val_scores = np.sort(draft.scores(val))
    threshold = float(np.quantile(val_scores, 1.0 - false_flags))
    return GuardFit(
        draft.taps,
        draft.means,
        draft.roots,
        draft.medians,
        threshold,
        false_flags,
        tuple(val_scores.tolist()),
        GuardFacts(n_train=int(len(train[0])), n_val=int(len(val[0]))),
        draft.site,
    )


def attach_guard(proto, fit: GuardFit) -> None:
    """Append the guard to ``proto`` (in place): output ``domain_score`` (N,)."""
    from onnx import TensorProto, helper, numpy_helper

    logs, all_stats = [], []
    for index, (tap, mean, root, median) in enumerate(zip(fit.taps, fit.means, fit.roots, fit.medians)):
        prefix = f"guard{index}"
        nodes, stats = pooled_statistics(proto, tap, prefix)
        all_stats.append(stats)
        proto.graph.node.extend(nodes)
        proto.graph.initializer.extend(
            [
                numpy_helper.from_array(mean.astype(np.float32), f"{prefix}_location"),
                numpy_helper.from_array(root.astype(np.float32), f"{prefix}_root"),
                numpy_helper.from_array(np.array([median], np.float32), f"{prefix}_median"),
            ]
        )
        proto.graph.node.extend(
            [
                _node("Sub", [stats, f"{prefix}_location"], f"{prefix}_centred"),
                _node("MatMul", [f"{prefix}_centred", f"{prefix}_root"], f"{prefix}_whitened"),
                _node("ReduceSumSquare", [f"{prefix}_whitened"], f"{prefix}_d2", axes=[1], keepdims=0),
                _node("Div", [f"{prefix}_d2", f"{prefix}_median"], f"{prefix}_ratio"),
                _node("Log", [f"{prefix}_ratio"], f"{prefix}_log"),
            ]
        )
        logs.append(f"{prefix}_log")
    proto.graph.node.extend(
        [
            _node("Concat", logs, "guard_logs_flat", axis=0),
            _node("Reshape", ["guard_logs_flat", "guard_shape"], "guard_logs"),
            _node("ReduceMean", ["guard_logs"], "guard_mean_log", axes=[0], keepdims=0),
        ]
    )
    proto.graph.initializer.append(
        numpy_helper.from_array(np.array([len(logs), -1], np.int64), "guard_shape")
    )
    log = _attach_site_classifier(proto, fit.site, all_stats) if fit.site else "guard_mean_log"
    proto.graph.node.append(_node("Exp", [log], DOMAIN_OUTPUT))
    proto.graph.output.append(helper.make_tensor_value_info(DOMAIN_OUTPUT, TensorProto.FLOAT, ["batch"]))


def _attach_site_classifier(proto, site: SiteClassifier, stats: list[str]) -> str:
    """The site classifier's log score beside the Gaussian's: ``max(mean log, sum(stats_k @ w_k) + b)``;
    returns the name of that maximum."""
    from onnx import numpy_helper

    parts = []
    for index, (name, weight) in enumerate(zip(stats, site.weights)):
        proto.graph.initializer.append(
            numpy_helper.from_array(weight.astype(np.float32), f"guard_site_w{index}")
        )
        proto.graph.node.append(_node("MatMul", [name, f"guard_site_w{index}"], f"guard_site_part{index}"))
        parts.append(f"guard_site_part{index}")
    proto.graph.initializer.append(numpy_helper.from_array(np.array([site.bias], np.float32), "guard_site_b"))
    proto.graph.node.extend(
        [
            _node("Sum", parts, "guard_site_sum"),
            _node("Add", ["guard_site_sum", "guard_site_b"], "guard_site_log"),
            _node("Max", ["guard_mean_log", "guard_site_log"], "guard_log"),
        ]
    )
    return "guard_log"


# -- calibration ---------------------------------------------------------------------------------------------


def fit_calibration(logits: np.ndarray, y: np.ndarray, method: str = "platt") -> tuple[float, float]:
    """(a, b) of ``sigmoid(a * logit + b)`` minimising the validation log loss against Platt's (1999)
    smoothed targets, (n+ + 1) / (n+ + 2) and 1 / (n- + 2), which keep the fit finite when the
    validation set is small or perfectly separated."""
    from scipy.optimize import minimize

    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss(params):
        a, b = params[0], params[1] if method == "platt" else 0.0
        z = a * logits + b
        return float(np.mean(np.logaddexp(0, z) - target * z))

    start = np.array([1.0, 0.0]) if method == "platt" else np.array([1.0])
    result = minimize(
        loss, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000}
    )
    a = float(result.x[0])
    b = float(result.x[1]) if method == "platt" else 0.0
    if not (np.isfinite(a) and a > 0):
        raise GraphEditError(
            f"calibration failed: slope {a:.4g} (the validation logits do not rank the classes); "
            "export with --calibration none to keep the model's own probabilities"
        )
    return a, b


def calibrated(logits: np.ndarray, a: float, b: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(a * logits + b)))


def attach_calibration(proto, a: float, b: float) -> None:
    """Insert ``a * logit + b`` before the final Sigmoid (in place); the cam output is untouched."""
    from onnx import numpy_helper

    sigmoid = next(node for node in proto.graph.node if node.op_type == "Sigmoid")
    logit = sigmoid.input[0]
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([a], np.float32), "calibration_a"),
            numpy_helper.from_array(np.array([b], np.float32), "calibration_b"),
        ]
    )
    proto.graph.node.extend(
        [
            _node("Mul", [logit, "calibration_a"], "calibration_scaled"),
            _node("Add", ["calibration_scaled", "calibration_b"], "calibrated_logit"),
        ]
    )
    sigmoid.input[0] = "calibrated_logit"


def topologically_sorted(proto) -> None:
    """Reorder nodes so that every input is produced before it is read (edits append nodes that
    earlier nodes may now read), keeping the original order where it already holds."""
    produced = {i.name for i in proto.graph.input} | {i.name for i in proto.graph.initializer} | {""}
    pending, ordered = [copy.deepcopy(n) for n in proto.graph.node], []
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:
            raise GraphEditError("the edited graph has a cycle or a missing input")
        ordered.extend(ready)
        for node in ready:
            produced.update(node.output)
        taken = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in taken]
    del proto.graph.node[:]
    proto.graph.node.extend(ordered)


# -- the whole step: fit on a manifest's splits, fold into the graph, check ----------------------------------

TRUST_PREFIXES = ("guard", "calibration", "calibrated_logit")
EDIT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CalibrationFit:
    """A calibration fitted on the validation split: ``sigmoid(a * logit + b)`` by ``method``, and
    the validation ECE before and after."""

    method: str
    a: float
    b: float
    val_ece_before: float
    val_ece_after: float
    fitted_on: str = "validation split"

    def to_json(self) -> dict[str, str | float]:
        """The model metadata's ``calibration`` entry."""
        return {
            "method": self.method,
            "a": self.a,
            "b": self.b,
            "fitted_on": self.fitted_on,
            "val_ece_before": self.val_ece_before,
            "val_ece_after": self.val_ece_after,
        }


@dataclass(frozen=True)
class TrustResult:
    """What ``add_trust`` wrote and measured (validation figures; the test split is measured by
    ``make results``)."""

    model_path: Path
    threshold_rule: RuleFacts
    guard: GuardFit | None
    calibration: CalibrationFit | None
    max_abs_diff: float


def strip_trust(proto) -> None:
    """Remove an earlier guard and calibration from the graph (in place), so that refitting starts
    from the model; the metadata is the caller's (see ``raw_threshold``)."""
    sigmoid = next((n for n in proto.graph.node if n.op_type == "Sigmoid"), None)
    if sigmoid is not None and sigmoid.input[0] == "calibrated_logit":
        scaled = next(n for n in proto.graph.node if n.output[0] == "calibration_scaled")
        sigmoid.input[0] = scaled.input[0]
    keep = [
        n
        for n in proto.graph.node
        if not n.output[0].startswith(TRUST_PREFIXES) and n.output[0] != DOMAIN_OUTPUT
    ]
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    inits = [i for i in proto.graph.initializer if not i.name.startswith(TRUST_PREFIXES)]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    outputs = [o for o in proto.graph.output if o.name != DOMAIN_OUTPUT]
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)


def raw_threshold(contract) -> float:
    """The model's threshold on the scale of its uncalibrated output (an earlier calibration undone),
    so that refitting does not move a fixed threshold."""
    c = contract.calibration
    if c is None:
        return contract.threshold
    t = min(max(contract.threshold, 1e-12), 1 - 1e-12)
    return float(calibrated(np.array([(np.log(t / (1 - t)) - c.b) / c.a]), 1.0, 0.0)[0])


MIN_GUARD_TRAIN = 500


def _split_images(manifest, split: str, size: int, positive: str) -> tuple[np.ndarray, np.ndarray]:
    from cxr.data import DataPrepError, load_manifest
    from cxr.imaging import ImageDecodeError, decode_many

    try:
        frame = load_manifest(manifest)
        rows = frame[frame["split"] == split]
        if rows.empty:
            raise GraphEditError(f"{manifest} has no '{split}' rows")
        return decode_many(rows["abspath"].tolist(), size), (rows["label"] == positive).to_numpy(int)
    except (DataPrepError, ImageDecodeError) as exc:
        raise GraphEditError(f"manifest {manifest}: {exc}") from None


def add_trust(
    model_path,
    out_path,
    manifest,
    *,
    guard: bool = True,
    calibration: str | None = "platt",
    false_flags: float = DEFAULT_FALSE_FLAGS,
    threshold: str | None = None,
    threshold_rule: str = "wilson",
    target_recall: float = 0.95,
    outliers: Path | None = None,
    outlier_share: float = DEFAULT_OUTLIER_SHARE,
) -> TrustResult:
    """Fit the guard (training split; with ``outliers``, a folder of chest X-rays from other sites, the
    site classifier on ``outlier_share`` of its patients) and the calibration (validation split) of
    an exported model, fold them into its graph, choose the threshold on the calibrated validation
    probabilities, and write ``out_path`` after checking the new graph against the fitted numbers.
    An earlier guard and calibration are replaced (with neither asked for, they are removed).

    ``threshold``: None keeps the model's own rule (rerun on the calibrated validation split, or a
    fixed threshold carried to the calibrated scale); 'val' chooses it by ``threshold_rule`` and
    ``target_recall``; a number is a fixed threshold on the calibrated output."""
    import onnx

    from cxr.artifacts import ModelContract, ModelContractError

    try:
        proto = onnx.load(str(model_path))
        contract = ModelContract.from_metadata(
            {p.key: p.value for p in proto.metadata_props}, str(model_path)
        )
    except ModelContractError as exc:
        raise GraphEditError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - onnx raises protobuf's and its own assorted types
        raise GraphEditError(f"cannot load {model_path} as an ONNX model: {type(exc).__name__}") from None
    raw = raw_threshold(contract)
    strip_trust(proto)
    taps = guard_taps(proto)
    val_images, y_val = _split_images(manifest, "val", contract.input_size, contract.positive_class)
    val_features, val_logits = run_features(feature_model(proto, taps), val_images)
    fit = (
        _fit_guard(proto, taps, manifest, contract, val_features, false_flags, outliers, outlier_share)
        if guard
        else None
    )
    calib, p_val = None, calibrated(val_logits, 1.0, 0.0)
    if calibration:
        a, b = fit_calibration(val_logits, y_val, calibration)
        p_val_cal = calibrated(val_logits, a, b)
        calib = CalibrationFit(
            calibration,
            a,
            b,
            expected_calibration_error(y_val, p_val),
            expected_calibration_error(y_val, p_val_cal),
        )
        p_val = p_val_cal
    rule = _threshold_rule(
        contract, raw, calib, y_val, p_val, manifest, threshold, threshold_rule, target_recall
    )
    if calib:
        attach_calibration(proto, calib.a, calib.b)
    if fit:
        attach_guard(proto, fit)
    topologically_sorted(proto)
    _write_metadata(proto, contract, rule, fit, calib)
    onnx.checker.check_model(proto)
    from cxr.files import atomic_path

    with atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
        diff = _check_edit(tmp, val_images[:128], p_val[:128], fit, [f[:128] for f in val_features])
    return TrustResult(Path(out_path), rule, fit, calib, diff)


MIN_OUTLIERS = 20
MADE_UP_PER_KIND = 300  # training images turned, inverted or halved for the site classifier, per kind


def made_up_outliers(images: np.ndarray, per_kind: int = MADE_UP_PER_KIND, seed: int = 0) -> np.ndarray:
    """Training images turned 90 or 180 degrees, inverted, or halved and stretched back
    (``cxr.foreign.chest_variant``), ``per_kind`` of each: outliers the site classifier learns
    beside the other sites' chests, so that its share of the false-flag budget does not cost the
    Gaussian its inverted chests."""
    from PIL import Image

    from cxr.foreign import CHEST_VARIANTS, chest_variant

    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), size=min(per_kind, len(images)), replace=False)
    size = images.shape[1]
    made = []
    for kind in CHEST_VARIANTS:
        for index in chosen:
            variant = chest_variant(images[index], kind, int(index))
            if variant.shape[:2] != (size, size):
                variant = np.asarray(Image.fromarray(variant).resize((size, size), Image.BILINEAR))
            made.append(variant)
    return np.stack(made)


def outlier_paths(folder: Path, share: float) -> dict[str, str]:
    """The images of ``folder`` that fit the site classifier (``cxr.foreign.outlier_fit_part``), each
    with its hashed patient; a one-line error where the folder is missing or too few are chosen."""
    from cxr.foreign import keys_in_fit_part, outlier_patient, patient_key
    from cxr.imaging import list_images

    if not Path(folder).is_dir():
        raise GraphEditError(f"--guard-outliers {folder} is not a folder")
    paths = [str(p) for p in list_images(folder)]
    keys = [patient_key(outlier_patient(p)) for p in paths]
    chosen = {p: k for p, k, fit in zip(paths, keys, keys_in_fit_part(keys, share)) if fit}
    if len(chosen) < MIN_OUTLIERS:
        raise GraphEditError(
            f"--guard-outliers {folder}: {len(chosen)} images chosen of {len(paths)}; the site "
            f"classifier needs at least {MIN_OUTLIERS} (give more images or a larger --guard-outlier-share)"
        )
    return chosen


def _outliers(folder: Path, share: float, size: int, probe, train_images: np.ndarray) -> Outliers:
    from cxr.imaging import ImageDecodeError, decode_many

    chosen = outlier_paths(folder, share)
    try:
        images = decode_many(list(chosen), size)
    except ImageDecodeError as exc:
        raise GraphEditError(f"--guard-outliers {folder}: {exc}") from None
    return Outliers(
        run_features(probe, images)[0],
        run_features(probe, made_up_outliers(train_images))[0],
        Path(folder).name,
        share,
        tuple(sorted(set(chosen.values()))),
    )


def _fit_guard(
    proto, taps, manifest, contract, val_features, false_flags, outliers, outlier_share
) -> GuardFit:
    train_images, _ = _split_images(manifest, "train", contract.input_size, contract.positive_class)
    probe = feature_model(proto, taps, with_logit=False)
    train_features, _ = run_features(probe, train_images)
    learnt = (
        _outliers(outliers, outlier_share, contract.input_size, probe, train_images)
        if outliers is not None
        else None
    )
    fit = fit_guard([t for t, _ in taps], train_features, val_features, false_flags, learnt)
    if fit.facts.n_train < MIN_GUARD_TRAIN:
        warning = (
            f"fitted on only {fit.facts.n_train} training images (fewer than "
            f"{MIN_GUARD_TRAIN}): its scores and threshold are rough"
        )
        fit = replace(fit, facts=replace(fit.facts, warning=warning))
    return fit


def _threshold_rule(
    contract,
    raw: float,
    calib: CalibrationFit | None,
    y_val,
    p_val,
    manifest,
    threshold,
    rule_name,
    target_recall,
) -> RuleFacts:
    """The threshold and its rule on the (calibrated) validation probabilities."""
    from cxr.thresholds import ThresholdError, choose_threshold

    old = contract.threshold_rule
    if threshold is None and old.get("rule") in ("wilson", "point"):
        threshold, rule_name, target_recall = "val", old["rule"], float(old["target_recall"])
    try:
        if threshold == "val":
            chosen = choose_threshold(y_val, p_val, target_recall, rule_name)
            return chosen.from_source(f"validation split of {manifest}", int(len(y_val))).to_json()
    except ThresholdError as exc:
        raise GraphEditError(str(exc)) from None
    if threshold is not None:
        value = float(threshold)
        if not 0.0 < value < 1.0:
            raise GraphEditError(f"--threshold must be in (0, 1), not {value}")
        return {"threshold": value, "rule": "fixed"}
    logit = float(np.log(raw / (1 - raw)))
    value = float(calibrated(np.array([logit]), calib.a, calib.b)[0]) if calib else raw
    return {**old, "threshold": value}


def _write_metadata(
    proto, contract, rule: RuleFacts, fit: GuardFit | None, calib: CalibrationFit | None
) -> None:
    from cxr.artifacts import ModelContract, ModelContractError
    from cxr.artifacts.model_contract import METADATA_PREFIX

    meta = {**contract.metadata(), "threshold": rule["threshold"], "threshold_rule": rule}
    meta.pop("guard", None)
    meta.pop("calibration", None)
    if fit:
        meta["guard"] = fit.metadata()
    if calib:
        meta["calibration"] = calib.to_json()
    try:
        new_contract = ModelContract.from_metadata(
            {f"{METADATA_PREFIX}{k}": v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        )
    except ModelContractError as exc:
        raise GraphEditError(f"the calibrated model breaks its contract: {exc}") from None
    del proto.metadata_props[:]
    for key, value in sorted(new_contract.to_metadata().items()):
        proto.metadata_props.add(key=key, value=value)


def _check_edit(
    path, images: np.ndarray, expected_p: np.ndarray, fit: GuardFit | None, features: list[np.ndarray]
) -> float:
    """The edited graph must give the fitted numbers: probabilities within EDIT_TOLERANCE and guard
    scores within 0.1% (float32 against float64)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["probability"] + ([DOMAIN_OUTPUT] if fit else [])
    outs = session.run(names, {"pixels": images})
    diff = float(np.max(np.abs(outs[0].reshape(-1) - expected_p)))
    if diff > EDIT_TOLERANCE:
        raise GraphEditError(f"the calibrated graph differs from the fitted calibration by {diff:.2g}")
    if fit is not None:
        want = fit.scores(features)
        rel = float(np.max(np.abs(outs[1] - want) / want))  # scores are exp(...) > 0
        if rel > 1e-3:
            raise GraphEditError(
                f"the guard in the graph differs from the fitted guard by {rel:.2g} (relative)"
            )
    return diff
