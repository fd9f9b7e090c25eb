"""Does a site classifier beside the domain guard's Gaussian flag the chest X-rays of other sites?

    python scripts/guard_site.py --model models/model1.onnx --out results/domain/model1_site.md

The guard alone (a Gaussian per tap, export/trust.py) flags about 85-93% of the other sites' chests
when its threshold is set for 1% false flags on validation. Here a logistic regression on the same
pooled statistics, training images against outliers, is folded in beside it with the code that
``cxr export --guard-outliers`` runs (``cxr.export.trust.fit_guard``), and measured side by side:

- the Gaussian alone;
- with a classifier on made-up outliers only (training images turned, inverted, halved);
- with a classifier on other sites' chests only;
- with both (what ``cxr export --guard-outliers`` fits).

Every threshold is set for 1% false flags on the validation split. The other sites are measured on
the patients kept out of fitting (``cxr.foreign.outlier_fit_part``, half of them), and then collection
by collection: fitted on one collection, measured on the others it never saw. The classifier's
strength C is swept. It prints a Markdown table (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

KINDS = ("non_xray", "rot90", "rot180", "inverted", "half")
COLLECTIONS = ("ieee8023_covid_chestxray", "actualmed_covid", "figure1_covid")


def image_sets(manifest: Path, other_sites: Path, sets_dir: Path) -> dict[str, list[str]]:
    """Paths per set: the splits, the other sites (split into fit and held-out patients, and by
    collection), and the made-up sets of ``make domain`` (out/domain/sets, from the test split)."""
    from cxr.data import load_manifest
    from cxr.foreign import outlier_fit_part
    from cxr.imaging import list_images

    frame = load_manifest(manifest)
    sets = {s: frame.loc[frame["split"] == s, "abspath"].tolist() for s in ("train", "val", "test")}
    sites = [str(p) for p in list_images(other_sites)]
    fit = outlier_fit_part(sites, 0.5)
    sets["sites_fit"] = [p for p, f in zip(sites, fit) if f]
    sets["sites_held_out"] = [p for p, f in zip(sites, fit) if not f]
    for collection in COLLECTIONS:
        sets[f"site:{collection}"] = [p for p in sites if f"/{collection}/" in p]
    for kind in KINDS:
        sets[kind] = sorted(str(p) for p in (sets_dir / kind).glob("*.png"))
        if not sets[kind]:
            raise SystemExit(f"{sets_dir / kind} is empty: run `make domain` first")
    return sets


def features(model: Path, sets: dict[str, list[str]], cache: Path) -> dict[str, list[np.ndarray]]:
    """Pooled statistics at the guard's taps per set (and for the made-up training outliers), cached."""
    import onnx

    from cxr.export.trust import feature_model, guard_taps, made_up_outliers, run_features, strip_trust
    from cxr.imaging import decode_many

    if cache.is_file():
        stored = np.load(cache)
        names = sorted({k.split("|")[0] for k in stored.files})
        return {n: [stored[f"{n}|{i}"] for i in range(4)] for n in names}
    proto = onnx.load(str(model))
    strip_trust(proto)
    taps = guard_taps(proto)
    probe = feature_model(proto, taps, with_logit=False)
    size = proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    out = {}
    for name, paths in sets.items():
        images = decode_many(paths, size)
        out[name] = run_features(probe, images)[0]
        if name == "train":
            out["made_up"] = run_features(probe, made_up_outliers(images))[0]
        print(f"  features: {name} ({len(paths)})", file=sys.stderr, flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"{n}|{i}": f for n, fs in out.items() for i, f in enumerate(fs)})
    return out


def joined(*parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.concatenate(tap) for tap in zip(*parts)]


def measure(fit, feats: dict[str, list[np.ndarray]], columns: list[str]) -> list[float]:
    return [float(np.mean(fit.scores(feats[c]) > fit.threshold)) for c in columns]


def table(rows: dict[str, list[float]], columns: list[str]) -> str:
    head = "| guard | " + " | ".join(columns) + " |\n|---" + "|---:" * len(columns) + "|\n"
    return head + "".join(f"| {k} | " + " | ".join(f"{v:.1%}" for v in r) + " |\n" for k, r in rows.items())


def experiments(feats: dict[str, list[np.ndarray]], rate: float) -> str:
    from cxr.export import trust
    from cxr.export.trust import Outliers

    taps = [f"tap{i}" for i in range(4)]
    train, val = feats["train"], feats["val"]
    columns = ["test", "sites_held_out", *[f"site:{c}" for c in COLLECTIONS], *KINDS]
    outliers = {
        "the Gaussian alone": None,
        "+ classifier, made-up outliers only": Outliers(feats["made_up"]),
        "+ classifier, other sites only": Outliers(feats["sites_fit"]),
        "+ classifier, other sites and made-up outliers (shipped)": Outliers(
            feats["sites_fit"], feats["made_up"]
        ),
    }
    parts = [f"### Fitted on half of the other sites' patients, {rate:.0%} false flags on validation\n"]
    parts.append(
        "The collection columns hold every image of the collection, fitted half included; "
        "`sites_held_out` is the other half only.\n"
    )
    rows = {}
    for name, out in outliers.items():
        fit = trust.fit_guard(taps, train, val, rate, out)
        rows[name] = measure(fit, feats, columns)
        print(f"  {name}", file=sys.stderr, flush=True)
    for c_value in (0.001, 0.1):
        trust.SITE_C, saved = c_value, trust.SITE_C
        fit = trust.fit_guard(taps, train, val, rate, Outliers(feats["sites_fit"], feats["made_up"]))
        trust.SITE_C = saved
        rows[f"+ classifier, both, C = {c_value:g} (shipped {saved:g})"] = measure(fit, feats, columns)
    parts.append(table(rows, columns))

    parts.append(f"\n### Fitted on one collection, measured on the others, {rate:.0%} false flags\n")
    cross = {}
    for fitted in (("ieee8023_covid_chestxray",), ("actualmed_covid", "figure1_covid")):
        seen = joined(*[feats[f"site:{c}"] for c in fitted])
        unseen = [c for c in COLLECTIONS if c not in fitted]
        probe = {**feats, "unseen collections": joined(*[feats[f"site:{c}"] for c in unseen])}
        cols = ["test", "unseen collections", *KINDS]
        for label, made_up in (("other sites", None), ("other sites and made-up", feats["made_up"])):
            fit = trust.fit_guard(taps, train, val, rate, Outliers(seen, made_up))
            cross[f"fitted on {' + '.join(fitted)} ({label})"] = measure(fit, probe, cols)
    parts.append(table(cross, ["test", "unseen collections", *KINDS]))
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, default=Path("data/splits/manifest.csv"))
    parser.add_argument("--other-sites", type=Path, default=Path("../shared/data/other_sites"))
    parser.add_argument("--sets", type=Path, default=Path("out/domain/sets"))
    parser.add_argument("--cache", type=Path, default=None, help="[default: out/domain/site_<model>.npz]")
    parser.add_argument("--rate", type=float, default=0.01)
    args = parser.parse_args()
    cache = args.cache or Path("out/domain") / f"site_{args.model.stem}.npz"
    feats = features(args.model, image_sets(args.manifest, args.other_sites, args.sets), cache)
    command = " ".join(["python", *sys.argv])
    text = f"# A site classifier beside the guard: {args.model.name}\n\nMade by `{command}`.\n\n"
    text += experiments(feats, args.rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
