"""Train both variants with JAX on a GPU machine in one call, and bring the runs back.

Runs on a GPU machine (Python 3.12, JAX with CUDA, no TensorFlow, no Keras), from the
repo root, after ``scripts/gpu_carry.sh`` has staged its inputs (see docs/training.md, "Training
on a GPU"). It installs the carried wheels (keras, optree, namex, jsonschema and its helpers, cxr),
unpacks the 224 px data and the Lite2 ImageNet weights, prepares the split, trains model1 and
model2 (Lite2 ImageNet, the original notebook's settings, 30 epochs, the shipped config) with
``KERAS_BACKEND=jax``, and prints seconds per epoch, the total, and the model-alone bound:
the same training step on batches already on the device, no input pipeline. The run folders
go to ``$OUT/runs.tar`` (best.keras, history.csv, run.json, ...), to be exported here with
``cxr export`` (TensorFlow, CPU).

    python3 scripts/gpu_train_jax.py            # on the GPU machine
    python3 scripts/gpu_train_jax.py --smoke    # anywhere: 1 epoch on 64 images per split
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CARRY = Path(os.environ.get("CXR_CARRY", str(Path.home() / "carry")))
SITE = Path("/tmp/cxr_site")


def sh(*args: str, **kwargs) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, **kwargs)


def install_wheels() -> None:
    wheels = sorted(str(p) for p in CARRY.glob("whl/*.whl"))
    if wheels:
        sh(
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--target",
            str(SITE),
            *wheels,
        )
        sys.path.insert(0, str(SITE))
        os.environ["PYTHONPATH"] = f"{SITE}:{os.environ.get('PYTHONPATH', '')}"


def unpack_inputs(work: Path) -> Path:
    """The 224 px data (reassembled from its parts) and the Lite2 weights in the Keras cache."""
    parts = sorted(CARRY.glob("chest_xray.tar.part*"))
    if parts:
        with open(work / "chest_xray.tar", "wb") as joined:
            for part in parts:
                joined.write(part.read_bytes())
        with tarfile.open(work / "chest_xray.tar") as archive:
            archive.extractall(work, filter="data")
    weights = sorted(CARRY.glob("efficientnet_lite2_notop.weights.h5.part*"))
    if weights:
        target = Path.home() / ".keras" / "models" / "efficientnet_lite2_notop.weights.h5"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"".join(p.read_bytes() for p in weights))
    return work / "chest_xray"


def smoke_manifest(manifest: Path, per_split: int) -> Path:
    import pandas as pd

    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    small = frame.groupby(["split", "label"], group_keys=False).head(per_split // 2)
    out = manifest.with_name("manifest_smoke.csv")
    small.to_csv(out, index=False)
    return out


def model_only_bound(variant: str, manifest: Path, steps: int = 20) -> float:
    """img/s of the training step alone on a batch already on the device (same model, optimizer, loss)."""
    import keras
    import numpy as np

    from cxr.train.config import load_config, resolve_variant
    from cxr.train.fit import compile_classifier
    from cxr.train.model import build_classifier

    cfg = resolve_variant(load_config(), variant, {"backbone": "efficientnet_lite2", "weights": "imagenet"})
    model, _ = build_classifier(cfg)
    compile_classifier(model, 1e-4)
    batch = cfg.batch_size
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).uniform(0, 255, (batch, 128, 128, 3)).astype("float32")
    )
    y = keras.ops.convert_to_tensor(np.ones((batch, 1), "float32"))
    model.train_on_batch(x, y)  # compile outside the clock
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    float(keras.ops.convert_to_numpy(model.trainable_weights[0]).sum())  # wait for the device
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 epoch on 64 images per split (a dry run)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")))
    opts = parser.parse_args()
    os.environ["KERAS_BACKEND"] = "jax"
    install_wheels()
    from cxr.train.backend import use_jax_compilation_cache

    use_jax_compilation_cache()  # before JAX loads here: the bound below reuses the runs' compilations
    work = Path(os.environ.get("CXR_WORK", "/tmp/cxr_work"))
    work.mkdir(parents=True, exist_ok=True)
    source = unpack_inputs(work) if not opts.smoke else Path("../shared/data/chest_xray")
    sh(
        sys.executable,
        "-m",
        "cxr.app.cli",
        "data",
        "prepare",
        "--source",
        str(source),
        "--out",
        str(work / "splits"),
        "--no-shortcut-check",
    )
    manifest = work / "splits" / "manifest.csv"
    if opts.smoke:
        manifest = smoke_manifest(manifest, 64)
    import jax

    print(f"devices: {jax.devices()}", flush=True)
    epochs = ["--epochs", "1"] if opts.smoke else []
    totals = {}
    for variant in ("model1", "model2"):
        start = time.perf_counter()
        sh(
            sys.executable,
            "-m",
            "cxr.app.cli",
            "train",
            "--variant",
            variant,
            "--backbone",
            "efficientnet_lite2",
            "--weights",
            "imagenet",
            "--backend",
            "jax",
            "--manifest",
            str(manifest),
            "--out",
            str(work / "runs" / variant),
            "--cache-dir",
            str(work / "cache"),
            *epochs,
        )
        totals[variant] = time.perf_counter() - start
        info = json.loads((work / "runs" / variant / "run.json").read_text())
        seconds = info["fit_seconds_this_session"]
        print(
            f"{variant}: {info['epochs_run']} epochs, {seconds:.1f} s fit, "
            f"{seconds / info['epochs_run']:.2f} s/epoch, "
            f"{totals[variant]:.1f} s with start-up; best epoch {info['best_epoch']}",
            flush=True,
        )
        n_train = info["n_train"]
        bound = model_only_bound(variant, manifest, steps=2 if opts.smoke else 20)
        print(
            f"{variant}: end to end {n_train * info['epochs_run'] / seconds:.0f} img/s "
            f"(training images per fit second, validation included) vs model-alone bound {bound:.0f} img/s",
            flush=True,
        )
    print(f"total: {sum(totals.values()):.1f} s for both variants", flush=True)
    opts.out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(opts.out / "runs.tar", "w") as archive:
        for variant in ("model1", "model2"):
            archive.add(
                work / "runs" / variant,
                arcname=f"runs/{variant}",
                filter=lambda info: None if "/backup" in info.name else info,
            )
    print(f"wrote {opts.out / 'runs.tar'}", flush=True)


if __name__ == "__main__":
    main()
