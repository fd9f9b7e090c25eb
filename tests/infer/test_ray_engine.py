"""The ray engine keeps the local engine's contract: same rows (errors included), resume after a
killed driver, nothing lost or duplicated when a worker dies on a two-node loopback cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cxr.app.infer import infer as infer_command
from tests.onnx_fixtures import make_tiny_model
from tests.synthetic import make_dataset

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'cxr[ray]')")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_instance():
    """One single-machine Ray for the module (``ray.init(num_cpus=2)``); its GCS address for subprocesses."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory) -> Path:
    """Labelled images plus the files that become error rows."""
    root = make_dataset(
        tmp_path_factory.mktemp("ray") / "data", n_patients=8, images_per_patient=2, layout="flat"
    )
    (root / "NORMAL" / "not_an_image.jpeg").write_bytes(b"plain text, not a JPEG")
    good = (root / "PNEUMONIA" / "person0_bacteria_0.jpeg").read_bytes()
    (root / "PNEUMONIA" / "truncated.jpeg").write_bytes(good[: len(good) // 3])
    (root / "NORMAL" / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def run_infer(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(infer_command, [*args, "--no-report", "-q", "--n-boot", "10"])
    return result.exit_code, result.output


def read(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv, dtype=str, keep_default_na=False)


@pytest.mark.slow  # over 5 s on 2 cores: starts a Ray instance (5 s) and scores on it
def test_ray_and_local_engines_write_the_same_rows_errors_included(
    ray_instance, hostile_folder, model, tmp_path
):
    local_code, _ = run_infer(str(hostile_folder), "--model", str(model), "--out", str(tmp_path / "local"))
    ray_code, output = run_infer(
        str(hostile_folder), "--model", str(model), "--out", str(tmp_path / "ray"), "--engine", "ray"
    )
    assert local_code == ray_code == 1, output  # partial: some files are error rows
    local, remote = read(tmp_path / "local" / "predictions.csv"), read(tmp_path / "ray" / "predictions.csv")
    assert list(local.columns) == list(remote.columns) and list(local["path"]) == list(remote["path"])
    assert (local.drop(columns="p_PNEUMONIA") == remote.drop(columns="p_PNEUMONIA")).all().all()
    scored = local["error"] == ""
    assert scored.sum() == 32 and (~scored).sum() == 3
    diff = np.abs(
        local.loc[scored, "p_PNEUMONIA"].astype(float) - remote.loc[scored, "p_PNEUMONIA"].astype(float)
    )
    assert diff.max() <= 1e-6
    assert not (tmp_path / "ray" / "shards").exists()  # assembled, then cleaned up


@pytest.mark.slow
def test_a_csv_list_and_a_file_uri_are_sources_of_the_ray_engine(
    ray_instance, hostile_folder, model, tmp_path
):
    listed = sorted(str(p.relative_to(hostile_folder)) for p in hostile_folder.rglob("*.jpeg"))[:5]
    (hostile_folder.parent / "list.csv").write_text("path\n" + "\n".join(listed) + "\n")
    code, output = run_infer(
        str(hostile_folder.parent / "list.csv"),
        "--model",
        str(model),
        "--out",
        str(tmp_path / "csv"),
        "--engine",
        "ray",
    )
    assert code in (0, 1), output
    assert list(read(tmp_path / "csv" / "predictions.csv")["path"]) == listed
    code, output = run_infer(
        hostile_folder.as_uri(), "--model", str(model), "--out", str(tmp_path / "uri"), "--engine", "ray"
    )
    assert code == 1, output
    uri_rows = read(tmp_path / "uri" / "predictions.csv")
    assert len(uri_rows) == 35 and (uri_rows["error"] != "").sum() == 3


def test_a_csv_list_without_the_ray_engine_is_a_usage_error(hostile_folder, model, tmp_path):
    (tmp_path / "list.csv").write_text("path\nx.jpeg\n")
    code, output = run_infer(str(tmp_path / "list.csv"), "--model", str(model), "--out", str(tmp_path / "o"))
    assert code == 2 and "--engine ray" in output and "Traceback" not in output


DRIVER = """
import sys
from cxr.app.cli import infer_main
sys.argv = ["cxr-infer", *sys.argv[1:]]
infer_main()
"""


@pytest.mark.slow
def test_resume_after_the_driver_is_killed_keeps_finished_shards(ray_instance, model, tmp_path):
    folder = make_dataset(tmp_path / "many", n_patients=60, images_per_patient=2, layout="flat")
    out = tmp_path / "out"
    args = [
        str(folder),
        "--model",
        str(model),
        "--out",
        str(out),
        "--engine",
        "ray",
        "--ray-address",
        ray_instance,
        "--batch-size",
        "8",
        "--no-report",
        "-q",
        "--n-boot",
        "10",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 180
    while not list((out / "shards").glob("shard-*.parquet")) and time.monotonic() < deadline:
        assert driver.poll() is None, driver.stdout.read().decode()[-2000:]
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    finished = {
        p for shard in (out / "shards").glob("shard-*.parquet") for p in pd.read_parquet(shard)["path"]
    }
    assert 0 < len(finished) < 240
    resumed = subprocess.run(
        [sys.executable, "-c", DRIVER, *args, "--resume", "--log-format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    rows = read(out / "predictions.csv")
    assert len(rows) == 240 and rows["path"].is_unique and (rows["error"] == "").all()
    fresh_code, _ = run_infer(str(folder), "--model", str(model), "--out", str(tmp_path / "local"))
    assert fresh_code == 0
    local = read(tmp_path / "local" / "predictions.csv")
    assert list(local["path"]) == list(rows["path"])
    assert np.abs(local["p_PNEUMONIA"].astype(float) - rows["p_PNEUMONIA"].astype(float)).max() <= 1e-6


CLUSTER = """
import os, signal, sys, threading, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from cxr.infer.model import OnnxClassifier
from cxr.infer.ray_engine import score_with_ray

folder, model_path, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
killed = []

def kill_a_worker():
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if list((out / "shards").glob("shard-*.parquet")):
            workers = [
                int(d.name)
                for d in Path("/proc").iterdir()
                if d.name.isdigit() and (d / "cmdline").read_bytes().startswith(b"ray::MapWorker")
            ] if Path("/proc").is_dir() else []
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
                return
        time.sleep(0.02)

threading.Thread(target=kill_a_worker, daemon=True).start()
result = score_with_ray(
    str(folder), OnnxClassifier(model_path, device="cpu"), out / "predictions.csv", batch_size=4
)
print("KILLED", len(killed), "ROWS", result.n_files, "ERRORS", result.n_errors)
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_a_worker_killed_on_a_two_node_cluster_loses_and_duplicates_nothing(model, tmp_path):
    folder = make_dataset(tmp_path / "many", n_patients=50, images_per_patient=2, layout="flat")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CLUSTER), str(folder), str(model), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "KILLED 1 ROWS 200 ERRORS 0" in proc.stdout, proc.stdout[-2000:]
    rows = read(out / "predictions.csv")
    assert len(rows) == 200 and rows["path"].is_unique and (rows["error"] == "").all()
    expected = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpeg"))
    assert sorted(rows["path"]) == expected


def test_the_local_engine_and_an_inference_install_never_import_ray() -> None:
    code = (
        "import sys, cxr.app.infer, cxr.infer.ray_engine, cxr.infer.score\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]


@pytest.mark.slow
def test_evaluate_on_the_ray_engine_gives_the_local_metrics_and_exit_code(
    ray_instance, hostile_folder, model, tmp_path
):
    from cxr.app.evaluate import evaluate

    codes, metrics = {}, {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        result = CliRunner().invoke(
            evaluate,
            [
                "--model",
                str(model),
                "--data",
                str(hostile_folder),
                "--out",
                str(out),
                "--history",
                str(tmp_path / f"{engine}.csv"),
                "--n-boot",
                "10",
                "-q",
                "--engine",
                engine,
            ],
        )
        codes[engine] = result.exit_code
        metrics[engine] = json.loads((out / "metrics.json").read_text())["models"]
    assert codes["local"] == codes["ray"] == 4, codes  # gate passed (no baseline), some files failed
    local, remote = next(iter(metrics["local"].values())), next(iter(metrics["ray"].values()))
    for key in ("n_rows", "n_scored", "n_errors", "at_model_threshold", "threshold_table"):
        assert local[key] == remote[key], key


@pytest.mark.slow  # over 5 s on 2 cores: starts a Ray instance (5 s)
def test_a_model_output_that_is_not_a_probability_is_a_usage_error_on_ray(
    ray_instance, hostile_folder, tmp_path
):
    """As on the local engine (exit 2, 'not a probability'), not 'Ray run failed' (exit 69)."""
    import onnx
    from onnx import helper

    broken = make_tiny_model(tmp_path / "broken.onnx")
    proto = onnx.load(str(broken))
    proto.graph.node.remove(next(n for n in proto.graph.node if n.op_type == "Sigmoid"))
    proto.graph.node.append(
        helper.make_node("ReduceMean", ["x"], ["probability"], axes=[1, 2, 3], keepdims=0)
    )
    onnx.save(proto, str(broken))
    code, output = run_infer(
        str(hostile_folder),
        "--model",
        str(broken),
        "--out",
        str(tmp_path / "o"),
        "--engine",
        "ray",
        "--ray-address",
        ray_instance,
    )
    assert code == 2 and "not a probability" in output, output


def test_an_unreachable_cluster_is_one_line_and_exit_69(hostile_folder, model, tmp_path):
    code, output = run_infer(
        str(hostile_folder),
        "--model",
        str(model),
        "--out",
        str(tmp_path / "o"),
        "--engine",
        "ray",
        "--ray-address",
        "127.0.0.1:1",
        "--ray-timeout",
        "5",
    )
    assert code == 69 and "cannot reach the Ray cluster at 127.0.0.1:1" in output, output


@pytest.mark.slow
def test_json_logs_on_ray_hold_only_json_lines(hostile_folder, model, tmp_path):
    """Ray's native log lines (its C++ core worker writes to the process's stderr) become JSON events
    under --log-format json, like every line cxr writes."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr.app.cli",
            "infer",
            str(hostile_folder),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "o"),
            "--engine",
            "ray",
            "--log-format",
            "json",
            "-q",
            "--no-report",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]  # three files cannot be read
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    assert {"scored", "errors"} <= {e["event"] for e in events}
