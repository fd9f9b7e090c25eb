"""Robustness of models side by side, from their robustness.json files (`cxr robustness`): clean ROC AUC,
NORMAL called PNEUMONIA clean and under noise sd 2 (the evaluation's bar: a rise of at most 2 points),
label flips under noise sd 2, and the perturbation that flips most.

    python scripts/robustness_compare.py NAME=robustness.json [NAME=robustness.json ...]

(`make int8-robustness` runs it on the fp32 and INT8 shipped models.)
"""

from __future__ import annotations

import sys

from cxr.artifacts import RobustnessReport

NOISE_BAR_POINTS = 2.0


def row(name: str, path: str) -> str:
    result = RobustnessReport.read(path)
    rows, negative = result["perturbations"], result["classes"][0]
    clean, noisy = (rows[k]["classes"][negative]["called_other"] for k in ("clean", "noise2"))
    worst = max((k for k in rows if k != "clean"), key=lambda k: rows[k]["max_flip_rate"])
    rise = 100 * (noisy - clean)
    verdict = "within" if rise <= NOISE_BAR_POINTS else "OVER"
    return (
        f"| {name} | {result['n_images']} | {result['threshold']:.3f} | {rows['clean']['roc_auc']:.4f} | "
        f"{clean:.1%} → {noisy:.1%} ({rise:+.1f} points, {verdict} the bar) | "
        f"{rows['noise2']['max_flip_rate']:.1%} "
        f"| {rows[worst]['max_flip_rate']:.1%} ({worst}) |"
    )


def main(argv: list[str]) -> None:
    print(
        "| model | images | threshold | clean ROC AUC | NORMAL called PNEUMONIA: clean → noise sd 2 | "
        "flips under noise sd 2 | most flips |"
    )
    print("|---|---:|---:|---:|---|---:|---|")
    for item in argv:
        name, _, path = item.partition("=")
        print(row(name, path))


if __name__ == "__main__":
    main(sys.argv[1:])
