"""The shipped models' domain guard, shift test and calibration, measured end to end with cxr-infer.

    python scripts/domain_results.py --models models/model1.onnx models/model2.onnx \
        --manifest data/splits/manifest.csv --source ../shared/data/chest_xray \
        --other-sites ../shared/data/other_sites --out results/domain

For each model it scores, with ``cxr-infer``: the test split (false flags), the other sites' chest
X-rays (where the guard's site classifier learnt from some of their patients, only the others
count: ``cxr.foreign.outlier_fit_part``), images that are not X-rays, and chest X-rays from the
test split turned 90 and 180 degrees, inverted, or halved (the sets of
``scripts/domain_methods.py``). It then draws 200 random sets of 50 images from the other sites and
from the test split and runs the set-level shift test (``cxr.shift.shift_test``, as every run does)
on each, and measures calibration on the test split (ECE before and after, from the model's own
calibration facts). It writes ``summary.json`` and prints the tables that README.md shows
(``--update-doc README.md`` writes them there, as ``make domain`` does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SETS = ("non_xray", "rot90", "rot180", "inverted", "half")
LABELS = {  # the tables' words for the made-up sets
    "non_xray": "not X-rays (photos, text, micrographs, noise)",
    "rot90": "chest X-rays turned 90°",
    "rot180": "chest X-rays turned 180°",
    "inverted": "chest X-rays inverted (black bones)",
    "half": "half a chest X-ray, stretched to full size",
}
DRAWS, DRAW_SIZE = 200, 50
SITES = "other sites (patients the guard did not learn from)"


def score(cxr_infer: str, source: Path, model: Path, out: Path, *extra: str) -> pd.DataFrame:
    if not (out / "predictions.csv").is_file():
        command = [
            cxr_infer,
            str(source),
            "--model",
            str(model),
            "--out",
            str(out),
            "--quiet",
            "--no-report",
            *extra,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode not in (0, 1):
            sys.exit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)


def flagged(frame: pd.DataFrame) -> np.ndarray:
    return frame["qc"].str.contains("outside training domain", regex=False).to_numpy()


def draws(scores: np.ndarray, guard, rng: np.random.Generator) -> list[float]:
    from cxr.shift import random_set_p_values

    return random_set_p_values(scores, guard, rng, DRAWS, DRAW_SIZE).tolist()


def calibration(frame: pd.DataFrame, contract) -> dict:
    from sklearn.metrics import roc_auc_score

    from cxr.calibration import expected_calibration_error
    from cxr.reports.summary import uncalibrated

    rows = frame[(frame["error"] == "") & (frame["true_label"] != "")]
    y = (rows["true_label"] == contract.positive_class).to_numpy(int)
    p = rows[f"p_{contract.positive_class}"].astype(float).to_numpy()
    c = contract.calibration
    raw = uncalibrated(p, c.a, c.b)
    return {
        "method": c.method,
        "a": c.a,
        "b": c.b,
        "test_ece_before": expected_calibration_error(y, raw),
        "test_ece_after": expected_calibration_error(y, p),
        "test_roc_auc_before": float(roc_auc_score(y, raw)),
        "test_roc_auc_after": float(roc_auc_score(y, p)),
        "n_test": int(len(y)),
    }


def held_out_sites(sites: pd.DataFrame, root: Path, guard) -> pd.DataFrame:
    """The other sites' rows whose patients the guard's site classifier did not learn from."""
    from cxr.foreign import not_learnt_from

    paths = [str(root / p) for p in sites["path"]]
    kept = set(not_learnt_from(paths, guard.facts))
    if not kept:
        sys.exit(f"the guard learnt from every patient of {root}; none is left to measure it on")
    return sites[[p in kept for p in paths]]


def measure(model: Path, args, cxr_infer: str) -> dict:
    from cxr.artifacts import ModelContract

    contract = ModelContract.from_file(model)
    guard = contract.guard
    out = args.work / "runs" / model.stem
    runs = {
        "test split": score(
            cxr_infer, args.source, model, out / "test", "--manifest", str(args.manifest), "--split", "test"
        ),
        SITES: held_out_sites(
            score(cxr_infer, args.other_sites, model, out / "other_sites"), args.other_sites, guard
        ),
    }
    for name in SETS:
        runs[name] = score(cxr_infer, args.work / "sets" / name, model, out / name)
    rates = {
        name: {"n": int(len(f)), "flagged": int(flagged(f).sum()), "rate": float(flagged(f).mean())}
        for name, f in runs.items()
    }
    sites = runs[SITES]
    for collection, rows in sites.groupby(sites["path"].str.split("/").str[0]):
        rates[f"other sites: {collection}"] = {
            "n": int(len(rows)),
            "flagged": int(flagged(rows).sum()),
            "rate": float(flagged(rows).mean()),
        }
    rng = np.random.default_rng(args.seed)
    p_other = draws(sites["domain_score"].astype(float).to_numpy(), guard, rng)
    p_test = draws(runs["test split"]["domain_score"].astype(float).to_numpy(), guard, rng)
    shift = {
        "draws": DRAWS,
        "size": DRAW_SIZE,
        "other_sites_share_p_below_0.01": float(np.mean(np.array(p_other) < 0.01)),
        "other_sites_median_p": float(np.median(p_other)),
        "test_split_share_p_above_0.05": float(np.mean(np.array(p_test) > 0.05)),
        "test_split_median_p": float(np.median(p_test)),
    }
    return {
        "model": model.name,
        "guard": {
            "method": guard.method,
            "threshold": guard.threshold,
            "false_flag_rate_on_validation": guard.false_flag_rate,
            "taps": guard.facts.get("taps"),
            "site_classifier": guard.facts.get("site_classifier"),
        },
        "flag_rates": rates,
        "shift": shift,
        "calibration": calibration(runs["test split"], contract),
    }


def tables(summary: dict) -> str:
    models = list(summary)
    kinds = list(next(iter(summary.values()))["flag_rates"])
    lines = [
        "| input | images | " + " | ".join(f"{m}: flagged" for m in models) + " |",
        "|---|---:|" + "---:|" * len(models),
    ]
    for kind in kinds:
        n = summary[models[0]]["flag_rates"][kind]["n"]
        lines.append(
            f"| {LABELS.get(kind, kind)} | {n} | "
            + " | ".join(f"{summary[m]['flag_rates'][kind]['rate']:.1%}" for m in models)
            + " |"
        )
    lines += [
        "",
        "| model | shift found in 50 other-site images (p < 0.01) | no shift in 50 test images (p > 0.05) "
        "| calibration | test ECE before → after | test ROC AUC before → after |",
        "|---|---|---|---|---|---|",
    ]
    for m in models:
        s, c = summary[m]["shift"], summary[m]["calibration"]
        lines.append(
            f"| {m} | {s['other_sites_share_p_below_0.01']:.0%} of {s['draws']} draws | "
            f"{s['test_split_share_p_above_0.05']:.0%} of {s['draws']} draws | {c['method']} | "
            f"{c['test_ece_before']:.3f} → {c['test_ece_after']:.3f} | "
            f"{c['test_roc_auc_before']:.4f} → {c['test_roc_auc_after']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--other-sites", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("out/domain"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--update-doc",
        "--update-readme",
        dest="update_doc",
        type=Path,
        default=None,
        help="replace the file's block between <!-- domain:start --> and <!-- domain:end --> (README.md)",
    )
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from domain_methods import build_sets

    build_sets(args.manifest, args.other_sites, args.work / "sets", 100, args.seed)
    cxr_infer = str(Path(sys.executable).with_name("cxr-infer"))
    summary = {model.stem: measure(model, args, cxr_infer) for model in args.models}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (args.out / "summary.md").write_text(tables(summary) + "\n")
    print(tables(summary))
    if args.update_doc:
        update_doc(args.update_doc, tables(summary))


def update_doc(doc: Path, table: str) -> None:
    """Replace the ``<!-- domain:start -->`` block of ``doc`` (README.md) with ``table``."""
    text = doc.read_text(encoding="utf-8")
    start, end = "<!-- domain:start -->", "<!-- domain:end -->"
    if start not in text or end not in text:
        sys.exit(f"{doc} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    doc.write_text(head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1], encoding="utf-8")


if __name__ == "__main__":
    main()
