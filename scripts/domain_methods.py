"""Out-of-domain detectors measured side by side on one model's features (the guard's experiment).

    python scripts/domain_methods.py --model models/model1.onnx --manifest data/splits/manifest.csv \
        --other-sites ../shared/data/other_sites --out results/domain/model1_methods.json

Every detector is fitted on the training split only, and its threshold is set on the validation
split for 1% false flags; it is then measured on the test split (false flags), on images that are
not X-rays, on chest X-rays turned, inverted or halved (from the test split), and on the chest
X-rays of other sites (mostly adults), collection by collection. It writes the figures as JSON
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def build_sets(
    manifest: Path, other_sites: Path, out: Path, n_variants: int, seed: int
) -> dict[str, list[str]]:
    """Image files per set: the three splits, other sites by collection, and the made-up sets."""
    import pandas as pd
    from PIL import Image

    from cxr.data import load_manifest
    from cxr.foreign import CHEST_VARIANTS, chest_variant, non_xray_images
    from cxr.imaging import decode_image

    frame = load_manifest(manifest)
    sets = {
        split: frame.loc[frame["split"] == split, "abspath"].tolist() for split in ("train", "val", "test")
    }
    sites = pd.read_csv(other_sites / "MANIFEST.csv", dtype=str, keep_default_na=False)
    for collection, rows in sites.groupby(sites["relpath"].str.split("/").str[0]):
        sets[f"other_site:{collection}"] = [str(other_sites / rel) for rel in rows["relpath"]]
    folder = out / "non_xray"
    folder.mkdir(parents=True, exist_ok=True)
    sets["non_xray"] = []
    for name, image in non_xray_images(seed):
        path = folder / f"{name}.png"
        Image.fromarray(image).save(path)
        sets["non_xray"].append(str(path))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(sets["test"], size=min(n_variants, len(sets["test"])), replace=False)
    for kind in CHEST_VARIANTS:
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        sets[kind] = []
        for index, source in enumerate(chosen):
            path = folder / f"{index:04d}.png"
            Image.fromarray(chest_variant(decode_image(source, 224), kind, index)[:, :, 0]).save(path)
            sets[kind].append(str(path))
    return sets


def extract(model: Path, sets: dict[str, list[str]]) -> dict[str, dict[str, np.ndarray]]:
    """Per set: pooled statistics per tap, the logit, and the decoded 32x32 grey pixels."""
    import onnx
    import onnxruntime as ort

    from cxr.export.graph_edit import (
        ACTIVATION,
        _shapes,
        activation_taps,
        with_feature_outputs,
        with_logit_output,
    )
    from cxr.export.trust import strip_trust
    from cxr.imaging import decode_many

    proto = onnx.load(str(model))
    strip_trust(proto)
    shapes = _shapes(proto)
    every = [
        (name, int(shapes[name][1]))
        for node in proto.graph.node
        for name in node.output
        if ACTIVATION.search(name) and len(shapes.get(name, [])) == 4
    ]
    stage_ends = {name for name, _ in activation_taps(proto)}
    # every activation: the stage ends are the tap0.. of the stage-end detectors, the others join as
    # depth taps
    taps = [tap for tap in every if tap[0] in stage_ends] + [tap for tap in every if tap[0] not in stage_ends]
    probe = with_logit_output(with_feature_outputs(proto, taps))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.name.startswith("tap")] + ["logit"]
    size = session.get_inputs()[0].shape[1]
    features = {}
    for name, paths in sets.items():
        images = decode_many(paths, size)
        outs = [session.run(names, {"pixels": images[i : i + 64]}) for i in range(0, len(images), 64)]
        record = {n: np.concatenate([o[k] for o in outs]) for k, n in enumerate(names)}
        grey = images[:, :, :, 0].astype(np.float32)
        record["pixels32"] = (
            grey.reshape(len(grey), 32, size // 32, 32, size // 32).mean(axis=(2, 4)).reshape(len(grey), -1)
            / 255.0
        )
        record["colour"] = np.abs(images.astype(np.int16) - images[:, :, :, :1]).mean(axis=(1, 2, 3))
        record["layer_names"] = np.array([name for name, _ in taps])
        features[name] = record
        print(f"  features: {name} ({len(paths)} images)", file=sys.stderr, flush=True)
    return features


# --- detectors: fit(train) -> score(record) ------------------------------------------------------


def tap_names(record: dict, n_stage_ends: int = 8) -> list[str]:
    """The stage-end taps (the first ``n_stage_ends`` extracted), in depth order."""
    keys = sorted((k for k in record if k.startswith("tap")), key=lambda k: int(k[3:].split("_")[0]))
    return keys[:n_stage_ends]


def depth_taps(record: dict) -> list[tuple[str, str]]:
    """(key, layer name) of every extracted activation, in graph order."""
    keys = sorted((k for k in record if k.startswith("tap")), key=lambda k: int(k[3:].split("_")[0]))
    names = [str(n) for n in record["layer_names"]]
    order = sorted(range(len(keys)), key=lambda i: _block_index(names[i]))
    return [(keys[i], names[i].split("/")[-2]) for i in order]


def _block_index(name: str) -> int:
    import re

    if "stem_activation" in name:
        return -1
    match = re.search(r"block(\d+)_activation", name)
    return int(match.group(1)) if match else 10_000


class Mahalanobis:
    """Lee et al. 2018: Ledoit-Wolf Gaussian per tap, distances standardised on training and summed."""

    def __init__(self, taps: list[str], means_only: bool = False):
        self.taps, self.means_only = taps, means_only

    def _x(self, record, tap):
        x = record[tap]
        return x[:, : x.shape[1] // 2] if self.means_only else x

    def fit(self, train):
        from sklearn.covariance import LedoitWolf

        self.models = {t: LedoitWolf().fit(self._x(train, t)) for t in self.taps}
        raw = {t: self.models[t].mahalanobis(self._x(train, t)) for t in self.taps}
        self.norm = {
            t: (np.median(raw[t]), np.percentile(raw[t], 90) - np.median(raw[t]) + 1e-9) for t in self.taps
        }
        return self

    def score(self, record):
        return sum(
            (self.models[t].mahalanobis(self._x(record, t)) - self.norm[t][0]) / self.norm[t][1]
            for t in self.taps
        )


class GeometricMahalanobis(Mahalanobis):
    """The shipped guard's rule: Ledoit-Wolf per tap, the geometric mean of the squared distances
    over the taps, each divided by the training images' median."""

    def fit(self, train):
        super().fit(train)
        self.medians = {t: float(np.median(self.models[t].mahalanobis(self._x(train, t)))) for t in self.taps}
        return self

    def score(self, record):
        return np.exp(
            np.mean(
                [np.log(self.models[t].mahalanobis(self._x(record, t)) / self.medians[t]) for t in self.taps],
                axis=0,
            )
        )


class KNN:
    """Sun et al. 2022: distance to the k-th nearest training feature after L2 normalisation."""

    def __init__(self, taps: list[str], k: int = 5):
        self.taps, self.k = taps, k

    def _x(self, record):
        parts = [(record[t] - self.mu[t]) / self.sd[t] for t in self.taps]
        x = np.concatenate([p / np.sqrt(p.shape[1]) for p in parts], axis=1)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def fit(self, train):
        self.mu = {t: train[t].mean(0) for t in self.taps}
        self.sd = {t: train[t].std(0) + 1e-6 for t in self.taps}
        self.bank = self._x(train)
        return self

    def score(self, record):
        sims = self._x(record) @ self.bank.T
        return -np.sort(sims, axis=1)[:, -self.k]


class Reconstruction:
    """An autoencoder's reconstruction error on 32x32 grey pixels: PCA (linear) or a small MLP."""

    def __init__(self, kind: str = "pca", width: int = 32):
        self.kind, self.width = kind, width

    def fit(self, train):
        from sklearn.decomposition import PCA
        from sklearn.neural_network import MLPRegressor

        x = train["pixels32"]
        if self.kind == "pca":
            self.model = PCA(self.width, random_state=0).fit(x)
        else:
            self.model = MLPRegressor(
                hidden_layer_sizes=(256, self.width, 256), max_iter=200, random_state=0
            ).fit(x, x)
        return self

    def score(self, record):
        x = record["pixels32"]
        recon = (
            self.model.inverse_transform(self.model.transform(x))
            if self.kind == "pca"
            else self.model.predict(x)
        )
        return ((x - recon) ** 2).mean(axis=1)


class TransformHead:
    """Hendrycks et al. 2019: a head trained on the features to tell upright, turned and inverted
    copies of training images; the score is -log P(upright)."""

    def __init__(self, taps, train_images_features):
        self.taps, self.augmented = taps, train_images_features

    def fit(self, train):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.concatenate([np.concatenate([r[t] for t in self.taps], 1) for r in self.augmented])
        y = np.concatenate([np.full(len(r[self.taps[0]]), i) for i, r in enumerate(self.augmented)])
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1)).fit(x, y)
        return self

    def score(self, record):
        x = np.concatenate([record[t] for t in self.taps], 1)
        return -np.log(self.model.predict_proba(x)[:, 0] + 1e-12)


class OutlierExposure:
    """A domain classifier: training images against made-up outliers (turned, inverted, halved
    training images, noise, gradients); never the evaluation sets."""

    def __init__(self, taps, outliers):
        self.taps, self.outliers = taps, outliers

    def fit(self, train):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x_in = np.concatenate([train[t] for t in self.taps], 1)
        x_out = np.concatenate([np.concatenate([r[t] for t in self.taps], 1) for r in self.outliers])
        x = np.concatenate([x_in, x_out])
        y = np.r_[np.zeros(len(x_in)), np.ones(len(x_out))]
        self.model = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, class_weight="balanced")
        ).fit(x, y)
        return self

    def score(self, record):
        return self.model.decision_function(np.concatenate([record[t] for t in self.taps], 1))


def evaluate(detector, features: dict, false_flags: float) -> dict:
    from sklearn.metrics import roc_auc_score

    started = time.perf_counter()
    detector.fit(features["train"])
    fit_s = time.perf_counter() - started
    val = detector.score(features["val"])
    threshold = float(np.quantile(val, 1 - false_flags))
    result = {"threshold": threshold, "fit_seconds": round(fit_s, 2)}
    test = detector.score(features["test"])
    for name, record in features.items():
        if name in ("train", "val"):
            continue
        scores = detector.score(record)
        result[name] = float(np.mean(scores > threshold))
        if name != "test":
            y = np.r_[np.zeros(len(test)), np.ones(len(scores))]
            result[f"auroc:{name}"] = float(roc_auc_score(y, np.r_[test, scores]))
    return result


def shipped_guard_taps(model: Path, record: dict) -> list[str]:
    """The feature keys of the taps that ``cxr export`` gives the guard (export.trust.guard_taps)."""
    import onnx

    from cxr.export.trust import guard_taps, strip_trust

    proto = onnx.load(str(model))
    strip_trust(proto)
    wanted = {name for name, _ in guard_taps(proto)}
    return [f"tap{i}_stats" for i, name in enumerate(record["layer_names"]) if str(name) in wanted]


def depth_sweep(depths: list[tuple[str, str]], features: dict, false_flags: float) -> dict:
    """The Mahalanobis distance of every activation alone: where in the network the other sites'
    chests stand out. The guard's taps were chosen on ieee8023 (the largest collection) with this."""
    return {
        f"depth sweep: {name}": evaluate(Mahalanobis([key]), features, false_flags) for key, name in depths
    }


def made_up_outliers(model: Path, manifest: Path, out: Path, n: int, seed: int) -> dict[str, list[str]]:
    """Outliers for the detectors that learn from them, from the *training* split."""
    from PIL import Image

    from cxr.data import load_manifest
    from cxr.foreign import chest_variant
    from cxr.imaging import decode_image

    frame = load_manifest(manifest)
    rng = np.random.default_rng(seed + 1)
    chosen = rng.choice(frame.loc[frame["split"] == "train", "abspath"].tolist(), size=n, replace=False)
    sets = {}
    for kind in ("rot90", "rot180", "inverted", "half", "rot270", "noise"):
        folder = out / f"train_{kind}"
        folder.mkdir(parents=True, exist_ok=True)
        sets[f"train_{kind}"] = []
        for index, source in enumerate(chosen):
            image = decode_image(source, 224)[:, :, 0]
            if kind == "rot270":
                image = np.rot90(image, 1 if index % 2 == 0 else -1)
            elif kind == "noise":
                image = np.clip(image + rng.normal(0, 40, image.shape), 0, 255).astype(np.uint8)
            else:
                image = chest_variant(image, kind, index)
            path = folder / f"{index:04d}.png"
            Image.fromarray(np.ascontiguousarray(image)).save(path)
            sets[f"train_{kind}"].append(str(path))
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--other-sites", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--work", type=Path, default=Path("out/domain"))
    parser.add_argument("--false-flags", type=float, default=0.01)
    parser.add_argument("--n-variants", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also the Mahalanobis distance at each depth alone (how the guard's taps were chosen)",
    )
    args = parser.parse_args()

    sets = build_sets(args.manifest, args.other_sites, args.work / "sets", args.n_variants, args.seed)
    sets.update(made_up_outliers(args.model, args.manifest, args.work / "sets", 300, args.seed))
    features = extract(args.model, sets)
    cache = args.work / f"features_{args.model.stem}.npz"
    np.savez(cache, **{f"{s}|{k}": v for s, r in features.items() for k, v in r.items()})
    taps = tap_names(features["train"])
    depths = depth_taps(features["train"])
    shipped = shipped_guard_taps(args.model, features["train"])
    train_aug = [features["train"]] + [features[f"train_{k}"] for k in ("rot90", "rot180", "inverted")]
    outliers = [features[f"train_{k}"] for k in ("rot90", "rot180", "inverted", "half", "rot270", "noise")]
    evaluated = {k: v for k, v in features.items() if not k.startswith("train_")}
    detectors = {
        "mahalanobis, last layer (mean)": Mahalanobis(taps[-1:], means_only=True),
        "mahalanobis, all depths (mean+sd)": Mahalanobis(taps),
        "mahalanobis, first 4 depths (mean+sd)": Mahalanobis(taps[:4]),
        "knn k=5, last layer": KNN(taps[-1:]),
        "knn k=5, all depths": KNN(taps),
        "knn k=1, all depths": KNN(taps, k=1),
        "autoencoder (PCA 32), pixels": Reconstruction("pca"),
        "autoencoder (MLP 256-32-256), pixels": Reconstruction("mlp"),
        "rotation/inversion head": TransformHead(taps, train_aug),
        "domain classifier, outlier exposure": OutlierExposure(taps, outliers),
        "mahalanobis, last four 8x8 activations, geometric mean (the shipped guard)": GeometricMahalanobis(
            shipped
        ),
    }
    results = {}
    for name, detector in detectors.items():
        results[name] = evaluate(detector, evaluated, args.false_flags)
        print(
            name,
            json.dumps({k: round(v, 3) for k, v in results[name].items() if not k.startswith("auroc")}),
            file=sys.stderr,
            flush=True,
        )
    if args.sweep:
        results.update(depth_sweep(depths, evaluated, args.false_flags))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sizes = {k: len(v) for k, v in sets.items()}
    args.out.write_text(
        json.dumps(
            {
                "model": str(args.model),
                "false_flags_on_val": args.false_flags,
                "set_sizes": sizes,
                "methods": results,
            },
            indent=1,
        )
    )
    print_table(results, sizes)


def print_table(results: dict, sizes: dict) -> None:
    columns = [
        k
        for k in next(iter(results.values()))
        if k not in ("threshold", "fit_seconds") and not k.startswith("auroc")
    ]
    print("| method | " + " | ".join(f"{c} ({sizes.get(c, '')})" for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.1%}" for c in columns) + " |")


if __name__ == "__main__":
    main()
