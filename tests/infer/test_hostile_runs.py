"""Hostile runs of ``cxr-infer``: resumes with other settings, two runs into one folder, output
folders in odd places, kills. Each test is one attack and what must happen: nothing is mixed,
nothing is lost, a mistake is one line and exit 2.
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

from cxr.app.infer import infer
from cxr.artifacts import Predictions
from tests.attacks import gray_folder, kill_after, rows_of, run_infer
from tests.onnx_fixtures import make_tiny_model
from tests.synthetic import make_gray_class_folders


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return gray_folder(tmp_path)


# --resume with other settings ---------------------------------------------------------------------


@pytest.mark.parametrize("change", [["--tta"], ["--labels", "LABELS"]])
def test_attack_resume_with_other_settings_is_refused(
    tmp_path: Path, folder: Path, tiny_model: Path, change: list[str]
) -> None:
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 0
    kill_after(out, 4)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nNORMAL/img0.png,PNEUMONIA\n")
    result = run_infer(
        folder, tiny_model, out, "--resume", *[str(labels) if c == "LABELS" else c for c in change]
    )
    assert result.exit_code == 2 and "other settings" in result.output
    assert ("tta" if change == ["--tta"] else "labels_sha256") in result.output


def test_attack_resume_with_another_model_is_refused(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 0
    kill_after(out, 4)
    other = make_tiny_model(tmp_path / "other.onnx", centre=90.0)
    result = run_infer(folder, other, out, "--resume")
    assert result.exit_code == 2 and "model_sha256" in result.output


def test_attack_resume_on_a_finished_run_scores_nothing(
    tmp_path: Path, folder: Path, tiny_model: Path
) -> None:
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


# two runs into one --out --------------------------------------------------------------------------


def test_attack_second_run_into_a_locked_out_folder(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    from filelock import FileLock

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / ".cxr.lock")):
        result = run_infer(folder, tiny_model, out)
    assert result.exit_code == 2 and "another cxr run" in result.output
    assert run_infer(folder, tiny_model, out).exit_code == 0  # released: the next run goes ahead


# the output folder inside the scored folder, or under a file --------------------------------------


def test_attack_out_folder_inside_the_scored_folder(folder: Path, tiny_model: Path) -> None:
    out = folder / "results"
    assert run_infer(folder, tiny_model, out, report=True).exit_code == 0
    first = rows_of(out)
    assert run_infer(folder, tiny_model, out).exit_code == 0  # the first run's report PNGs are not scored
    assert list(rows_of(out)["path"]) == list(first["path"]) and not any(
        p.startswith("results/") for p in first["path"]
    )


def test_attack_out_under_a_file(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_infer(folder, tiny_model, blocker / "out")
    assert result.exit_code == 2 and "not writable" in result.output
    assert run_infer(folder, tiny_model, blocker).exit_code == 2


# resume from any truncation, with hostile names (property-based) ----------------------------------


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


@pytest.mark.slow
def test_resume_on_100k_files_gives_one_row_per_file(tmp_path: Path, tiny_model: Path) -> None:
    """Listing, resume and finishing are linear: 100,000 (empty, so quickly failing) files, half of
    them done before a kill; the resumed run scores the other half and writes exactly one row each."""
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import ScoringOptions, score_folder, scoring_settings

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
    Predictions.start_partial(Predictions.partial_path(out), scoring_settings(model, ScoringOptions()), done)
    result = score_folder(root, model, out, resume=True, workers=0, batch_size=1024)
    assert result.n_files == n and result.n_scored_now == n // 2
    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(rows["path"]) == rels
    assert (rows["error"].iloc[::2] == "done before the kill").all()
    assert (rows["error"].iloc[1::2] != "done before the kill").all() and (rows["error"] != "").all()


# workers and kills --------------------------------------------------------------------------------


def test_attack_workers_far_beyond_the_cpus(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import effective_workers, score_folder

    assert effective_workers(256) == (os.cpu_count() or 1) and effective_workers(0) == 0
    result = score_folder(folder, OnnxClassifier(tiny_model, device="cpu"), tmp_path / "p.csv", workers=256)
    assert result.n_errors == 0 and result.n_files == 12


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_attack_kill_9_leaves_no_decode_worker(tmp_path: Path, tiny_model: Path) -> None:
    folder = make_gray_class_folders(
        tmp_path / "many",
        {"NORMAL": 40, "PNEUMONIA": 140},
        sigma=10,
        count=400,
        shape=(600, 600),
        name="img{i}.png",
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
