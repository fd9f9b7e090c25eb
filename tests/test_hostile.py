"""Hostile inputs, concurrent runs and cron: each test is one attack and what must happen.

A user's mistake is one line and exit 2; a bad file is one error row; nothing is mixed,
nothing passes silently, and a crash is never reported as a verdict.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from cxr.app.cli import cxr
from cxr.app.infer import infer
from cxr.artifacts import Predictions, escape_path, unescape_path
from tests.onnx_fixtures import make_tiny_model
from tests.synthetic import make_dataset, make_gray_class_folders

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_gray_class_folders(
        tmp_path / "in", {"NORMAL": 40, "PNEUMONIA": 140}, sigma=10, count=6, shape=(40, 40), name="img{i}.png"
    )


def run_infer(folder: Path, model: Path, out: Path, *extra: str):
    return CliRunner().invoke(
        infer, [str(folder), "--model", str(model), "--out", str(out), "-q", "--workers", "0", "--n-boot", "20", *extra]
    )


def rows_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False, encoding="utf-8")


def kill_after(out: Path, n_rows: int, cut: int | None = None) -> None:
    """Turn a finished run back into one killed after ``n_rows`` rows (the next row cut at ``cut`` chars)."""
    settings = Predictions.read_settings(out / "predictions.csv")
    rows = [json.dumps(r, ensure_ascii=True) for r in rows_of(out).to_dict("records")]
    text = "\n".join([json.dumps({"settings": settings}), *rows[:n_rows]]) + "\n"
    if cut is not None and n_rows < len(rows):
        text += rows[n_rows][:cut]
    Predictions.partial_path(out / "predictions.csv").write_text(text)
    (out / "predictions.csv").unlink()


# 1. a file name that is not UTF-8 -------------------------------------------------------------------


def test_attack_non_utf8_file_name_is_scored_and_written_reversibly(
    tmp_path: Path, folder: Path, tiny_model: Path
) -> None:
    raw = os.fsencode(folder / "NORMAL") + b"/IM-0500-\xe9.png"
    Image.fromarray(np.full((40, 40), 40, np.uint8)).save(os.fsdecode(raw))
    out = tmp_path / "out"
    result = run_infer(folder, tiny_model, out)
    assert result.exit_code == 0, result.output
    paths = list(rows_of(out)["path"])
    assert "NORMAL/IM-0500-\\xe9.png" in paths
    assert os.fsencode(folder / unescape_path("NORMAL/IM-0500-\\xe9.png")) == raw
    kill_after(out, 3)
    assert run_infer(folder, tiny_model, out, "--resume").exit_code == 0
    assert list(rows_of(out)["path"]) == paths


def test_attack_non_utf8_name_in_data_prepare(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_patients=6, images_per_patient=1)
    name = next((data / "train" / "NORMAL").iterdir())
    os.rename(name, os.fsencode(name.parent) + b"/IM-0099-\xff-0001.jpeg")
    result = CliRunner().invoke(
        cxr, ["data", "prepare", "--source", str(data), "--out", str(tmp_path / "s"), "--no-shortcut-check"]
    )
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(tmp_path / "s" / "manifest.csv", dtype=str)
    assert "train/NORMAL/IM-0099-\\xff-0001.jpeg" in set(manifest["path"])


# 2. --resume with other settings --------------------------------------------------------------------


@pytest.mark.parametrize("change", [["--tta"], ["--labels", "LABELS"]])
def test_attack_resume_with_other_settings_is_refused(
    tmp_path: Path, folder: Path, tiny_model: Path, change: list[str]
) -> None:
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 0
    kill_after(out, 4)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nNORMAL/img0.png,PNEUMONIA\n")
    result = run_infer(folder, tiny_model, out, "--resume", *[str(labels) if c == "LABELS" else c for c in change])
    assert result.exit_code == 2 and "other settings" in result.output
    assert ("tta" if change == ["--tta"] else "labels_sha256") in result.output


def test_attack_resume_with_another_model_is_refused(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 0
    kill_after(out, 4)
    other = make_tiny_model(tmp_path / "other.onnx", centre=90.0)
    result = run_infer(folder, other, out, "--resume")
    assert result.exit_code == 2 and "model_sha256" in result.output


def test_attack_resume_on_a_finished_run_scores_nothing(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 0
    before = (out / "predictions.csv").read_bytes()
    result = CliRunner().invoke(
        infer,
        [
            str(folder),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "--resume",
            "--workers",
            "0",
            "--no-report",
            "--n-boot",
            "20",
        ],
    )
    assert result.exit_code == 0 and "already complete" in result.output
    assert (out / "predictions.csv").read_bytes() == before


# 3. evaluate must never call its own crash a regression ---------------------------------------------


def _baseline(tmp_path: Path, metrics: dict) -> Path:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"models": {"m": {"at_model_threshold": {"metrics": metrics}}}}))
    return path


@pytest.mark.parametrize(
    "metrics", [{"recall": 0.9}, {"roc_auc": None, "recall": 0.9}, {"roc_auc": "high", "recall": 0.9}]
)
def test_attack_baseline_with_missing_null_or_string_metric(
    tmp_path: Path, folder: Path, tiny_model: Path, metrics: dict
) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(folder),
            "--baseline",
            str(_baseline(tmp_path, metrics)),
            "--out",
            str(out),
            "--history",
            str(tmp_path / "h.csv"),
            "-q",
        ],
    )
    assert result.exit_code == 2 and "roc_auc" in result.output
    assert not (out / "predictions.csv").exists()  # refused before scoring


def test_attack_baseline_that_is_not_json_is_refused_before_scoring(
    tmp_path: Path, folder: Path, tiny_model: Path
) -> None:
    bad = tmp_path / "baseline.json"
    bad.write_text("{not json")
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(folder),
            "--baseline",
            str(bad),
            "--out",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 2 and not (out / "predictions.csv").exists()


def test_attack_corrupt_history_is_refused_before_scoring(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    history = tmp_path / "h.csv"
    history.write_text('a,b\n"unterminated,1\n')
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(folder),
            "--history",
            str(history),
            "--out",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 2 and "history" in result.output and not (out / "metrics.json").exists()


def test_attack_a_bug_exits_70_not_1(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    code = (
        "import sys\nimport cxr.reports.evaluate as e\n"
        "def boom(*a, **k):\n    raise KeyError('planted bug')\n"
        "e.finish_evaluation = boom\nfrom cxr.app.cli import main\n"
        "sys.argv = ['cxr', 'evaluate', '--model', sys.argv[1], '--data', sys.argv[2], '--out', sys.argv[3],"
        " '--history', sys.argv[4], '-q', '--workers', '0', '--n-boot', '20']\nmain()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tiny_model), str(folder), str(tmp_path / "o"), str(tmp_path / "h.csv")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 70, proc.stderr
    assert "internal error" in proc.stderr and "Traceback" not in proc.stderr


# 4. two runs into one --out -------------------------------------------------------------------------


def test_attack_second_run_into_a_locked_out_folder(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    from filelock import FileLock

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / ".cxr.lock")):
        result = run_infer(folder, tiny_model, out)
    assert result.exit_code == 2 and "another cxr run" in result.output
    assert run_infer(folder, tiny_model, out).exit_code == 0  # released: the next run goes ahead


# 5. model metadata is validated, outputs are checked ------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        {"threshold": "abc"},
        {"input_size": "abc"},
        {"classes": ["PNEUMONIA"]},
        {"threshold": float("nan")},
        {"threshold": 2},
        {"classes": "PNEU"},
        {"resize_rule": "crop-center"},
        {"classes": ["A", "A"]},
        {"positive_class": "NORMAL"},
    ],
)
def test_attack_bad_model_metadata_is_a_usage_error(tmp_path: Path, folder: Path, metadata: dict) -> None:
    model = make_tiny_model(tmp_path / "bad.onnx", metadata=metadata)
    result = run_infer(folder, model, tmp_path / "out")
    assert result.exit_code == 2 and "bad cxr metadata" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_attack_foreign_graph_with_copied_metadata(tmp_path: Path, folder: Path) -> None:
    model = make_tiny_model(tmp_path / "foreign.onnx", scale=0.0, centre=0.0)  # sigmoid(0) = 0.5: fine
    import onnx
    from onnx import helper

    proto = onnx.load(str(model))
    sigmoid = next(n for n in proto.graph.node if n.op_type == "Sigmoid")
    proto.graph.node.remove(sigmoid)
    proto.graph.node.append(helper.make_node("Add", ["z", "centre"], ["raw"]))
    proto.graph.node.append(helper.make_node("ReduceMean", ["x"], ["probability_mean"], axes=[1, 2, 3], keepdims=0))
    proto.graph.node.append(helper.make_node("Identity", ["probability_mean"], ["probability"]))
    onnx.save(proto, str(model))
    result = run_infer(folder, model, tmp_path / "out")
    assert result.exit_code == 2 and "not a probability" in result.output


# 6. the output folder inside the scored folder ------------------------------------------------------


def test_attack_out_folder_inside_the_scored_folder(folder: Path, tiny_model: Path) -> None:
    out = folder / "results"
    assert run_infer(folder, tiny_model, out).exit_code == 0
    first = rows_of(out)
    assert run_infer(folder, tiny_model, out).exit_code == 0  # its report PNGs are not scored
    assert list(rows_of(out)["path"]) == list(first["path"]) and not any(
        p.startswith("results/") for p in first["path"]
    )


# 7. resume from any truncation, with hostile names (property-based) ---------------------------------

NAME_PARTS = ["a", "é", ",", '"', "'", "\n", " ", "\\", "x", "测", "\udce9", "#", ";", "%"]


def _write_named_images(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        level = 40 if i % 2 else 140
        label = "NORMAL" if i % 2 else "PNEUMONIA"
        (folder / label).mkdir(parents=True, exist_ok=True)
        path = os.fsencode(folder / label) + b"/" + os.fsencode(f"{name}-{i}.png")
        Image.fromarray(np.full((16, 16), level, np.uint8)).save(os.fsdecode(path))


@pytest.fixture(scope="module")
def model_16(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "m.onnx", size=16)


def test_property_resume_after_any_cut_gives_one_row_per_file(tmp_path_factory, model_16: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import score_folder

    model = OnnxClassifier(model_16, device="cpu")

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        names=st.lists(
            st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=6).map("".join), min_size=1, max_size=6
        ),
        cut=st.floats(0.0, 1.0),
    )
    def check(names: list[str], cut: float) -> None:
        root = tmp_path_factory.mktemp("prop")
        _write_named_images(root / "in", names)
        out = root / "out" / "predictions.csv"
        full = score_folder(root / "in", model, out, workers=0).predictions
        partial = Predictions.partial_path(out)
        lines = [json.dumps({"settings": Predictions.read_settings(out)})] + [
            json.dumps(r) for r in full.to_dict("records")
        ]
        text = "\n".join(lines) + "\n"
        partial.write_text(text[: int(len(text) * cut)])
        out.unlink()
        resumed = score_folder(root / "in", model, out, workers=0, resume=True).predictions
        assert len(resumed) == len(names) and resumed["path"].is_unique
        assert resumed.equals(full)
        assert pd.read_csv(out, dtype=str, keep_default_na=False).equals(full)

    check()


@pytest.mark.parametrize("text", ["a,b\\c", "x\\xe9y", "plain/name.png", "tr\\\\xail\\"])
def test_escaped_paths_round_trip(text: str) -> None:
    assert escape_path(unescape_path(text)) == text or "\\" in text


def test_property_escape_round_trips_any_bytes() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    @given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\x00" not in b))
    def check(raw: bytes) -> None:
        text = escape_path(os.fsdecode(raw))
        text.encode("utf-8")  # always fits a UTF-8 CSV
        assert os.fsencode(unescape_path(text)) == raw

    check()


# 8. the gate cannot be switched off silently --------------------------------------------------------


@pytest.mark.parametrize("spec", ["", " , ", "auc=nan", "auc=-1", "auc=inf"])
def test_attack_max_drop_that_gates_nothing(tmp_path: Path, folder: Path, tiny_model: Path, spec: str) -> None:
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(folder),
            "--max-drop",
            spec,
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
    )
    assert result.exit_code == 2, result.output


# 9. the smaller ones --------------------------------------------------------------------------------


def test_attack_too_few_patients_for_a_grouped_split(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n_patients=3, images_per_patient=2)
    result = CliRunner().invoke(cxr, ["data", "prepare", "--source", str(data), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "at least 5 patients per class" in result.output


def test_attack_explain_two_images_with_one_name() -> None:
    from cxr.app.explain import _unique_name

    used: set[str] = set()
    assert [_unique_name(Path(p), used) for p in ("a/x.jpeg", "b/x.jpeg", "c/x.png")] == [
        "x_gradcam.png",
        "x-2_gradcam.png",
        "x-3_gradcam.png",
    ]


def test_attack_report_with_a_wrong_val_preds_csv(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 0
    wrong = tmp_path / "val.csv"
    wrong.write_text("a,b\n1,2\n")
    result = CliRunner().invoke(
        cxr,
        ["report", "--preds", str(out / "predictions.csv"), "--val-preds", str(wrong), "--out", str(tmp_path / "r")],
    )
    assert result.exit_code == 2 and "val_predictions" in result.output


def test_attack_out_under_a_file(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_infer(folder, tiny_model, blocker / "out")
    assert result.exit_code == 2 and "not writable" in result.output
    assert run_infer(folder, tiny_model, blocker).exit_code == 2


def test_attack_broken_symlink_and_symlink_loop_get_rows(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    (folder / "NORMAL" / "gone.png").symlink_to(folder / "nowhere.png")
    (folder / "NORMAL" / "loop.png").symlink_to(folder / "NORMAL" / "loop.png")
    out = tmp_path / "out"
    result = run_infer(folder, tiny_model, out)
    assert result.exit_code == 1
    errors = rows_of(out).set_index("path")["error"]
    assert errors["NORMAL/gone.png"] == "broken symbolic link" and errors["NORMAL/loop.png"] == "symbolic link loop"


def test_attack_multi_page_tiff(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    pages = [Image.fromarray(np.full((40, 40), v, np.uint8)) for v in (40, 140, 90)]
    pages[0].save(folder / "NORMAL" / "stack.tif", save_all=True, append_images=pages[1:])
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 1
    assert "multi-page TIFF (3 pages)" in rows_of(out).set_index("path").loc["NORMAL/stack.tif", "error"]


def test_attack_blank_image_is_flagged(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "NORMAL" / "blank.png")
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 0
    rows = rows_of(out).set_index("path")
    assert rows.loc["NORMAL/blank.png", "qc"].startswith("uniform image")
    assert rows.loc["NORMAL/blank.png", "p_PNEUMONIA"] != ""  # scored, and flagged
    # noisy real-like images are not uniform (these 40 px fixtures are flagged as tiny, which they are)
    assert not rows.drop("NORMAL/blank.png")["qc"].str.contains("uniform").any()


def test_attack_workers_far_beyond_the_cpus(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import effective_workers, score_folder

    assert effective_workers(256) == (os.cpu_count() or 1) and effective_workers(0) == 0
    result = score_folder(folder, OnnxClassifier(tiny_model, device="cpu"), tmp_path / "p.csv", workers=256)
    assert result.n_errors == 0 and result.n_files == 12


def test_attack_probabilities_keep_enough_digits_to_rank(tmp_path: Path, folder: Path) -> None:
    model = make_tiny_model(tmp_path / "steep.onnx", scale=0.1, centre=30.0)  # PNEUMONIA: p = 1 - ~2e-5
    out = tmp_path / "out"
    assert run_infer(folder, model, out).exit_code == 0
    rows = rows_of(out)
    p = rows.loc[rows["true_label"] == "PNEUMONIA", "p_PNEUMONIA"]
    assert p.nunique() == len(p)  # every image keeps its own rank
    assert p.astype(float).round(6).nunique() < len(p)  # which 6 decimals would have lost


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_attack_kill_9_leaves_no_decode_worker(tmp_path: Path, tiny_model: Path) -> None:
    folder = make_gray_class_folders(
        tmp_path / "many", {"NORMAL": 40, "PNEUMONIA": 140}, sigma=10, count=400, shape=(600, 600), name="img{i}.png"
    )
    stderr = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 - held by the killed process and its children
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cxr.app.cli import infer_main; infer_main()",
            str(folder),
            "--model",
            str(tiny_model),
            "--out",
            str(tmp_path / "o"),
            "-q",
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(_descendants(proc.pid)) < 3:  # forkserver + 2 workers
        time.sleep(0.2)
    workers = _descendants(proc.pid)
    assert len(workers) >= 3, "the decode pool never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)]
    stderr.close()
    assert "leaked semaphore" not in (tmp_path / "stderr.txt").read_text()  # no resource_tracker warning


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# observability for scheduled jobs -------------------------------------------------------------------


def test_prometheus_file_parses_and_marks_success_only_on_success(
    tmp_path: Path, folder: Path, tiny_model: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics_file = tmp_path / "cxr.prom"
    base_args = [
        "evaluate",
        "--model",
        str(tiny_model),
        "--data",
        str(folder),
        "--history",
        str(tmp_path / "h.csv"),
        "--metrics-file",
        str(metrics_file),
        "--n-boot",
        "20",
        "-q",
        "--workers",
        "0",
    ]
    first = CliRunner().invoke(cxr, [*base_args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "no baseline: nothing compared" in first.output and "PASSED" not in first.output
    families = {f.name: f for f in text_string_to_metric_families(metrics_file.read_text())}
    assert families["cxr_evaluate_compared"].samples[0].value == 0
    assert families["cxr_evaluate_passed"].samples[0].value == 0
    assert "cxr_evaluate_last_success_timestamp_seconds" not in families  # nothing was compared
    same = CliRunner().invoke(
        cxr, [*base_args, "--out", str(tmp_path / "b"), "--baseline", str(tmp_path / "a" / "metrics.json")]
    )
    assert same.exit_code == 0 and "PASSED" in same.output, same.output
    families = {f.name: f for f in text_string_to_metric_families(metrics_file.read_text())}
    for name in (
        "cxr_evaluate_verdict",
        "cxr_evaluate_metric",
        "cxr_evaluate_images_scored",
        "cxr_evaluate_images_failed",
        "cxr_evaluate_duration_seconds",
        "cxr_evaluate_last_success_timestamp_seconds",
    ):
        assert name in families, name
    success = families["cxr_evaluate_last_success_timestamp_seconds"].samples[0].value
    assert abs(success - time.time()) < 120
    # a regression: verdict changes, the last success stays what it was
    baseline = _baseline(tmp_path, {"roc_auc": 2.0, "recall": 1.0})
    second = CliRunner().invoke(cxr, [*base_args, "--out", str(tmp_path / "c"), "--baseline", str(baseline)])
    assert second.exit_code == 1, second.output
    families = {f.name: f for f in text_string_to_metric_families(metrics_file.read_text())}
    verdicts = {s.labels["verdict"]: s.value for s in families["cxr_evaluate_verdict"].samples}
    assert verdicts["regression"] == 1 and verdicts["pass"] == 0
    assert families["cxr_evaluate_last_success_timestamp_seconds"].samples[0].value == success


def test_partly_failed_scoring_has_its_own_evaluate_exit_code(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    (folder / "NORMAL" / "broken.png").write_text("not a png")
    result = CliRunner().invoke(
        cxr,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "o"),
            "--history",
            str(tmp_path / "h.csv"),
            "-q",
            "--workers",
            "0",
            "--n-boot",
            "20",
        ],
    )
    assert result.exit_code == 4, result.output


def test_json_log_format_is_one_object_per_line(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cxr.app.cli import infer_main; infer_main()",
            str(folder),
            "--model",
            str(tiny_model),
            "--out",
            str(tmp_path / "o"),
            "--log-format",
            "json",
            "--workers",
            "0",
            "--n-boot",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert {"model", "scored"} <= {e["event"] for e in events}
    assert all({"time", "event", "message"} <= set(e) for e in events)


@pytest.mark.slow
def test_resume_on_100k_files_gives_one_row_per_file(tmp_path: Path, tiny_model: Path) -> None:
    """Listing, resume and finishing are linear: 100,000 (empty, so quickly failing) files, half of
    them done before a kill; the resumed run scores the other half and writes exactly one row each."""
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import GroundTruth, score_folder, scoring_settings

    n = 100_000
    root = tmp_path / "many"
    for i in range(n):
        if i % 1000 == 0:
            (root / f"d{i // 1000:03d}").mkdir(parents=True)
        (root / f"d{i // 1000:03d}" / f"f{i:06d}.png").touch()
    model = OnnxClassifier(tiny_model, device="cpu")
    out = tmp_path / "out" / "predictions.csv"
    out.parent.mkdir()
    rels = [f"d{i // 1000:03d}/f{i:06d}.png" for i in range(n)]
    done = [
        Predictions.row(
            rel,
            None,
            model.info.classes,
            model.info.threshold,
            error="done before the kill",
            model=model.path.name,
            model_sha256=model.info.sha256,
        )
        for rel in rels[::2]
    ]
    Predictions.start_partial(Predictions.partial_path(out), scoring_settings(model, False, GroundTruth(), None), done)
    result = score_folder(root, model, out, resume=True, workers=0, batch_size=1024)
    assert result.n_files == n and result.n_scored_now == n // 2
    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(rows["path"]) == rels
    assert (rows["error"].iloc[::2] == "done before the kill").all()
    assert (rows["error"].iloc[1::2] != "done before the kill").all() and (rows["error"] != "").all()


def test_attack_full_disk_is_one_line_and_exit_2(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    """A disk that fills while writing (ENOSPC from the atomic writer) is the environment, not a bug."""
    code = (
        "import errno, sys\nimport cxr.artifacts.predictions as p\n"
        "def full(*a, **k):\n    raise OSError(errno.ENOSPC, 'No space left on device', 'predictions.csv')\n"
        "p.Predictions.write_csv = staticmethod(full)\nfrom cxr.app.cli import infer_main\n"
        "sys.argv = ['cxr-infer', sys.argv[1], '--model', sys.argv[2], '--out', sys.argv[3], '-q', '--workers', '0']\n"
        "infer_main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(tiny_model), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "Error: No space left on device (predictions.csv)"
    assert Predictions.partial_path(tmp_path / "o" / "predictions.csv").is_file()  # nothing lost: --resume goes on
