"""What a report costs: `cxr report` on the test split (1,000 patient-bootstrap resamples) and the
8-image demo (`cxr-infer examples`, as `make demo` runs it), each with the statistics as cxr
computes them now (all resamples at once in numpy) and with the earlier one-resample-at-a-time
bootstrap through scikit-learn, side by side in one run.

    python scripts/bench_reports.py [--preds results/model1/predictions.csv] [--rounds 1]

(`make bench` runs it as its ``reports`` section.) Each measurement runs in a fresh process; the
earlier bootstrap is swapped in by ``--loop``, which replaces ``bootstrap_ci`` with the loop below.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 5.0


def loop_bootstrap_ci(y, p, threshold, groups=None, n_boot=1000, seed=0, alpha=0.05):
    """The earlier bootstrap: draw each resample's patients, then scikit-learn's metrics on it."""
    from cxr.artifacts import METRIC_NAMES
    from cxr.reports.metrics import binary_metrics

    y, p = np.asarray(y).astype(int), np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    inverse = (
        np.unique(np.asarray(groups), return_inverse=True)[1] if groups is not None else np.arange(len(y))
    )
    members = [np.flatnonzero(inverse == g) for g in range(int(inverse.max()) + 1)]
    draws = np.random.default_rng(seed).integers(0, len(members), (n_boot, len(members)))
    samples: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    for picked in draws:
        idx = np.concatenate([members[g] for g in picked])
        if len(np.unique(y[idx])) == 2:
            for name, value in binary_metrics(y[idx], p[idx], threshold).items():
                samples[name].append(value)
    return {
        name: [float(np.nanpercentile(v, 100 * alpha / 2)), float(np.nanpercentile(v, 100 * (1 - alpha / 2)))]
        if v
        else [float("nan"), float("nan")]
        for name, v in samples.items()
    }


def earlier_confidence_intervals(y, p, threshold, groups=None, n_boot=1000, seed=0, alpha=0.05):
    """The earlier rule: the loop bootstrap for every figure, whatever the number of images."""
    ci = loop_bootstrap_ci(y, p, threshold, groups, n_boot, seed, alpha)
    return ci, {name: "patient bootstrap" for name in ci}


def _run_measured(argv: list[str], loop: bool) -> None:
    """Run a cxr command in this process, with the earlier bootstrap when ``loop``."""
    import cxr.reports.metrics as metrics
    import cxr.reports.summary as summary

    if loop:
        metrics.bootstrap_ci = loop_bootstrap_ci
        summary.confidence_intervals = earlier_confidence_intervals
    from cxr.app.cli import main

    sys.argv = argv
    try:
        main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def _timed(kind: str, loop: bool, preds: Path, out: Path) -> float:
    argv = {
        "report": ["cxr", "report", "--preds", str(preds), "--out", str(out), "--n-boot", "1000"],
        "demo": ["cxr", "infer", "examples", "--model", "models/model1.onnx", "--out", str(out), "-q"],
    }[kind]
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); import bench_reports as b; "
        f"b._run_measured({argv!r}, {loop!r})"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def bench_reports(preds: Path, rounds: int = 1) -> dict[str, dict[str, float]]:
    """Wall seconds (median of ``rounds``, each in a fresh process) of both tasks, both ways."""
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            for kind in ("demo", "report"):
                for loop in (False, True):
                    seconds = _timed(kind, loop, preds, Path(tmp) / f"{kind}{int(loop)}_{i}")
                    results.setdefault(kind, {}).setdefault("earlier" if loop else "now", []).append(seconds)
    medians = {kind: {way: float(np.median(v)) for way, v in ways.items()} for kind, ways in results.items()}
    print(
        f"\nReports ({preds}, 1,000 patient-bootstrap resamples; wall seconds, each in a fresh process, "
        f"median of {rounds}):"
    )
    labels = {"demo": "make demo (cxr-infer examples, 8 images)", "report": "cxr report on the test split"}
    for kind, ways in medians.items():
        ratio = ways["earlier"] / ways["now"]
        verdict = "meets" if ways["now"] < TARGET_S else "misses"
        print(
            f"  {labels[kind]:42s} earlier bootstrap {ways['earlier']:7.2f} s  now {ways['now']:6.2f} s  "
            f"speed-up x{ratio:.1f}  ({verdict} the {TARGET_S:.0f} s target)"
        )
    return medians


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preds", type=Path, default=ROOT / "results/model1/predictions.csv")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the medians here")
    opts = parser.parse_args(argv)
    medians = bench_reports(opts.preds, opts.rounds)
    if opts.json:
        opts.json.write_text(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
