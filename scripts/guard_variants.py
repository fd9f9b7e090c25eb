"""Can the domain guard flag more chest X-rays from other sites without more false flags?

    python scripts/guard_variants.py --model models/model1.onnx --runs out/domain/runs/model1 \
        --features out/domain/features_model1.npz --out results/domain/model1_variants.md [--spatial]

Three experiments on one model, each threshold set on the validation split only:

1. **The false-flag rate.** The shipped guard's own scores (``cxr-infer`` runs that ``make domain``
   leaves in ``--runs``) against the validation scores stored in the model: the share of each set
   flagged when the threshold is set for 0.5% ... 3% false flags on validation.
2. **Other taps and other combinations.** The Mahalanobis distance per activation, from the feature
   cache that ``scripts/domain_methods.py --sweep`` writes, combined over other blocks, by the
   geometric mean (the shipped rule), the mean of z-scores, or the maximum of z-scores.
3. **The guard or a domain classifier.** The shipped guard's flags joined with those of an
   outlier-exposure classifier on the same taps (scripts/domain_methods.py), the total validation
   false flags held fixed.
4. (``--spatial``) **Where in the image.** The activations pooled over a 2x2 or 4x4 grid instead of
   over the whole image, alone and joined with the shipped statistics.

It prints Markdown tables (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SETS = (
    "test",
    "other_site:ieee8023_covid_chestxray",
    "other_site:actualmed_covid",
    "other_site:figure1_covid",
    "non_xray",
    "rot90",
    "rot180",
    "inverted",
    "half",
)
RATES = (0.005, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03)
SHIPPED = ("block11", "block12", "block13", "block14")


def short(layer: str) -> str:
    """'functional_1/block11_activation_1/Relu6:0' -> 'block11'."""
    parts = str(layer).split("/")
    return parts[-2].replace("_activation_1", "") if len(parts) > 1 else str(layer)


def table(title: str, rows: dict[str, list[float]], columns: list[str]) -> str:
    head = f"### {title}\n\n| variant | " + " | ".join(c.split(":")[-1] for c in columns) + " |\n"
    head += "|---" + "|---:" * len(columns) + "|\n"
    return head + "".join(f"| {k} | " + " | ".join(f"{v:.1%}" for v in r) + " |\n" for k, r in rows.items())


def flagged(scores: dict[str, np.ndarray], rate: float, columns) -> list[float]:
    threshold = np.quantile(scores["val"], 1 - rate)
    return [float(np.mean(scores[s] > threshold)) for s in columns]


# --- 1. the rate ------------------------------------------------------------------------------


def rate_curve(model: Path, runs: Path) -> str:
    import onnx
    import pandas as pd

    meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    guard = json.loads(meta["cxr.guard"])
    scores = {"val": np.asarray(guard["reference_scores"])}
    columns = [d.name for d in sorted(runs.iterdir()) if (d / "predictions.csv").exists()]
    for name in columns:
        scores[name] = pd.read_csv(runs / name / "predictions.csv")["domain_score"].dropna().to_numpy()
    rows = {f"{rate:.2%} of validation": flagged(scores, rate, columns) for rate in RATES}
    title = f"The shipped guard at other false-flag rates (shipped: {guard['false_flag_rate']:.0%})"
    return table(title, rows, columns)


# --- 2. taps and combinations --------------------------------------------------------------------


def per_tap_log_distances(features: np.lib.npyio.NpzFile) -> tuple[list[str], dict[str, np.ndarray]]:
    """log(squared Mahalanobis distance / training median) per activation and set: (taps, sets)."""
    from sklearn.covariance import LedoitWolf

    layers = [short(n) for n in features["train|layer_names"]]
    sets = ["val", *SETS]
    out = {s: np.empty((len(layers), len(features[f"{s}|logit"]))) for s in sets}
    for tap in range(len(layers)):
        train = features[f"train|tap{tap}_stats"].astype(np.float64)
        fit = LedoitWolf().fit(train)
        root = np.linalg.cholesky(fit.precision_)
        median = np.median((((train - fit.location_) @ root) ** 2).sum(1))
        for s in sets:
            x = features[f"{s}|tap{tap}_stats"].astype(np.float64)
            out[s][tap] = np.log((((x - fit.location_) @ root) ** 2).sum(1) / median)
        print(f"  distances: {layers[tap]}", file=sys.stderr, flush=True)
    return layers, out


def combine(per: dict[str, np.ndarray], taps: list[int], how: str) -> dict[str, np.ndarray]:
    if how == "geometric mean":
        return {s: v[taps].mean(0) for s, v in per.items()}
    mu, sd = per["val"][taps].mean(1, keepdims=True), per["val"][taps].std(1, keepdims=True)
    z = {s: (v[taps] - mu) / sd for s, v in per.items()}
    return {s: (v.mean(0) if how == "mean z" else v.max(0)) for s, v in z.items()}


def tap_combinations(layers: list[str], per: dict[str, np.ndarray], rate: float) -> str:
    index = {name: i for i, name in enumerate(layers)}

    def blocks(lo: int, hi: int) -> list[int]:
        return [index[f"block{i}"] for i in range(lo, hi + 1) if f"block{i}" in index]

    spans = {"blocks 11-14 (shipped)": blocks(11, 14), "blocks 5-14": blocks(5, 14)}
    spans |= {"blocks 8-19": blocks(8, 19)}
    spans |= {"blocks 11-16": blocks(11, 16), "blocks 14-19": blocks(14, 19)}
    spans["every activation"] = list(range(len(layers)))
    rows = {
        f"{how}, {span}": flagged(combine(per, taps, how), rate, SETS)
        for how in ("geometric mean", "mean z", "max z")
        for span, taps in spans.items()
    }
    for name in SHIPPED:
        rows[f"{name} alone"] = flagged({s: v[index[name]] for s, v in per.items()}, rate, SETS)
    return table(f"Other taps and combinations, {rate:.0%} false flags on validation", rows, list(SETS))


# --- 3. joined with a domain classifier -----------------------------------------------------------


def union_threshold(a_val: np.ndarray, b_val: np.ndarray, a_threshold: float, total: float) -> float:
    """The lowest threshold on b that keeps (a > a_threshold) | (b >= it) at most ``total`` on validation."""
    chosen = np.inf
    for candidate in np.sort(b_val)[::-1]:
        if np.mean((a_val > a_threshold) | (b_val >= candidate)) > total:
            break
        chosen = candidate
    return chosen


def with_classifier(features, layers: list[str]) -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from domain_methods import GeometricMahalanobis, OutlierExposure

    keys = [f"tap{layers.index(b)}_stats" for b in SHIPPED]

    def record(name: str) -> dict[str, np.ndarray]:
        return {k: features[f"{name}|{k}"].astype(np.float64) for k in keys}

    outliers = [record(f"train_{k}") for k in ("rot90", "rot180", "inverted", "half", "rot270", "noise")]
    guard = GeometricMahalanobis(keys).fit(record("train"))
    classifier = OutlierExposure(keys, outliers).fit(record("train"))
    g = {s: guard.score(record(s)) for s in ("val", *SETS)}
    c = {s: classifier.score(record(s)) for s in ("val", *SETS)}
    rows = {}
    for total in (0.01, 0.015, 0.02):
        for share in (1.0, 0.75, 0.5, 0.25, 0.0):
            tg = np.quantile(g["val"], 1 - total * share) if share else np.inf
            tc = union_threshold(g["val"], c["val"], tg, total)
            rows[f"{total:.1%} in all, {share:.0%} of it the guard's"] = [
                float(np.mean((g[s] > tg) | (c[s] >= tc))) for s in SETS
            ]
    return table("The guard joined with an outlier-exposure classifier (same taps)", rows, list(SETS))


# --- 4. spatial pooling ---------------------------------------------------------------------------


def spatial(model: Path, manifest: Path, other_sites: Path, sets_dir: Path, per, layers, rate: float) -> str:
    import onnx
    import onnxruntime as ort
    import pandas as pd
    from onnx import TensorProto, helper
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    from cxr.data import load_manifest
    from cxr.export.graph_edit import _shapes
    from cxr.export.trust import strip_trust
    from cxr.imaging import decode_many

    proto = onnx.load(str(model))
    strip_trust(proto)
    shapes = _shapes(proto)
    taps = [n for n in shapes if n.endswith("Relu6:0") and short(n) in SHIPPED and len(shapes[n]) == 4]
    for name in taps:
        proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    frame = load_manifest(manifest)
    paths = {s: frame.loc[frame["split"] == s, "abspath"].tolist() for s in ("train", "val", "test")}
    sites = pd.read_csv(other_sites / "MANIFEST.csv", dtype=str, keep_default_na=False)
    for collection, rows in sites.groupby(sites["relpath"].str.split("/").str[0]):
        paths[f"other_site:{collection}"] = [str(other_sites / r) for r in rows["relpath"]]
    for kind in ("non_xray", "rot90", "rot180", "inverted", "half"):
        paths[kind] = sorted(str(p) for p in (sets_dir / kind).glob("*.png"))

    def pooled(x: np.ndarray, grid: int) -> np.ndarray:
        n, c, h, w = x.shape
        return x.reshape(n, c, grid, h // grid, grid, w // grid).mean(axis=(3, 5)).reshape(n, -1)

    feats: dict[tuple[str, int], dict[str, np.ndarray]] = {(t, g): {} for t in taps for g in (2, 4)}
    for s, files in paths.items():
        parts: dict[tuple[str, int], list] = {k: [] for k in feats}
        for i in range(0, len(files), 64):
            outs = session.run(taps, {session.get_inputs()[0].name: decode_many(files[i : i + 64], 128)})
            for t, x in zip(taps, outs):
                for g in (2, 4):
                    parts[(t, g)].append(pooled(x, g))
        for k in feats:
            feats[k][s] = np.concatenate(parts[k]).astype(np.float64)
        print(f"  spatial features: {s}", file=sys.stderr, flush=True)
    logd: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for (t, g), by_set in feats.items():
        reduce = PCA(256, random_state=0).fit(by_set["train"]) if g == 4 else None
        reduced = {s: reduce.transform(x) if reduce else x for s, x in by_set.items()}
        fit = LedoitWolf().fit(reduced["train"])
        root = np.linalg.cholesky(fit.precision_)
        d = {s: (((x - fit.location_) @ root) ** 2).sum(1) for s, x in reduced.items()}
        logd[(t, g)] = {s: np.log(v / np.median(d["train"])) for s, v in d.items()}
    index = {name: i for i, name in enumerate(layers)}
    whole = [{s: per[s][index[short(t)]] for s in ("val", *SETS)} for t in taps]
    rows = {}
    for g in (2, 4):
        grid = [logd[(t, g)] for t in taps]
        rows[f"{g}x{g} grid means, blocks 11-14"] = flagged(_mean(grid), rate, SETS)
        rows[f"{g}x{g} grid means + the shipped statistics"] = flagged(_mean(grid + whole), rate, SETS)
    rows["the shipped statistics (whole image mean and sd)"] = flagged(_mean(whole), rate, SETS)
    title = f"Pooled over a grid instead of the whole image, {rate:.0%} false flags on validation"
    return table(title, rows, list(SETS))


def _mean(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {s: np.mean([p[s] for p in parts], axis=0) for s in ("val", *SETS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True, help="make domain's runs of this model")
    parser.add_argument("--features", type=Path, help="domain_methods.py --sweep's cache")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=0.01, help="validation false flags for experiments 2-4")
    parser.add_argument("--spatial", action="store_true")
    parser.add_argument("--manifest", type=Path, default=Path("data/splits/manifest.csv"))
    parser.add_argument("--other-sites", type=Path, default=Path("../shared/data/other_sites"))
    parser.add_argument("--sets", type=Path, default=Path("out/domain/sets"))
    args = parser.parse_args()

    command = " ".join(["python", *sys.argv])
    parts = [f"# Guard variants for {args.model.name}\n\nMade by `{command}`.\n"]
    parts.append(rate_curve(args.model, args.runs))
    if args.features:
        features = np.load(args.features)
        layers, per = per_tap_log_distances(features)
        parts += [tap_combinations(layers, per, args.rate), with_classifier(features, layers)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts))  # what is measured so far, should the spatial part fail
    if args.features and args.spatial:
        parts.append(spatial(args.model, args.manifest, args.other_sites, args.sets, per, layers, args.rate))
    text = "\n".join(parts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
