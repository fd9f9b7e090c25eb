"""How fast can INT8 make the model, and what does each step cost in accuracy? (results/int8_floor.md)

Builds INT8 candidates of an fp32 model with `cxr quantize`'s own machinery (pre-processing, QDQ,
per-channel weights, MinMax ranges calibrated on the validation split) for several sets of float
groups, then measures each, side by side with the fp32 model and the shipped INT8 copy:

- the model's cost in core-ms per image: one intra-op thread, batch 32, probability and guard score
  as scoring runs them, CPU time of the calling thread (less disturbed by other work on a shared
  machine than wall time), median of alternating rounds;
- the gate's figures against fp32 on the validation split (labels flipped at the model's threshold,
  ROC AUC), as `cxr quantize` prints them.

Usage: python scripts/int8_floor.py --model models/model1.onnx --manifest data/splits/manifest.csv
       [--float-sets "input,stem,block0;input;none"] [--rounds 7] [--out results/int8_floor.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 32
TIMED_IMAGES = 128


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def core_ms(paths: dict[str, Path], images: np.ndarray, rounds: int) -> dict[str, float]:
    """Median thread-CPU ms per image of each model, alternating models within each round."""
    sessions = {name: _session(path) for name, path in paths.items()}
    outputs = {
        name: [o.name for o in s.get_outputs() if o.name in ("probability", "domain_score")]
        for name, s in sessions.items()
    }
    for name, session in sessions.items():
        session.run(outputs[name], {"pixels": images[:BATCH]})
    found: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.thread_time()
            for i in range(0, len(images), BATCH):
                session.run(outputs[name], {"pixels": images[i : i + BATCH]})
            found[name].append(1000 * (time.thread_time() - start) / len(images))
    return {name: float(np.median(values)) for name, values in found.items()}


def main(argv: list[str] | None = None) -> None:
    from cxr.artifacts import ModelContract
    from cxr.export import quantize as q

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/model1.onnx"))
    parser.add_argument("--manifest", type=Path, default=Path("data/splits/manifest.csv"))
    parser.add_argument(
        "--float-sets",
        default="input,stem,block0,block1,block2;input,stem,block0,block1;input,stem,block0;input;none",
        help="';'-separated sets of float groups, each as for `cxr quantize --float-groups`",
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    opts = parser.parse_args(argv)

    contract = ModelContract.from_file(opts.model)
    shipped_path = q.default_out(opts.model)
    facts = json.loads(q.sidecar_path(shipped_path).read_text()) if shipped_path.is_file() else {}
    val = q.load_split(opts.manifest, "val", contract.input_size, contract.positive_class)
    reference = q.run_outputs(opts.model, val.images)
    timed = val.images[np.linspace(0, len(val.images) - 1, TIMED_IMAGES).round().astype(int)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-int8-floor-") as tmp_name:
        tmp = Path(tmp_name)
        work = q._workspace(opts.model, tmp, val.images, None)
        paths = {"fp32": opts.model}
        if shipped_path.is_file():
            paths["shipped int8"] = shipped_path
        for spec in opts.float_sets.split(";"):
            groups = q.parse_float_groups(spec) or []
            label = ", ".join(groups) or "none"
            out = work.quantize(groups, tmp / f"candidate{len(rows)}.onnx")
            gate = q.compare(
                reference["probability"],
                q.run_outputs(out, val.images)["probability"],
                val.labels,
                contract.threshold,
                "validation",
            )
            rows.append((label, gate))
            paths[label] = out
            print(f"float groups [{label}]: {gate.describe()}", flush=True)
        costs = core_ms(paths, timed, opts.rounds)
    fp32 = costs["fp32"]
    out_arg = f" --out {opts.out}" if opts.out else ""
    lines = [
        f"# INT8 floor: {opts.model.name}, which groups can be int8 and what they cost",
        "",
        f"Made by `python scripts/int8_floor.py --model {opts.model} --manifest {opts.manifest} --float-sets "
        f'"{opts.float_sets}" --rounds {opts.rounds}{out_arg}` (onnxruntime {q._ort_version()}). Model cost: '
        f"thread-CPU ms per image, 1 intra-op thread, batch {BATCH}, {TIMED_IMAGES} validation images, "
        "probability "
        f"and guard score, median of {opts.rounds} alternating rounds. Gate: against fp32 on the validation "
        "split "
        f"({len(val.images)} images; limits 0.5% flipped, ROC AUC -0.002).",
        "",
        "| model | float groups | core-ms/img | vs fp32 | labels flipped | ROC AUC change | gate |",
        "|---|---|---:|---:|---:|---:|---|",
        f"| fp32 | all | {fp32:.2f} | 1.00x | | | |",
    ]
    if "shipped int8" in costs:
        g = facts["gate"]
        lines.append(
            f"| shipped {shipped_path.name} (its `cxr quantize` gate) | "
            f"{', '.join(facts['float_groups']) or 'none'} "
            f"| {costs['shipped int8']:.2f} | {fp32 / costs['shipped int8']:.2f}x | {g['flips']} "
            f"({g['flip_share']:.2%}) | {-g['auc_drop']:+.4f} | {'passed' if g['passed'] else 'FAILED'} |"
        )
    for label, gate in rows:
        lines.append(
            f"| candidate | {label} | {costs[label]:.2f} | {fp32 / costs[label]:.2f}x | {gate.flips} "
            f"({gate.flip_share:.2%}) | {-gate.auc_drop:+.4f} | {'passed' if gate.passed else 'FAILED'} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        opts.out.write_text(text)


if __name__ == "__main__":
    main()
