"""``make bench`` (``python benchmark.py``): speed and memory, measured side by side in one run.

Each measurement runs in its own subprocess (fresh memory, same threads) and reports
images/s and its peak RSS. Printed ratios, with the goals from the issues:

- JPEG decoding of the full-size sample in one process: full decode, Pillow's DCT-scaled
  draft (what cxr uses) and simplejpeg (DCT-scaled, fast IDCT), time and error against full.
- the pipeline, on the full-size sample (replicated) and on the 224 px copies: decode and model
  cost in core-ms per image (one process, one intra-op thread), decode only with every worker,
  model only, end to end, and end to end / pipeline bound, where the bound on a CPU-only machine
  is cores / (decode + model core-ms). Goal >= 0.9.
- INT8 (``make quantize``'s ``<model>.int8.onnx``) against fp32, and the earlier JPEG decode rule (DCT
  scale leaving >= 2x the target) against the new one (>= 1x), in one table: model alone (core-ms,
  1 intra-op thread, and every core), decode core-ms, end to end (score_folder) on the full-size
  sample and the 224 px copies, each against its pipeline bound; the decode floor (open, 1/8 DCT scale,
  load: entropy decoding), each model's kernel time by operator (onnxruntime's profiler), and what
  2x would leave the model. Goal: INT8 + new rule >= 2x today's fp32 + old rule end to end on the
  full-size sample.
- CUDA, when onnxruntime has the provider: fp32 and tf32 against the CPU (max |dp|, labels
  flipped), model only at batch 32/256/1024, decode only, end to end / min(decode, model).
- the first scored batch of a --resume on 100,000 files, half of them done.
- inference on full-size X-rays (../shared/data/fullres_sample, replicated to >= 600 files):
  (a) the seed's Keras + ImageDataGenerator.flow_from_directory + predict, (b) a naive
  onnxruntime loop (one image at a time, full decode), (c) cxr-infer, and the model-only
  onnxruntime bound on pre-decoded batches. Goals: c >= 3 x a, c >= 0.75 x bound.
- training throughput over a fixed number of steps, same model and batch: (a) the seed's
  ImageDataGenerator + flow_from_directory, (b) this repo's cached-array tf.data pipeline,
  (c) pre-decoded in-memory arrays (the bound). Goals: b >= 1.5 x a, b >= 0.9 x c.
- training per Keras backend (Lite2, each variant's batch): TensorFlow with tf.data (shipped)
  and with the backend-neutral PyDataset + in-step augmentation, JAX with the latter, and each
  backend's pre-decoded bound.

Usage: python benchmark.py [--model models/model1.onnx] [--n-files 600] [--pipeline-files 8000]
       [--train-steps 8]
       [--only decode,pipeline,int8,cuda,ray,trust,reports,resume,seed,training,backends]
       [--skip-training] [--skip-inference] [--int8-files 2000] [--int8-rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
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
COPIES = Path("../shared/data/chest_xray/test")
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
    cfg = resolve_variant(
        load_config(),
        meta.get("variant", "model1"),
        {
            "backbone": meta.get("backbone", "efficientnet_b2"),
            "weights": "none",
            "input_size": int(meta["input_size"]),
        },
    )
    return build_classifier(cfg)[0], int(meta["input_size"])


def infer_seed(folder: Path, model_path: Path):
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    model, size = _keras_model_like(model_path)
    model.predict(np.zeros((1, size, size, 3), "float32"), verbose=0)  # build outside the clock
    start = time.perf_counter()
    flow = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        str(folder), target_size=(size, size), batch_size=BATCH, class_mode="binary", shuffle=False
    )
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
    """score_folder on the folder; also the time to its first scored batch (start-up: worker
    processes, onnxruntime, sessions) and its throughput from then on."""
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import score_folder

    model = OnnxClassifier(model_path, device="auto")
    marks: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = score_folder(
            folder,
            model,
            Path(tmp) / "p.csv",
            batch_size=BATCH,
            progress=lambda done, total: marks.append((time.perf_counter() - start, done)),
        )
        seconds = time.perf_counter() - start
    (first, _), (last, _) = marks[1], marks[-1]
    after_first = sum(done for _, done in marks[2:])
    return result.n_files, seconds, {"first_batch_s": first, "steady_ips": after_first / (last - first)}


def _ray_started() -> float:
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    return time.perf_counter() - start


def ray_startup(folder: Path, model_path: Path):
    """Ray's start-up: ray.init, then one file through the whole engine (actor start, model load)."""
    from cxr.imaging import list_images
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.ray_engine import score_with_ray

    seconds = _ray_started()
    model = OnnxClassifier(model_path, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        first = list_images(folder)[0].relative_to(folder).as_posix()
        score_with_ray(str(folder), model, Path(tmp) / "p.csv", only=[first])
        return 1, seconds + time.perf_counter() - start


def infer_ray(folder: Path, model_path: Path):
    """The ray engine on a started single-machine Ray, whole run (actor start and model load included)."""
    return _ray_run(folder, model_path)[0]


def infer_ray_steady(folder: Path, model_path: Path):
    """The ray engine once its actors are up: files after the first finished block, over the time
    from that block to the end."""
    return _ray_run(folder, model_path)[1]


def _ray_run(folder: Path, model_path: Path):
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.ray_engine import score_with_ray

    _ray_started()
    model = OnnxClassifier(model_path, device="cpu")
    marks: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = score_with_ray(
            str(folder),
            model,
            Path(tmp) / "p.csv",
            progress=lambda n, total: marks.append((time.perf_counter(), n)),
        )
        end = time.perf_counter()
    first_time, first_n = marks[1]  # marks[0] is the resume count, before any work
    return (result.n_files, end - start), (result.n_files - first_n, end - first_time)


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
        model.predict(images[i : i + BATCH])
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
    aug = cfg.augment
    gen = ImageDataGenerator(
        rescale=1.0 / 255,
        rotation_range=aug.rotation_degrees,
        width_shift_range=aug.width_shift,
        height_shift_range=aug.height_shift,
        shear_range=aug.shear_degrees,
        zoom_range=aug.zoom,
        horizontal_flip=aug.horizontal_flip,
        fill_mode=aug.fill_mode,
    )
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


def _lite2_variant(variant: str):
    from cxr.train.config import load_config, resolve_variant
    from cxr.train.model import build_classifier

    cfg = resolve_variant(
        load_config(), variant, {"backbone": "efficientnet_lite2", "weights": "none", "input_size": 128}
    )
    return build_classifier(cfg)[0], cfg


def train_backend_pipeline(folder: Path, steps: int, variant: str, pipeline: str):
    """The shipped training input on the running backend (KERAS_BACKEND): 'tf.data' or 'in-model'."""
    from cxr.train.augment import make_augmenter
    from cxr.train.fit import compile_classifier, fit_inputs

    model, cfg = _lite2_variant(variant)
    batch = int(cfg.batch_size)
    images, labels = _training_arrays(folder, steps * batch)
    arrays = {"train": (images, labels, None), "val": (images[:batch], labels[:batch], None)}
    fitted, data, _, _ = fit_inputs(model, make_augmenter(cfg, 0), arrays, batch, 0, pipeline)
    compile_classifier(fitted, 1e-4)
    if pipeline == "tf.data":
        data = data.repeat()
    return steps * batch, _timed_fit(fitted, data, steps)


def train_backend_bound(folder: Path, steps: int, variant: str):
    """The same model on pre-decoded float32 arrays, no augmentation, on the running backend."""
    from cxr.train.fit import compile_classifier

    model, cfg = _lite2_variant(variant)
    batch = int(cfg.batch_size)
    images, labels = _training_arrays(folder, steps * batch)
    x, y = images.astype("float32"), labels.astype("float32")
    compile_classifier(model, 1e-4)
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # compile outside the clock
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return len(x), time.perf_counter() - start


def pipe_decode_core(folder: Path, model_path: Path):
    """Decode cost in core-ms: one process, no pool."""
    from cxr.imaging import decode_or_error, list_images
    from cxr.infer.model import OnnxClassifier

    size = OnnxClassifier(model_path, device="cpu").info.input_size
    paths = list_images(folder)
    start = time.perf_counter()
    for path in paths:
        decode_or_error(path, size)
    return len(paths), time.perf_counter() - start


def pipe_decode_floor(folder: Path, model_path: Path):
    """The JPEG decode floor in core-ms: open, the smallest DCT scale libjpeg offers (1/8) and load,
    no resize. What remains is mostly entropy (Huffman) decoding, which no DCT scale shrinks."""
    from PIL import Image

    from cxr.imaging import list_images

    paths = list_images(folder)
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (1, 1))
            img.load()
    return len(paths), time.perf_counter() - start


def pipe_model_core(folder: Path, model_path: Path):
    """Model cost in core-ms: onnxruntime with one intra-op thread on pre-decoded batches."""
    return _model_only(folder, model_path, threads=1)


def pipe_decode_all(folder: Path, model_path: Path):
    """Decode only, with the scorer's default pool (every CPU)."""
    from cxr.imaging import decoded_stream, list_images
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import effective_workers

    size = OnnxClassifier(model_path, device="cpu").info.input_size
    paths = list_images(folder)
    start = time.perf_counter()
    n = sum(1 for _ in decoded_stream(paths, size, effective_workers(None)))
    return n, time.perf_counter() - start


def _model_only(
    folder: Path,
    model_path: Path,
    threads: int | None = None,
    device: str = "cpu",
    batch: int = BATCH,
    precision: str = "fp32",
):
    from cxr.imaging import decode_many, list_images
    from cxr.infer.model import OnnxClassifier

    model = OnnxClassifier(model_path, device=device, threads=threads, precision=precision)
    images = decode_many([str(p) for p in list_images(folder)], model.info.input_size)
    model.predict(images[:batch])  # warm-up (CUDA: cuDNN algorithm search) outside the clock
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        model.predict(images[i : i + batch])
    return len(images), time.perf_counter() - start


def resume_first_batch(model_path: Path, n: int):
    """Seconds from calling score_folder(resume=True) on n empty files, half of them already done,
    to its first scored batch (listing, reading the partial file and choosing the rest)."""
    from cxr.artifacts import Predictions
    from cxr.infer.engine import ScoringOptions
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import score_folder, scoring_settings

    model = OnnxClassifier(model_path, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "many"
        for i in range(n):
            sub = root / f"d{i // 1000:03d}"
            if i % 1000 == 0:
                sub.mkdir(parents=True)
            (sub / f"f{i:06d}.png").touch()
        out = Path(tmp) / "out" / "predictions.csv"
        out.parent.mkdir()
        rels = sorted(f"d{i // 1000:03d}/f{i:06d}.png" for i in range(n))
        settings = scoring_settings(model, ScoringOptions())
        rows = (
            Predictions.row(
                rel,
                None,
                model.info.classes,
                model.info.threshold,
                error="empty file",
                model=model.path.name,
                model_sha256=model.info.sha256,
            )
            for rel in rels[: n // 2]
        )
        Predictions.start_partial(Predictions.partial_path(out), settings, rows)
        marks: list[float] = []
        start = time.perf_counter()
        score_folder(
            root,
            model,
            out,
            resume=True,
            workers=0,
            progress=lambda done, total: marks.append(time.perf_counter() - start),
        )
        return n, marks[1] if len(marks) > 1 else float("nan")


def trust_model_core(folder: Path, model_path: Path):
    """Model cost in core-ms as scoring runs it (probability and, where there is one, the domain
    guard's score), one intra-op thread, pre-decoded batches."""
    from cxr.imaging import decode_many, list_images
    from cxr.infer.model import OnnxClassifier

    model = OnnxClassifier(model_path, device="cpu", threads=1)
    images = decode_many([str(p) for p in list_images(folder)], model.info.input_size)
    model.predict_with_domain(images[:BATCH])
    start = time.perf_counter()
    for i in range(0, len(images), BATCH):
        model.predict_with_domain(images[i : i + BATCH])
    return len(images), time.perf_counter() - start


def pipe_profile_ops(folder: Path, model_path: Path):
    """Where the model's time goes: onnxruntime's profiler, one intra-op thread, batch 32, pre-decoded,
    probability and guard score as scoring runs them; kernel time per image by operator type, the
    first (warm-up) run left out."""
    import onnxruntime as ort

    from cxr.imaging import decode_many, list_images
    from cxr.infer.model import OnnxClassifier

    size = OnnxClassifier(model_path, device="cpu").info.input_size
    images = decode_many([str(p) for p in list_images(folder)[: 8 * BATCH]], size)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs() if o.name in ("probability", "domain_score")]
        start = time.perf_counter()
        for i in range(0, len(images), BATCH):
            session.run(names, {"pixels": images[i : i + BATCH]})
        seconds = time.perf_counter() - start
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")
    ops: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= runs[0]:
            op = event["args"]["op_name"]
            ops[op] = ops.get(op, 0.0) + event["dur"] / 1000
    timed = len(images) - BATCH
    return len(images), seconds, {"ops_ms": {op: ms / timed for op, ms in ops.items()}}


def model_without_trust(model: Path, out: Path) -> Path:
    """A copy of ``model`` with its domain guard and calibration taken out (graph and metadata)."""
    import onnx

    from cxr.export.trust import strip_trust

    proto = onnx.load(str(model))
    strip_trust(proto)
    keep = [p for p in proto.metadata_props if p.key not in ("cxr.guard", "cxr.calibration")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(out))
    return out


def bench_trust(model: Path, folder: Path, rounds: int = 3) -> None:
    """What the domain guard and calibration cost: the shipped model against the same model without
    them, side by side (alternating, ``rounds`` times each): model alone, end to end, and end to end
    once the first batch is scored (the per-image cost; start-up, which includes loading the larger
    model file in each worker, printed apart)."""
    with tempfile.TemporaryDirectory() as tmp:
        bare = model_without_trust(model, Path(tmp) / "bare.onnx")
        times: dict[str, list[float]] = {}
        for _ in range(rounds):
            for label, path in (("with", model), ("without", bare)):
                core = measure_in_subprocess("trust_model_core", str(folder), str(path))
                times.setdefault(f"core {label}", []).append(core["seconds"] * 1000 / core["images"])
                run = measure_in_subprocess("infer_cxr", str(folder), str(path))
                times.setdefault(f"whole {label}", []).append(run["seconds"] * 1000 / run["images"])
                times.setdefault(f"steady {label}", []).append(1000 / run["steady_ips"])
                times.setdefault(f"start {label}", []).append(run["first_batch_s"] * 1000)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"\nDomain guard + calibration cost ({model}, {folder}, median of {rounds} alternating runs):")
    for key, label in (
        ("core", "model alone, ms/img on 1 thread"),
        ("steady", "end to end after the first batch, wall ms/img"),
        ("whole", "end to end, whole run, wall ms/img"),
        ("start", "start-up to the first scored batch, ms"),
    ):
        with_, without = med[f"{key} with"], med[f"{key} without"]
        goal = "" if key == "start" else "; goal <= +15%"
        print(
            f"  {label:46s} without {without:8.3f}  with {with_:8.3f}  ratio {with_ / without:.3f} "
            f"({with_ / without - 1:+.1%}{goal})"
        )


DECODE_RULES = {"old: >= 2x target": "2", "new: >= 1x target": "1"}


def int8_path(model: Path) -> Path:
    """Where ``cxr quantize`` (``make quantize``) writes a model's INT8 copy."""
    return model.with_suffix(".int8.onnx")


def _int8_round(model: Path, int8: Path, folders: dict[str, Path], times: dict[str, list[float]]) -> None:
    """One round of the int8 section: each measurement once, appended to ``times`` (ms per image)."""

    def add(key: str, value: float) -> None:
        times.setdefault(key, []).append(value)

    copies = folders["224 px"]
    for kind, path in (("fp32", model), ("int8", int8)):
        core = measure_in_subprocess("trust_model_core", str(copies), str(path))
        add(f"core {kind}", 1000 * core["seconds"] / core["images"])
        every = measure_in_subprocess("infer_bound", str(copies), str(path))
        add(f"every {kind}", 1000 * every["seconds"] / every["images"])
    for place, folder in folders.items():
        floor = measure_in_subprocess("pipe_decode_floor", str(folder), str(model))
        add(f"floor {place}", 1000 * floor["seconds"] / floor["images"])
        for rule, oversample in DECODE_RULES.items():
            decode = measure_in_subprocess(
                "pipe_decode_core", str(folder), str(model), draft_oversample=oversample
            )
            add(f"decode {place} {rule}", 1000 * decode["seconds"] / decode["images"])
            for kind, path in (("fp32", model), ("int8", int8)):
                run = measure_in_subprocess("infer_cxr", str(folder), str(path), draft_oversample=oversample)
                add(f"e2e {place} {rule} {kind}", 1000 * run["seconds"] / run["images"])
                add(f"steady {place} {rule} {kind}", 1000 / run["steady_ips"])


def bench_int8(model: Path, folders: dict[str, Path], n_files: int, rounds: int = 3) -> None:
    """fp32 against its INT8 copy, and the earlier JPEG decode rule against the new one, side by side in
    one run (alternating, ``rounds`` times; medians): the model alone (1 intra-op thread and every core,
    batch 32, pre-decoded, probability and guard score as scoring runs it), decode core-ms, end to end
    (score_folder, the cxr-infer path), and the pipeline bound = cores / (decode + model core-ms)."""
    int8 = int8_path(model)
    if not int8.is_file():
        print(f"\nINT8: no {int8} (run `make quantize`); section skipped")
        return
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        _int8_round(model, int8, folders, times)
    profiles = {
        kind: measure_in_subprocess("pipe_profile_ops", str(folders["224 px"]), str(path))["ops_ms"]
        for kind, path in (("fp32", model), ("int8", int8))
    }
    med = {key: float(np.median(values)) for key, values in times.items()}
    cores = os.cpu_count() or 1
    print(
        f"\nINT8 and the JPEG decode rule: {model} vs {int8}, {n_files} files per folder, {cores} cores, "
        "batch "
        f"{BATCH}, median of {rounds} alternating rounds"
    )
    print(
        f"  model alone, pre-decoded 224 px copies:  fp32 {med['core fp32']:.2f} core-ms/img, int8 "
        f"{med['core int8']:.2f} (int8 {med['core fp32'] / med['core int8']:.2f}x faster, 1 intra-op "
        "thread); "
        f"every core: fp32 {1000 / med['every fp32']:.0f} img/s, int8 {1000 / med['every int8']:.0f} img/s "
        f"({med['every fp32'] / med['every int8']:.2f}x)"
    )
    print(
        f"  {'folder':9s} {'decode rule':18s} {'decode':>7s} | {'fp32 img/s':>10s} {'bound':>6s} "
        f"{'e2e/b':>5s} | "
        f"{'int8 img/s':>10s} {'bound':>6s} {'e2e/b':>5s} | {'int8/fp32':>9s} {'vs today':>8s} {'steady':>7s}"
    )
    today = med[f"e2e full-size {next(iter(DECODE_RULES))} fp32"]
    for place in folders:
        base = med[f"e2e {place} {next(iter(DECODE_RULES))} fp32"]
        for rule in DECODE_RULES:
            decode = med[f"decode {place} {rule}"]
            cells = []
            for kind in ("fp32", "int8"):
                ips, bound = (
                    1000 / med[f"e2e {place} {rule} {kind}"],
                    cores * 1000 / (decode + med[f"core {kind}"]),
                )
                cells.append(f"{ips:10.1f} {bound:6.1f} {ips / bound:5.2f}")
            e2e = med[f"e2e {place} {rule} int8"]
            print(
                f"  {place:9s} {rule:18s} {decode:5.2f}ms | {cells[0]} | {cells[1]} | "
                f"{med[f'e2e {place} {rule} fp32'] / e2e:8.2f}x {base / e2e:7.2f}x "
                f"{med[f'steady {place} {rule} fp32'] / med[f'steady {place} {rule} int8']:6.2f}x"
            )
    best = med[f"e2e full-size {list(DECODE_RULES)[-1]} int8"]
    print(
        "  decode: core-ms/img in one process. bound: cores / (decode + model core-ms). vs today: int8 with "
        "that "
        "rule against fp32 with the old rule on the same folder. steady: int8/fp32 after the first batch."
    )
    print(
        f"  target: int8 + new decode rule on the full-size sample = {today / best:.2f}x today's fp32 + old "
        "rule "
        f"end to end (goal >= 2x)"
    )
    for kind, ops in profiles.items():
        total = sum(ops.values())
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:7]
        print(
            f"  where {kind} spends its time (onnxruntime profiler, 1 thread, batch {BATCH}): "
            + ", ".join(f"{op} {ms / total:.0%}" for op, ms in top)
            + f" of {total:.2f} kernel ms/img"
        )
    old_rule, new_rule = (f"decode full-size {rule}" for rule in DECODE_RULES)
    need = (med[old_rule] + med["core fp32"]) / 2
    floor = med["floor full-size"]
    print(
        f"  what 2x needs: decode + model <= {need:.2f} core-ms/img (half of today's {2 * need:.2f}); "
        "decode with the "
        f"new rule {med[new_rule]:.2f}, its floor {floor:.2f} (open + 1/8 DCT scale + load, no resize: "
        "entropy "
        f"decoding); so the model may cost <= {need - med[new_rule]:.2f} core-ms ({need - floor:.2f} at the "
        "decode "
        f"floor) against int8 {med['core int8']:.2f}, fp32 {med['core fp32']:.2f}"
    )


def bench_reports_section() -> None:
    """`cxr report` on the test split and `make demo`, with the statistics as cxr computes them now and
    with the earlier one-resample-at-a-time bootstrap, side by side (scripts/bench_reports.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
    from bench_reports import bench_reports

    preds = Path("results/model1/predictions.csv")
    if not preds.is_file():
        print(f"\nReports: no {preds} (run `make results`); section skipped")
        return
    bench_reports(preds)


def measure_in_subprocess(
    name: str, *args: str, backend: str | None = None, draft_oversample: str | None = None
) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    if backend:
        env["KERAS_BACKEND"] = backend
    if (
        draft_oversample
    ):  # the JPEG DCT-scale rule of every process that decodes (cxr.imaging.DRAFT_OVERSAMPLE)
        env["CXR_BENCH_DRAFT_OVERSAMPLE"] = draft_oversample
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", name, *args],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _row(label: str, r: dict) -> str:
    return (
        f"  {label:52s} {r['images']:5d} img {r['seconds']:7.2f} s {r['ips']:8.1f} img/s  "
        f"peak RSS {r['peak_rss_mb']:7.1f} MB"
    )


def _simplejpeg_decode(path: Path, size: int) -> np.ndarray:
    """libjpeg-turbo through simplejpeg: DCT-scaled to at least twice the size, fast IDCT, then the
    same squash resize as cxr.imaging (grey JPEGs; the X-rays here are all grey)."""
    import simplejpeg
    from PIL import Image

    gray = simplejpeg.decode_jpeg(
        path.read_bytes(), colorspace="GRAY", fastdct=True, min_height=2 * size, min_width=2 * size
    )[..., 0]
    resized = np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR))
    return np.repeat(resized[..., None], 3, axis=2)


def bench_decode(size: int = 128) -> None:
    """Pillow draft (DCT-scaled) and simplejpeg (DCT-scaled, fast IDCT) against a full decode on the
    full-size originals: time per image in one process, and error."""
    from cxr.imaging import decode_image, list_images

    paths = [p for p in list_images(FULLRES) if p.suffix.lower() in (".jpg", ".jpeg")]
    decoders = {
        "full decode": lambda p: decode_image(p, size, use_draft=False),
        "Pillow draft": lambda p: decode_image(p, size, use_draft=True),
    }
    if importlib.util.find_spec("simplejpeg") is not None:  # optional, measured when installed
        decoders["simplejpeg"] = lambda p: _simplejpeg_decode(p, size)
    timings, arrays = {}, {}
    for _ in range(2):  # the second round is the one reported (files cached, code warm)
        for name, decode in decoders.items():
            start = time.perf_counter()
            arrays[name] = [decode(p).astype(int) for p in paths]
            timings[name] = 1000 * (time.perf_counter() - start) / len(paths)
    print(f"\nDecoding {len(paths)} full-size JPEG originals to {size}x{size}, one process:")
    for name in decoders:
        diff = np.concatenate([np.abs(a - b).ravel() for a, b in zip(arrays[name], arrays["full decode"])])
        print(
            f"  {name:13s} {timings[name]:6.2f} ms/img ({timings['full decode'] / timings[name]:.2f}x full, "
            f"{timings['Pillow draft'] / timings[name]:.2f}x draft); vs full |diff| mean {diff.mean():.2f}, "
            f"p99 {np.percentile(diff, 99):.1f}, max {diff.max()} grey levels"
        )
    if "simplejpeg" not in decoders:
        print("  simplejpeg: not installed (pip install simplejpeg) - not measured")


def bench_inference(model: Path, n_files: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = replicate_folder(FULLRES, Path(tmp) / "fullres", n_files)
        print(f"\nInference: {n_files} full-size X-rays (from {FULLRES}), model {model}, batch {BATCH}")
        r = {
            name: measure_in_subprocess(f"infer_{name}", str(folder), str(model))
            for name in ("seed", "naive", "cxr", "bound", "tta")
        }
    print(_row("(a) seed: Keras + flow_from_directory + predict", r["seed"]))
    print(_row("(b) naive onnxruntime loop, full decode, batch 1", r["naive"]))
    print(_row("(c) cxr-infer (score_folder)", r["cxr"]))
    print(_row("bound: onnxruntime on pre-decoded batches", r["bound"]))
    print(_row("cxr-infer --tta (6 views per image)", r["tta"]))
    print(
        f"  ratios: c/a = {r['cxr']['ips'] / r['seed']['ips']:.2f} (goal >= 3)   "
        f"c/b = {r['cxr']['ips'] / r['naive']['ips']:.2f}   "
        f"c/bound = {r['cxr']['ips'] / r['bound']['ips']:.2f} (goal >= 0.75)   "
        f"TTA cost: {r['cxr']['ips'] / r['tta']['ips']:.2f}x the time of plain cxr-infer"
    )


def bench_pipeline(model: Path, label: str, folder: Path, batch_sizes: bool = False) -> None:
    """cxr-infer against the pipeline bound on a CPU-only machine: cores / (decode + model core-ms).
    ``batch_sizes``: also the model's core-ms at batch 8 and 128 (the CPU default is 32)."""
    cores = os.cpu_count() or 1
    names = ("pipe_decode_core", "pipe_model_core", "pipe_decode_all", "infer_bound", "infer_cxr")
    r = {
        name: measure_in_subprocess(name, str(folder), str(model))
        for name in names + (("pipe_model_core_8", "pipe_model_core_128") if batch_sizes else ())
    }
    decode_ms, model_ms = 1000 / r["pipe_decode_core"]["ips"], 1000 / r["pipe_model_core"]["ips"]
    bound = cores * 1000 / (decode_ms + model_ms)
    print(f"\nPipeline on {label}: {r['infer_cxr']['images']} files, {cores} cores, model {model}")
    print(f"  decode {decode_ms:.2f} core-ms/img, model {model_ms:.2f} core-ms/img (1 intra-op thread)")
    if batch_sizes:
        print(
            "  model core-ms/img by batch size (1 intra-op thread, as each CPU-plan worker runs it): "
            + ", ".join(
                f"{b}: {1000 / r[n]['ips']:.2f}"
                for b, n in (
                    (8, "pipe_model_core_8"),
                    (BATCH, "pipe_model_core"),
                    (128, "pipe_model_core_128"),
                )
            )
        )
    print(_row("decode only, every worker", r["pipe_decode_all"]))
    print(_row("model only, every thread, pre-decoded batches", r["infer_bound"]))
    print(_row("end to end: cxr-infer (score_folder)", r["infer_cxr"]))
    print(
        f"  pipeline bound = cores / (decode + model core-ms) = {bound:.1f} img/s; "
        f"end to end / bound = {r['infer_cxr']['ips'] / bound:.2f} (goal >= 0.9)"
    )
    print(
        f"  of which start-up: first scored batch after {r['infer_cxr']['first_batch_s']:.2f} s; from then "
        "on "
        f"{r['infer_cxr']['steady_ips']:.1f} img/s = {r['infer_cxr']['steady_ips'] / bound:.2f} x bound"
    )


def bench_ray(model: Path, label: str, folder: Path) -> None:
    """The ray engine (single-machine Ray, every CPU) against the local engine on the same folder."""
    names = ("infer_cxr", "infer_ray", "infer_ray_steady", "ray_startup")
    r = {name: measure_in_subprocess(name, str(folder), str(model)) for name in names}
    print(f"\nRay engine on {label}: {r['infer_ray']['images']} files, {os.cpu_count()} CPUs, model {model}")
    print(_row("local engine (score_folder)", r["infer_cxr"]))
    print(_row("ray engine, whole run (score_with_ray)", r["infer_ray"]))
    print(_row("ray engine, once its actors are up", r["infer_ray_steady"]))
    print(
        f"  ray start-up (ray.init + one file through the engine): {r['ray_startup']['seconds']:.1f} s; "
        f"ray / local throughput: whole run {r['infer_ray']['ips'] / r['infer_cxr']['ips']:.2f}, once "
        "started "
        f"{r['infer_ray_steady']['ips'] / r['infer_cxr']['ips']:.2f} (goal >= 0.7)"
    )


def bench_resume(model: Path, n: int) -> None:
    r = measure_in_subprocess("resume_first_batch", str(model), str(n))
    print(
        f"\nResume on {n:,} files (half done): first scored batch after {r['seconds']:.2f} s "
        f"(listing, partial file, choosing the rest); peak RSS {r['peak_rss_mb']:.0f} MB"
    )


def cuda_parity(folder: Path, model_path: Path):
    """max |dp| of CUDA fp32 and CUDA tf32 against the CPU provider, printed as JSON lines."""
    from cxr.imaging import decode_many, list_images
    from cxr.infer.model import OnnxClassifier

    cpu = OnnxClassifier(model_path, device="cpu")
    images = decode_many([str(p) for p in list_images(folder)], cpu.info.input_size)
    reference = np.concatenate([cpu.predict(images[i : i + 256]) for i in range(0, len(images), 256)])
    for precision in ("fp32", "tf32"):
        gpu = OnnxClassifier(model_path, device="cuda", precision=precision)
        p = np.concatenate([gpu.predict(images[i : i + 256]) for i in range(0, len(images), 256)])
        flips = int(((p >= cpu.info.threshold) != (reference >= cpu.info.threshold)).sum())
        print(
            json.dumps(
                {
                    "precision": precision,
                    "max_abs_dp": float(np.abs(p - reference).max()),
                    "labels_flipped": flips,
                }
            )
        )
    return len(images), 1.0


def cuda_model_32(folder: Path, model_path: Path):
    return _model_only(folder, model_path, device="cuda", batch=32)


def cuda_model_256(folder: Path, model_path: Path):
    return _model_only(folder, model_path, device="cuda", batch=256)


def cuda_model_1024(folder: Path, model_path: Path):
    return _model_only(folder, model_path, device="cuda", batch=1024)


def cuda_decode_all(folder: Path, model_path: Path):
    return pipe_decode_all(folder, model_path)


def cuda_end_to_end(folder: Path, model_path: Path):
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import score_folder

    model = OnnxClassifier(model_path, device="cuda")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = score_folder(folder, model, Path(tmp) / "p.csv")
        return result.n_files, time.perf_counter() - start


def bench_cuda(model: Path, folder: Path) -> None:
    """Only where onnxruntime has a CUDA provider: TF32 parity and the GPU pipeline."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("\nCUDA: no CUDAExecutionProvider in this onnxruntime; CUDA section skipped")
        return
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", "cuda_parity", str(folder), str(model)],
        capture_output=True,
        text=True,
        env=env,
    )
    print(f"\nCUDA on {folder}:")
    for line in proc.stdout.splitlines():
        if line.startswith("{") and "precision" in line:
            item = json.loads(line)
            print(
                f"  CUDA {item['precision']} vs CPU: max |dp| {item['max_abs_dp']:.2e}, "
                f"{item['labels_flipped']} labels flipped"
            )
    r = {
        name: measure_in_subprocess(name, str(folder), str(model))
        for name in (
            "cuda_model_32",
            "cuda_model_256",
            "cuda_model_1024",
            "cuda_decode_all",
            "cuda_end_to_end",
        )
    }
    for name in ("cuda_model_32", "cuda_model_256", "cuda_model_1024"):
        print(_row(f"model only, CUDA fp32, batch {name.rsplit('_', 1)[1]}", r[name]))
    print(_row("decode only, every worker", r["cuda_decode_all"]))
    print(_row("end to end: cxr-infer --device cuda", r["cuda_end_to_end"]))
    bound = min(
        r["cuda_decode_all"]["ips"],
        max(r[n]["ips"] for n in ("cuda_model_32", "cuda_model_256", "cuda_model_1024")),
    )
    print(
        f"  bound = min(decode only, model only) = {bound:.0f} img/s; end to end / bound = "
        f"{r['cuda_end_to_end']['ips'] / bound:.2f} (goal >= 0.9)"
    )


def bench_backends(steps: int) -> None:
    """Training throughput per Keras backend on this machine (Lite2, 128 px, each variant's batch)."""
    jax = importlib.util.find_spec("jax") is not None
    print(
        f"\nTraining per backend: Lite2 (weights=None), 128 px, {steps} timed steps after a warm-up step, "
        f"images from {TRAIN_SOURCE}"
    )
    for variant in ("model1", "model2"):
        r = {
            "tf.data": measure_in_subprocess(
                f"trainb_{variant}_tf.data", str(TRAIN_SOURCE), str(steps), backend="tensorflow"
            ),
            "tf in-model": measure_in_subprocess(
                f"trainb_{variant}_in-model", str(TRAIN_SOURCE), str(steps), backend="tensorflow"
            ),
            "tf bound": measure_in_subprocess(
                f"trainbound_{variant}", str(TRAIN_SOURCE), str(steps), backend="tensorflow"
            ),
        }
        if jax:
            r["jax in-model"] = measure_in_subprocess(
                f"trainb_{variant}_in-model", str(TRAIN_SOURCE), str(steps), backend="jax"
            )
            r["jax bound"] = measure_in_subprocess(
                f"trainbound_{variant}", str(TRAIN_SOURCE), str(steps), backend="jax"
            )
        print(_row(f"{variant} TensorFlow: tf.data + augmentation (shipped)", r["tf.data"]))
        print(_row(f"{variant} TensorFlow: PyDataset, augmentation in the step", r["tf in-model"]))
        print(_row(f"{variant} TensorFlow: bound, pre-decoded, no augmentation", r["tf bound"]))
        line = (
            f"  {variant} ratios: tf.data / bound = {r['tf.data']['ips'] / r['tf bound']['ips']:.2f}, "
            f"in-model / tf.data = {r['tf in-model']['ips'] / r['tf.data']['ips']:.2f}"
        )
        if jax:
            print(_row(f"{variant} JAX: PyDataset, augmentation in the step", r["jax in-model"]))
            print(_row(f"{variant} JAX: bound, pre-decoded, no augmentation", r["jax bound"]))
            line += (
                f", JAX / bound = {r['jax in-model']['ips'] / r['jax bound']['ips']:.2f}, "
                f"JAX / TensorFlow = {r['jax in-model']['ips'] / r['tf.data']['ips']:.2f}"
            )
        else:
            line += "; JAX not installed (pip install -e '.[train-jax]')"
        print(line)


def bench_training(steps: int) -> None:
    print(
        f"\nTraining: model2 (EfficientNetB2, weights=None), 128 px, batch {BATCH}, {steps} timed steps "
        f"after one warm-up step, images from {TRAIN_SOURCE}"
    )
    r = {
        name: measure_in_subprocess(f"train_{name}", str(TRAIN_SOURCE), str(steps))
        for name in ("seed", "ours", "bound")
    }
    print(_row("(a) seed: ImageDataGenerator + flow_from_directory", r["seed"]))
    print(_row("(b) cxr: cached uint8 arrays + tf.data + Keras aug layers", r["ours"]))
    print(_row("(c) bound: pre-decoded in-memory arrays, no augmentation", r["bound"]))
    print(
        f"  ratios: b/a = {r['ours']['ips'] / r['seed']['ips']:.2f} (goal >= 1.5)   "
        f"b/c = {r['ours']['ips'] / r['bound']['ips']:.2f} (goal >= 0.9)"
    )


MEASURES = {
    "infer_seed": infer_seed,
    "infer_naive": infer_naive,
    "infer_cxr": infer_cxr,
    "infer_bound": infer_bound,
    "infer_tta": infer_cxr_tta,
    "pipe_decode_core": pipe_decode_core,
    "pipe_model_core": pipe_model_core,
    "pipe_decode_all": pipe_decode_all,
    "pipe_decode_floor": pipe_decode_floor,
    "resume_first_batch": resume_first_batch,
    "cuda_parity": cuda_parity,
    "cuda_model_32": cuda_model_32,
    "cuda_model_256": cuda_model_256,
    "cuda_model_1024": cuda_model_1024,
    "cuda_decode_all": cuda_decode_all,
    "cuda_end_to_end": cuda_end_to_end,
    "train_seed": train_seed,
    "train_ours": train_ours,
    "train_bound": train_bound,
    "ray_startup": ray_startup,
    "infer_ray": infer_ray,
    "infer_ray_steady": infer_ray_steady,
    "trust_model_core": trust_model_core,
    "pipe_profile_ops": pipe_profile_ops,
}


for _batch in (8, 128):
    MEASURES[f"pipe_model_core_{_batch}"] = functools.partial(_model_only, threads=1, batch=_batch)
for _variant in ("model1", "model2"):
    for _pipeline in ("tf.data", "in-model"):
        MEASURES[f"trainb_{_variant}_{_pipeline}"] = functools.partial(
            train_backend_pipeline, variant=_variant, pipeline=_pipeline
        )
    MEASURES[f"trainbound_{_variant}"] = functools.partial(train_backend_bound, variant=_variant)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/model1.onnx"))
    parser.add_argument("--n-files", type=int, default=600)
    parser.add_argument(
        "--pipeline-files",
        type=int,
        default=8000,
        help="files per folder in the pipeline and ray sections (archive-sized: the scorer's fixed "
        "start-up is printed apart)",
    )
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--resume-files", type=int, default=100_000)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--decode-only", action="store_true", help="only the draft-vs-full decoding line")
    parser.add_argument("--trust-files", type=int, default=2000, help="files in the guard-cost section")
    parser.add_argument(
        "--trust-rounds", type=int, default=3, help="alternating runs of each model in that section"
    )
    parser.add_argument("--int8-files", type=int, default=2000, help="files per folder in the int8 section")
    parser.add_argument("--int8-rounds", type=int, default=3, help="alternating rounds of the int8 section")
    parser.add_argument(
        "--only",
        default="decode,pipeline,int8,cuda,ray,trust,reports,resume,seed,training,backends",
        help="comma-separated sections to run [default: all]",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.measure:
        if opts.measure.startswith("train"):
            from cxr.train.backend import select_backend

            select_backend(None)  # as `cxr train` does: KERAS_BACKEND, JAX's compilation cache
        first = Path(opts.args[0])
        second = (
            Path(opts.args[1])
            if opts.measure.startswith(("infer", "pipe", "cuda", "ray", "trust"))
            else int(opts.args[1])
        )
        images, seconds, *extra = MEASURES[opts.measure](first, second)
        print(
            json.dumps(
                {
                    "images": images,
                    "seconds": seconds,
                    "ips": images / seconds,
                    "peak_rss_mb": _peak_rss_mb(),
                    **(extra[0] if extra else {}),
                }
            )
        )
        return
    print(f"cxr bench on {os.cpu_count()} CPUs (python {sys.version.split()[0]})")
    if not FULLRES.is_dir():
        sys.exit(f"bench needs {FULLRES} (the shared full-resolution sample)")
    only = set(opts.only.split(","))
    if "decode" in only or opts.decode_only:
        bench_decode()
    if opts.decode_only:
        return
    if not opts.skip_inference:
        if not opts.model.is_file():
            sys.exit(f"no model at {opts.model}: run `make export` first or pass --model")
        if "int8" in only:
            with tempfile.TemporaryDirectory() as tmp:
                bench_int8(
                    opts.model,
                    {
                        "full-size": replicate_folder(FULLRES, Path(tmp) / "fullres", opts.int8_files),
                        "224 px": replicate_folder(COPIES, Path(tmp) / "copies", opts.int8_files),
                    },
                    opts.int8_files,
                    opts.int8_rounds,
                )
        with tempfile.TemporaryDirectory() as tmp:
            fullres = replicate_folder(FULLRES, Path(tmp) / "fullres", opts.pipeline_files)
            copies = replicate_folder(COPIES, Path(tmp) / "copies", opts.pipeline_files)
            if "pipeline" in only:
                bench_pipeline(opts.model, f"full-size originals ({FULLRES}, replicated)", fullres)
                bench_pipeline(opts.model, f"224 px copies ({COPIES})", copies, batch_sizes=True)
            if "cuda" in only:
                bench_cuda(opts.model, copies)
            if "ray" in only:
                bench_ray(opts.model, f"224 px copies ({COPIES})", copies)
        if "trust" in only:
            with tempfile.TemporaryDirectory() as tmp:
                bench_trust(
                    opts.model,
                    replicate_folder(COPIES, Path(tmp) / "copies", opts.trust_files),
                    opts.trust_rounds,
                )
        if "reports" in only:
            bench_reports_section()
        if "resume" in only:
            bench_resume(opts.model, opts.resume_files)
        if "seed" in only:
            bench_inference(opts.model, opts.n_files)
    if not opts.skip_training:
        if "training" in only:
            bench_training(opts.train_steps)
        if "backends" in only:
            bench_backends(opts.train_steps)


if __name__ == "__main__":
    main()
