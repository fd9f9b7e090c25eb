"""Training on any Keras backend: JAX on this CPU machine, TensorFlow kept for export (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxr.app.cli import cxr
from tests.synthetic import make_dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(__import__("importlib").util.find_spec("jax") is None, reason="jax not installed"),
]
XLA_CACHE = Path(tempfile.gettempdir()) / f"cxr-test-jax-cache-{os.getuid()}"
TINY = ["--weights", "none", "--epochs", "1", "--input-size", "32", "--batch-size", "8"]

JAX_TRAIN = """
import sys
{prelude}
from cxr.app.cli import main
sys.argv = ["cxr", "train", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"tensorflow", "tf2onnx"}})
    print("IMPORTED", heavy)
    sys.exit(exit.code or (1 if heavy else 0))
"""

CRASH_AFTER_FIRST_EPOCH = """
import keras
from cxr.train import fit
class Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise SystemExit(9)
original = fit._callbacks
fit._callbacks = lambda *a, **k: original(*a, **k) + [Crash()]
"""


def train_in_subprocess(backend: str, *args: str, prelude: str = "") -> subprocess.CompletedProcess:
    # One JAX compilation cache for the module: runs with the same model and shapes (the resume test's
    # model2 and the fixture's) compile their step once, as a user's resumed run does.
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "JAX_COMPILATION_CACHE_DIR": str(XLA_CACHE),
    }
    return subprocess.run(
        [sys.executable, "-c", JAX_TRAIN.format(prelude=prelude), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )


@pytest.fixture(scope="module")
def jax_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jax")
    data = make_dataset(root / "data", n_patients=6, images_per_patient=2)
    prepared = CliRunner().invoke(
        cxr, ["data", "prepare", "--source", str(data), "--out", str(root / "splits"), "--no-shortcut-check"]
    )
    assert prepared.exit_code == 0, prepared.output
    manifest = root / "splits" / "manifest.csv"
    proc = train_in_subprocess(
        "jax",
        "--variant",
        "model2",
        "--manifest",
        str(manifest),
        "--out",
        str(root / "runs" / "model2"),
        "--cache-dir",
        str(root / "cache"),
        *TINY,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"root": root, "manifest": manifest, "runs": root / "runs", "output": proc.stdout}


def test_jax_training_never_imports_tensorflow(jax_runs) -> None:
    assert "IMPORTED []" in jax_runs["output"]
    info = json.loads((jax_runs["runs"] / "model2" / "run.json").read_text())
    assert info["backend"] == "jax" and info["finished"] and info["epochs_run"] == 1
    assert (jax_runs["runs"] / "model2" / "best.keras").is_file()


COUNT_PARAMS = """
import json, sys
from cxr.train.backend import select_backend
select_backend("jax")
from cxr.train.config import load_config, resolve_variant
from cxr.train.model import build_classifier
from dataclasses import asdict
overrides = {"weights": "none", "input_size": 32}
params = {v: asdict(build_classifier(resolve_variant(load_config(), v, overrides))[1].params)
          for v in ("model1", "model2")}
print("PARAMS", json.dumps(params), "TENSORFLOW", "tensorflow" in sys.modules)
"""


def test_seed_parameter_counts_hold_on_jax(jax_runs) -> None:
    """Both variants built on JAX (model2 also trained in the fixture, whose compilations this reuses)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_COMPILATION_CACHE_DIR": str(XLA_CACHE)}
    proc = subprocess.run(
        [sys.executable, "-c", COUNT_PARAMS], capture_output=True, text=True, env=env, timeout=900
    )
    line = next((line for line in proc.stdout.splitlines() if line.startswith("PARAMS")), None)
    assert line is not None, proc.stderr[-3000:]
    params = json.loads(line.split(" ", 1)[1].rsplit(" TENSORFLOW", 1)[0])
    assert line.endswith("TENSORFLOW False")
    m1, m2 = params["model1"], params["model2"]
    assert (m1["trainable"], m1["non_trainable"]) == (7_888_387, 68_855)
    assert (m2["trainable"], m2["non_trainable"]) == (6_383_963, 1_573_279)
    trained = json.loads((jax_runs["runs"] / "model2" / "run.json").read_text())["params"]
    assert trained == m2


def test_a_jax_run_exports_through_the_parity_gate(jax_runs, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        cxr,
        [
            "export",
            "--run",
            str(jax_runs["runs"] / "model2"),
            "--out",
            str(out),
            "--n-parity",
            "8",
            "--calibration",
            "none",
            "--no-guard",
        ],
    )
    assert result.exit_code == 0, result.output
    parity = json.loads(out.with_suffix(".parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    from cxr.artifacts import ModelContract

    assert ModelContract.from_file(out).facts["backend"] == "jax"


def test_jax_resume_after_a_kill_and_backend_mismatch_is_refused(jax_runs) -> None:
    run = jax_runs["root"] / "resume"
    args = [
        "--variant",
        "model2",
        "--manifest",
        str(jax_runs["manifest"]),
        "--out",
        str(run),
        "--cache-dir",
        str(jax_runs["root"] / "cache"),
        "--weights",
        "none",
        "--epochs",
        "2",
        "--input-size",
        "32",
        "--batch-size",
        "8",
    ]
    killed = train_in_subprocess("jax", *args, prelude=CRASH_AFTER_FIRST_EPOCH)
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert (run / "backup").is_dir() and len((run / "history.csv").read_text().splitlines()) == 2
    mismatch = CliRunner().invoke(cxr, ["train", *args, "--resume"])  # this process runs TensorFlow
    assert mismatch.exit_code == 2 and "--backend jax" in mismatch.output
    resumed = train_in_subprocess("jax", *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    info = json.loads((run / "run.json").read_text())
    assert info["epochs_run"] == 2 and info["finished"] and info["backend"] == "jax"


def test_mixed_bfloat16_trains_and_exports_a_float32_model(jax_runs, tmp_path: Path) -> None:
    run = tmp_path / "mixed"
    proc = train_in_subprocess(
        "jax",
        "--variant",
        "model2",
        "--manifest",
        str(jax_runs["manifest"]),
        "--out",
        str(run),
        "--cache-dir",
        str(jax_runs["root"] / "cache"),
        "--dtype-policy",
        "mixed_bfloat16",
        *TINY,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["precision"] == "mixed_bfloat16"
    out = tmp_path / "mixed.onnx"
    result = CliRunner().invoke(
        cxr,
        [
            "export",
            "--run",
            str(run),
            "--out",
            str(out),
            "--n-parity",
            "8",
            "--calibration",
            "none",
            "--no-guard",
        ],
    )
    assert result.exit_code == 0, result.output
    import onnx

    graph = onnx.load(str(out)).graph
    assert not any(t.data_type == onnx.TensorProto.BFLOAT16 for t in graph.initializer)
