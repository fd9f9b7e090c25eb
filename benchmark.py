"""``make bench`` (``python benchmark.py``): speed and memory, measured side by side in one run (the machines are noisy).

Each measurement runs in its own subprocess (fresh memory, same threads) and reports
images/s and its peak RSS. Printed ratios, with the goals from the issues:

- inference on full-size X-rays (../shared/data/fullres_sample, replicated to >= 600 files):
  (a) the seed's Keras + ImageDataGenerator.flow_from_directory + predict, (b) a naive
  onnxruntime loop (one image at a time, full decode), (c) cxr-infer, and the model-only
  onnxruntime bound on pre-decoded batches. Goals: c >= 3 x a, c >= 0.75 x bound.
- training throughput over a fixed number of steps, same model and batch: (a) the seed's
  ImageDataGenerator + flow_from_directory, (b) this repo's cached-array tf.data pipeline,
  (c) pre-decoded in-memory arrays (the bound). Goals: b >= 1.5 x a, b >= 0.9 x c.

Usage: python benchmark.py [--model models/model1.onnx] [--n-files 600] [--train-steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULLRES = Path("../shared/data/fullres_sample")
TRAIN_SOURCE = Path("../shared/data/chest_xray/train")
BATCH = 32


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + children) / 1024, 1)


def replicate_folder(source: Path, dest: Path, n_files: int) -> Path:
    """Hard-link (or copy) the sample's images under class folders until there are n_files."""
    import shutil

    from cxr.imaging import list_images

    originals = list_images(source)
    for i in range(n_files):
        src = originals[i % len(originals)]
        target = dest / src.parent.name / f"r{i // len(originals)}_{src.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copy(src, target)
    return dest


# ---------------------------------------------------------------- inference measurements
def _keras_model_like(onnx_path: Path):
    from cxr.infer.model import OnnxClassifier
    from cxr.train.config import load_config, resolve_variant
    from cxr.train.model import build_classifier

    meta = OnnxClassifier(onnx_path, device="cpu").info.metadata
    cfg = resolve_variant(load_config(), meta.get("variant", "model1"),
                          {"backbone": meta.get("backbone", "efficientnet_b2"), "weights": "none",
                           "input_size": int(meta["input_size"])})
    return build_classifier(cfg)[0], int(meta["input_size"])


def infer_seed(folder: Path, model_path: Path):
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    model, size = _keras_model_like(model_path)
    model.predict(np.zeros((1, size, size, 3), "float32"), verbose=0)  # build outside the clock
    start = time.perf_counter()
    flow = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        str(folder), target_size=(size, size), batch_size=BATCH, class_mode="binary", shuffle=False)
    model.predict(flow, verbose=0)
    return flow.samples, time.perf_counter() - start


def infer_naive(folder: Path, model_path: Path):
    from cxr.imaging import decode_image, list_images
    from cxr.infer.model import OnnxClassifier

    model = OnnxClassifier(model_path, device="cpu")
    paths = list_images(folder)
    start = time.perf_counter()
    for path in paths:
        model.predict(decode_image(path, model.info.input_size, use_draft=False)[None])
    return len(paths), time.perf_counter() - start


def infer_cxr(folder: Path, model_path: Path):
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import score_folder

    model = OnnxClassifier(model_path, device="auto")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = score_folder(folder, model, Path(tmp) / "p.csv", batch_size=BATCH)
        return result.n_files, time.perf_counter() - start


def infer_cxr_tta(folder: Path, model_path: Path):
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import score_folder

    model = OnnxClassifier(model_path, device="auto")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = score_folder(folder, model, Path(tmp) / "p.csv", batch_size=BATCH, tta=True)
        return result.n_files, time.perf_counter() - start


def infer_bound(folder: Path, model_path: Path):
    from cxr.imaging import decode_many, list_images
    from cxr.infer.model import OnnxClassifier

    model = OnnxClassifier(model_path, device="cpu")
    images = decode_many([str(p) for p in list_images(folder)], model.info.input_size)
    start = time.perf_counter()
    for i in range(0, len(images), BATCH):
        model.predict(images[i:i + BATCH])
    return len(images), time.perf_counter() - start


# ---------------------------------------------------------------- training measurements
def _train_model(size: int):
    from cxr.train.config import load_config, resolve_variant
    from cxr.train.fit import compile_classifier
    from cxr.train.model import build_classifier

    cfg = resolve_variant(load_config(), "model2", {"weights": "none", "input_size": size})
    model = build_classifier(cfg)[0]
    compile_classifier(model, 1e-4)
    return model, cfg


def _timed_fit(model, data, steps: int, **kwargs) -> float:
    model.fit(data, steps_per_epoch=1, epochs=1, verbose=0, **kwargs)  # compile/trace outside the clock
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, **kwargs)
    return time.perf_counter() - start


def train_seed(folder: Path, steps: int):
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    model, cfg = _train_model(128)
    aug = cfg["augment"]
    gen = ImageDataGenerator(rescale=1.0 / 255, rotation_range=aug["rotation_degrees"],
                             width_shift_range=aug["width_shift"], height_shift_range=aug["height_shift"],
                             shear_range=aug["shear_degrees"], zoom_range=aug["zoom"],
                             horizontal_flip=aug["horizontal_flip"], fill_mode=aug["fill_mode"])
    flow = gen.flow_from_directory(str(folder), target_size=(128, 128), batch_size=BATCH, class_mode="binary")
    return steps * BATCH, _timed_fit(model, flow, steps)


def _training_arrays(folder: Path, n: int):
    from cxr.imaging import decode_many, list_images

    paths = list_images(folder)[:: max(1, len(list_images(folder)) // n)][:n]
    labels = np.array([int(p.parent.name == "PNEUMONIA") for p in paths])
    return decode_many([str(p) for p in paths], 128), labels


def train_ours(folder: Path, steps: int):
    from cxr.train import dataset
    from cxr.train.augment import make_augmenter

    model, cfg = _train_model(128)
    images, labels = _training_arrays(folder, steps * BATCH)  # the decode-once cache, made before training
    data = dataset.train_dataset(images, labels, BATCH, make_augmenter(cfg, 0), 0).repeat()
    return steps * BATCH, _timed_fit(model, data, steps)


def train_bound(folder: Path, steps: int):
    import tensorflow as tf

    model, _ = _train_model(128)
    images, labels = _training_arrays(folder, steps * BATCH)
    data = tf.data.Dataset.from_tensor_slices((images.astype("float32"), labels.astype("float32")))
    data = data.batch(BATCH).cache().repeat()
    return steps * BATCH, _timed_fit(model, data, steps)


MEASURES = {"infer_seed": infer_seed, "infer_naive": infer_naive, "infer_cxr": infer_cxr, "infer_bound": infer_bound,
            "infer_tta": infer_cxr_tta,
            "train_seed": train_seed, "train_ours": train_ours, "train_bound": train_bound}


def measure_in_subprocess(name: str, *args: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", name, *args], capture_output=True,
                          text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _row(label: str, r: dict) -> str:
    return f"  {label:52s} {r['images']:5d} img {r['seconds']:7.2f} s {r['ips']:8.1f} img/s  peak RSS {r['peak_rss_mb']:7.1f} MB"


def bench_decode(size: int = 128) -> None:
    """Draft (reduced-scale) JPEG decoding vs a full decode on the full-size originals: time and error."""
    from cxr.imaging import decode_image, list_images

    paths = list_images(FULLRES)
    timings, arrays = {}, {}
    for use_draft in (False, True):
        start = time.perf_counter()
        arrays[use_draft] = [decode_image(p, size, use_draft=use_draft).astype(int) for p in paths]
        timings[use_draft] = 1000 * (time.perf_counter() - start) / len(paths)
    diff = np.concatenate([np.abs(a - b).ravel() for a, b in zip(arrays[True], arrays[False])])
    print(f"\nDecoding {len(paths)} full-size originals to {size}x{size}, one process: full decode "
          f"{timings[False]:.1f} ms/img, draft {timings[True]:.1f} ms/img; draft vs full |diff|: mean "
          f"{diff.mean():.2f}, p99 {np.percentile(diff, 99):.1f}, max {diff.max()} grey levels")


def bench_inference(model: Path, n_files: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = replicate_folder(FULLRES, Path(tmp) / "fullres", n_files)
        print(f"\nInference: {n_files} full-size X-rays (from {FULLRES}), model {model}, batch {BATCH}")
        r = {name: measure_in_subprocess(f"infer_{name}", str(folder), str(model))
             for name in ("seed", "naive", "cxr", "bound", "tta")}
    print(_row("(a) seed: Keras + flow_from_directory + predict", r["seed"]))
    print(_row("(b) naive onnxruntime loop, full decode, batch 1", r["naive"]))
    print(_row("(c) cxr-infer (score_folder)", r["cxr"]))
    print(_row("bound: onnxruntime on pre-decoded batches", r["bound"]))
    print(_row("cxr-infer --tta (6 views per image)", r["tta"]))
    print(f"  ratios: c/a = {r['cxr']['ips'] / r['seed']['ips']:.2f} (goal >= 3)   "
          f"c/b = {r['cxr']['ips'] / r['naive']['ips']:.2f}   "
          f"c/bound = {r['cxr']['ips'] / r['bound']['ips']:.2f} (goal >= 0.75)   "
          f"TTA cost: {r['cxr']['ips'] / r['tta']['ips']:.2f}x the time of plain cxr-infer")


def bench_training(steps: int) -> None:
    print(f"\nTraining: model2 (EfficientNetB2, weights=None), 128 px, batch {BATCH}, {steps} timed steps "
          f"after one warm-up step, images from {TRAIN_SOURCE}")
    r = {name: measure_in_subprocess(f"train_{name}", str(TRAIN_SOURCE), str(steps))
         for name in ("seed", "ours", "bound")}
    print(_row("(a) seed: ImageDataGenerator + flow_from_directory", r["seed"]))
    print(_row("(b) cxr: cached uint8 arrays + tf.data + Keras aug layers", r["ours"]))
    print(_row("(c) bound: pre-decoded in-memory arrays, no augmentation", r["bound"]))
    print(f"  ratios: b/a = {r['ours']['ips'] / r['seed']['ips']:.2f} (goal >= 1.5)   "
          f"b/c = {r['ours']['ips'] / r['bound']['ips']:.2f} (goal >= 0.9)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/model1.onnx"))
    parser.add_argument("--n-files", type=int, default=600)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--decode-only", action="store_true", help="only the draft-vs-full decoding line")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.measure:
        first = Path(opts.args[0])
        second = Path(opts.args[1]) if opts.measure.startswith("infer") else int(opts.args[1])
        images, seconds = MEASURES[opts.measure](first, second)
        print(json.dumps({"images": images, "seconds": seconds, "ips": images / seconds,
                          "peak_rss_mb": _peak_rss_mb()}))
        return
    print(f"cxr bench on {os.cpu_count()} CPUs (python {sys.version.split()[0]})")
    if not FULLRES.is_dir():
        sys.exit(f"bench needs {FULLRES} (the shared full-resolution sample)")
    bench_decode()
    if opts.decode_only:
        return
    if not opts.skip_inference:
        if not opts.model.is_file():
            sys.exit(f"no model at {opts.model}: run `make export` first or pass --model")
        bench_inference(opts.model, opts.n_files)
    if not opts.skip_training:
        bench_training(opts.train_steps)


if __name__ == "__main__":
    main()
