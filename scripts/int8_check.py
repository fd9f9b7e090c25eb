"""The INT8 models against their fp32 sources on data the gate never saw.

    python scripts/int8_check.py --models models/model1.onnx models/model2.onnx \
        --manifest data/splits/manifest.csv --other-sites ../shared/data/other_sites \
        --out results/int8_test.md

For each fp32 model and its INT8 copy (``<model>.int8.onnx``, made by ``cxr quantize``), scored with
``OnnxClassifier`` (the class cxr-infer scores with) on images decoded by ``cxr.imaging``:

- the test split: max and mean |dp|, labels flipped at the model's threshold, ROC AUC of each, and
  the targets (ROC AUC down at most 0.002, at most 0.5% of labels flipped); calibration (ECE);
- the domain guard: the test split's false flags and the other sites' flag rate, each model at its
  own threshold, and the set-level shift test on 200 random sets of 50 images from each (share of
  other-site sets called shifted at p < 0.01, of test sets not called shifted at p > 0.05).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DRAWS, DRAW_SIZE, SEED = 200, 50, 0


def outputs(model_path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P(positive), domain score) through the inference class, CPU."""
    from cxr.infer.model import OnnxClassifier

    model = OnnxClassifier(model_path, device="cpu")
    parts = [model.predict_with_domain(images[i : i + 64]) for i in range(0, len(images), 64)]
    return np.concatenate([p for p, _ in parts]), np.concatenate([d for _, d in parts])


def shift_shares(scores: np.ndarray, guard, rng: np.random.Generator) -> np.ndarray:
    from cxr.shift import random_set_p_values

    return random_set_p_values(scores, guard, rng, DRAWS, DRAW_SIZE)


def measure_pair(fp32: Path, int8: Path, test, sites: np.ndarray) -> dict:
    from cxr.artifacts import ModelContract
    from cxr.calibration import expected_calibration_error
    from cxr.export.quantize import compare

    figures = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        contract = ModelContract.from_file(path)
        p, d = outputs(path, test.images)
        _, d_sites = outputs(path, sites)
        guard = contract.guard
        rng = np.random.default_rng(SEED)
        figures[name] = {
            "p": p,
            "threshold": contract.threshold,
            "ece": expected_calibration_error(test.labels, p),
            "test_flagged": float(np.mean(d > guard.threshold)),
            "sites_flagged": float(np.mean(d_sites > guard.threshold)),
            "guard_threshold": guard.threshold,
            "sites_shifted": float(np.mean(shift_shares(d_sites, guard, rng) < 0.01)),
            "test_not_shifted": float(np.mean(shift_shares(d, guard, rng) > 0.05)),
            "mb": path.stat().st_size / 1e6,
        }
    gate = compare(
        figures["fp32"]["p"], figures["int8"]["p"], test.labels, figures["fp32"]["threshold"], "test"
    )
    return {"gate": gate, **figures}


def table(results: dict[str, dict], command: str, n_sites: str) -> str:
    lines = [
        "# INT8 against fp32 on the test split and the other sites",
        "",
        f"Made by `{command}`.",
        "",
        (
            "| model | test images | max abs dp | mean abs dp | labels flipped | ROC AUC fp32 | ROC AUC "
            "int8 | "
            "change | target (<= 0.002 down, <= 0.5% flipped) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        g = r["gate"]
        lines.append(
            f"| {name} | {g.n} | {g.max_abs_dp:.4f} | {g.mean_abs_dp:.4f} | {g.flips} ({g.flip_share:.2%}) | "
            f"{g.roc_auc_fp32:.4f} | {g.roc_auc_int8:.4f} | {-g.auc_drop:+.4f} | "
            f"{'met' if g.passed else 'MISSED'} |"
        )
    lines += [
        "",
        (
            "Domain guard (each model at its own threshold; the INT8 threshold is refitted on the "
            "validation "
            f"split) and calibration; other sites: {n_sites} images (patients the guard's site classifier "
            f"did not learn from); shift test: {DRAWS} random sets of "
            f"{DRAW_SIZE}."
        ),
        "",
        (
            "| model | file MB | guard threshold | test split flagged | other sites flagged | other-site "
            "sets "
            "shifted (p < 0.01) | test sets not shifted (p > 0.05) | test ECE |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        for kind in ("fp32", "int8"):
            f = r[kind]
            lines.append(
                f"| {name} {kind} | {f['mb']:.1f} | {f['guard_threshold']:.3f} | {f['test_flagged']:.1%} | "
                f"{f['sites_flagged']:.1%} | {f['sites_shifted']:.0%} | {f['test_not_shifted']:.0%} | "
                f"{f['ece']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", type=Path, nargs="+", required=True, help="fp32 models; <model>.int8.onnx beside"
    )
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--other-sites", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from cxr.artifacts import ModelContract
    from cxr.export.quantize import default_out, load_split
    from cxr.files import write_text_atomic
    from cxr.foreign import not_learnt_from
    from cxr.imaging import decode_many, list_images

    all_sites = [str(p) for p in list_images(args.other_sites)]
    test = load_split(args.manifest, "test", 128, "PNEUMONIA")
    decoded: dict[tuple[str, ...], np.ndarray] = {}  # the held-out sites, decoded once per set of paths
    results, n_sites = {}, set()
    for model in args.models:
        int8 = default_out(model)
        if not int8.is_file():
            sys.exit(f"no {int8}: run `make quantize` first")
        guard = ModelContract.from_file(model).guard
        site_paths = not_learnt_from(all_sites, guard.facts if guard else {})
        if not site_paths:
            sys.exit(f"{model}: its guard learnt from every patient of {args.other_sites}; none is left")
        n_sites.add(len(site_paths))
        key = tuple(site_paths)
        if key not in decoded:
            decoded[key] = decode_many(site_paths, 128)
        results[model.stem] = measure_pair(model, int8, test, decoded[key])
    command = "python scripts/int8_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = table(results, command, " or ".join(str(n) for n in sorted(n_sites)))
    write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
