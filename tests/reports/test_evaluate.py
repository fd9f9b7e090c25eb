"""`cxr evaluate` as a scheduled job: the baseline it compares with, what it checks before scoring,
and how its gate specifications are read (app/evaluate.py, reports/evaluate.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cxr.app.evaluate import evaluate
from tests.onnx_fixtures import make_tiny_model
from tests.synthetic import make_gray_class_folders


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return make_gray_class_folders(
        tmp_path / "data",
        {"NORMAL": 60, "PNEUMONIA": 110},
        sigma=25,
        count=8,
        shape=(40, 40),
        name="person{i}_x_{i}.png",
    )


def _run(*args: str):
    return CliRunner().invoke(evaluate, [*args, "--n-boot", "20", "-q", "--workers", "0"])


def _two_model_baseline(tmp_path: Path, sha_first: str, sha_second: str) -> Path:
    """A metrics.json with two models (as `make results` writes), the first with impossible values."""

    def entry(sha: str, auc: float) -> dict:
        return {"model_sha256": sha, "at_model_threshold": {"metrics": {"roc_auc": auc, "recall": 0.5}}}

    path = tmp_path / "several.json"
    path.write_text(
        json.dumps({"models": {"first": entry(sha_first, 2.0), "second": entry(sha_second, 0.0)}})
    )
    return path


@pytest.mark.slow  # over 5 s on 2 cores: two evaluations, each with its report
def test_a_baseline_of_several_models_is_read_for_this_model(tmp_path: Path, folder: Path) -> None:
    from cxr.files import sha256_file

    model = make_tiny_model(tmp_path / "m.onnx")
    baseline = _two_model_baseline(tmp_path, "0" * 64, sha256_file(model))
    common = [
        "--model",
        str(model),
        "--data",
        str(folder),
        "--history",
        str(tmp_path / "h.csv"),
        "--baseline",
        str(baseline),
    ]
    mine = _run(*common, "--out", str(tmp_path / "a"))
    assert mine.exit_code == 0 and "PASSED" in mine.output, mine.output  # compared with 'second', not 'first'
    named = _run(*common, "--out", str(tmp_path / "b"), "--baseline-model", "first")
    assert named.exit_code == 1, named.output
    other = _two_model_baseline(tmp_path, "0" * 64, "1" * 64)
    refused = _run(
        "--model",
        str(model),
        "--data",
        str(folder),
        "--history",
        str(tmp_path / "h.csv"),
        "--baseline",
        str(other),
        "--out",
        str(tmp_path / "c"),
    )
    assert refused.exit_code == 2 and "--baseline-model" in refused.output
    assert not (tmp_path / "c").exists()  # refused before anything was scored


@pytest.mark.slow  # over 5 s on 2 cores: two evaluations, each with its report
def test_out_inside_the_data_does_not_change_the_data_hash(tmp_path: Path, folder: Path) -> None:
    model = make_tiny_model(tmp_path / "m.onnx")
    common = ["--model", str(model), "--data", str(folder), "--history", str(tmp_path / "h.csv")]
    first = _run(*common, "--out", str(folder / "eval1"))
    assert first.exit_code == 0, first.output
    second = _run(
        *common, "--out", str(folder / "eval2"), "--baseline", str(folder / "eval1" / "metrics.json")
    )
    assert second.exit_code == 0 and "data changed" not in second.output, second.output


@pytest.mark.parametrize("option", ["--history", "--metrics-file"])
@pytest.mark.parametrize("attack", ["missing folder", "read-only folder"])
def test_bad_output_files_are_refused_before_scoring(
    tmp_path: Path, folder: Path, option: str, attack: str
) -> None:
    if attack == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    model = make_tiny_model(tmp_path / "m.onnx")
    place = tmp_path / ("nowhere" if attack == "missing folder" else "locked")
    if attack == "read-only folder":
        place.mkdir()
        place.chmod(0o500)
    paths = {"--history": str(tmp_path / "h.csv"), "--metrics-file": None}
    paths[option] = str(place / "file")
    args = [
        "--model",
        str(model),
        "--data",
        str(folder),
        "--out",
        str(tmp_path / "o"),
        "--history",
        paths["--history"],
    ] + (["--metrics-file", paths["--metrics-file"]] if paths["--metrics-file"] else [])
    result = _run(*args)
    assert result.exit_code == 2 and option in result.output, result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "h.csv").exists()


def test_a_garbage_history_file_is_refused(tmp_path: Path, folder: Path) -> None:
    history = tmp_path / "h.csv"
    history.write_text("a,b\n1,2\n")
    result = _run(
        "--model",
        str(make_tiny_model(tmp_path / "m.onnx")),
        "--data",
        str(folder),
        "--out",
        str(tmp_path / "o"),
        "--history",
        str(history),
    )
    assert result.exit_code == 2 and "not a cxr evaluation history" in result.output


@pytest.mark.parametrize(
    "spec,message", [(",", "gates nothing"), ("auc=0.01,auc=1", "twice"), ("auc=0.01,roc_auc=0.5", "twice")]
)
def test_gate_specs_that_gate_nothing_or_twice_are_refused(
    tmp_path: Path, folder: Path, spec: str, message: str
) -> None:
    result = _run(
        "--model",
        str(make_tiny_model(tmp_path / "m.onnx")),
        "--data",
        str(folder),
        "--out",
        str(tmp_path / "o"),
        "--history",
        str(tmp_path / "h.csv"),
        "--max-drop",
        spec,
    )
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_partial_evaluation_does_not_say_passed(tmp_path: Path, folder: Path) -> None:
    (folder / "NORMAL" / "broken.png").write_text("not a png")
    model = make_tiny_model(tmp_path / "m.onnx")
    first = _run(
        "--model",
        str(model),
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "a"),
        "--history",
        str(tmp_path / "h.csv"),
        "--metrics-file",
        str(tmp_path / "m.prom"),
    )
    assert first.exit_code == 4 and "PASSED" not in first.output and "PARTIAL" in first.output
    assert "cxr_evaluate_passed 0.0" in (tmp_path / "m.prom").read_text()
    assert list(pd.read_csv(tmp_path / "h.csv")["verdict"]) == ["partial"]


@pytest.mark.slow  # over 5 s on 2 cores: a report and two more runs
def test_earlier_outputs_inside_the_data_are_not_scored_and_out_cannot_be_the_data(
    tmp_path: Path, folder: Path
) -> None:
    from cxr.app.infer import infer

    model = make_tiny_model(tmp_path / "m.onnx")
    n_images = len(list(folder.rglob("*.png")))
    first = CliRunner().invoke(
        infer,
        [
            str(folder),
            "--model",
            str(model),
            "--out",
            str(folder / "run1"),
            "-q",
            "--workers",
            "0",
            "--n-boot",
            "20",
        ],
    )
    assert first.exit_code == 0 and list((folder / "run1").glob("*.png")), first.output  # report figures
    second = CliRunner().invoke(
        infer,
        [
            str(folder),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "run2"),
            "-q",
            "--workers",
            "0",
            "--no-report",
        ],
    )
    assert second.exit_code == 0, second.output
    assert len(pd.read_csv(tmp_path / "run2" / "predictions.csv")) == n_images  # run1's figures skipped
    same = CliRunner().invoke(infer, [str(folder), "--model", str(model), "--out", str(folder), "-q"])
    assert same.exit_code == 2 and "is the scored folder itself" in same.output


LABEL_ATTACKS = {  # labels file content -> what the user is told
    "no path matches": ("path,label\nelsewhere/a.png,NORMAL\n", 2, "labels none of the"),
    "conflicting duplicates": (
        "path,label\nNORMAL/person0_x_0.png,NORMAL\nNORMAL/person0_x_0.png,PNEUMONIA\n",
        2,
        "two different labels",
    ),
    "some paths match": ("path,label\nNORMAL/person0_x_0.png,NORMAL\n", 0, "labels 1 of the"),
}


@pytest.mark.parametrize("attack", sorted(LABEL_ATTACKS))
def test_labels_files_that_do_not_fit_the_folder_are_said(tmp_path: Path, folder: Path, attack: str) -> None:
    from cxr.app.infer import infer

    text, code, message = LABEL_ATTACKS[attack]
    labels = tmp_path / "labels.csv"
    labels.write_text(text)
    result = CliRunner().invoke(
        infer,
        [
            str(folder),
            "--model",
            str(make_tiny_model(tmp_path / "m.onnx")),
            "--out",
            str(tmp_path / "o"),
            "--labels",
            str(labels),
            "-q",
            "--workers",
            "0",
            "--n-boot",
            "20",
        ],
    )
    assert result.exit_code == code and message in result.output, result.output


def test_resume_after_the_folder_changed_scores_what_is_new_and_drops_what_is_gone(
    tmp_path: Path, folder: Path
) -> None:
    """The attack: after a finished run, delete one file and add another (same count), --resume."""
    import shutil

    from cxr.app.infer import infer

    model = make_tiny_model(tmp_path / "m.onnx")
    args = [
        str(folder),
        "--model",
        str(model),
        "--out",
        str(tmp_path / "o"),
        "-q",
        "--workers",
        "0",
        "--no-report",
    ]
    assert CliRunner().invoke(infer, args).exit_code == 0
    first = pd.read_csv(tmp_path / "o" / "predictions.csv")
    gone = folder / first["path"][0]
    added = folder / "NORMAL" / "new_patient_x_0.png"
    shutil.copy(folder / first["path"][1], added)
    gone.unlink()
    again = CliRunner().invoke(infer, [*args, "--resume"])
    assert again.exit_code == 0 and "already complete" not in again.output, again.output
    rows = pd.read_csv(tmp_path / "o" / "predictions.csv")
    assert first["path"][0] not in set(rows["path"]) and "NORMAL/new_patient_x_0.png" in set(rows["path"])
    assert len(rows) == len(first)
    meta = json.loads((tmp_path / "o" / "predictions.meta.json").read_text())
    assert set(meta["file_stamps"]) == set(rows["path"])
    # a file changed in place (same name, other content) is scored again, the others kept
    Image = pytest.importorskip("PIL.Image")
    target = folder / rows["path"].iloc[-1]
    Image.new("L", (40, 40), 255).save(target)
    third = CliRunner().invoke(infer, [*args, "--resume"])
    assert third.exit_code == 0, third.output
    changed = pd.read_csv(tmp_path / "o" / "predictions.csv").set_index("path").loc[rows["path"].iloc[-1]]
    assert str(changed["qc"]).startswith("uniform image")
    finished = CliRunner().invoke(infer, [*args, "--resume"])
    assert "already complete" in finished.output


def _readme_cron_command() -> str:
    """The cron recipe of the README, as written (without its schedule and its mail fallback)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```cron", 1)[1].split("```", 1)[0].strip()
    line = block.split("cd /srv/cxr && ", 1)[1]
    return line.split(" || mail", 1)[0]


def _readme_baseline_command(model: Path, folder: Path, baseline: Path) -> str:
    """The README's one-time baseline step, as written, with its paths mapped to this test's files."""
    import shlex
    import sys

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Evaluate on a schedule", 1)[1].split("```cron", 1)[0]
    command = section.split("```bash", 1)[1].split("```", 1)[0].strip()
    mapping = {
        ".venv/bin/cxr": f"{shlex.quote(sys.executable)} -m cxr.app.cli",
        "models/model1.onnx": str(model),
        "/data/cxr/eval": str(folder),
        "results/eval_baseline.json": str(baseline),
        "evaluations/baseline": str(baseline.parent / "baseline_run"),
    }
    for old, new in mapping.items():
        assert old in command, old
        command = command.replace(old, new)
    return command + f" --history {shlex.quote(str(baseline.parent / 'h0.csv'))} --n-boot 20 --workers 0"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["passes", "baseline missing", "bad option"])
def test_the_readme_cron_recipe_writes_only_json_to_stderr(tmp_path: Path, folder: Path, case: str) -> None:
    """README's baseline step and cron line, run as written (paths mapped to this test's files): the
    baseline is made, and every stderr line of the cron run is a JSON object, for a passing run and
    for user errors alike."""
    import shlex
    import subprocess
    import sys

    model = make_tiny_model(tmp_path / "m.onnx")
    made = _readme_baseline_command(model, folder, tmp_path / "eval_baseline.json")
    baseline_run = subprocess.run(
        ["bash", "-c", made], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert baseline_run.returncode == 0, baseline_run.stderr[-2000:]
    assert "baseline written" in baseline_run.stdout + baseline_run.stderr
    command = _readme_cron_command()
    log = tmp_path / "evaluate.jsonl"
    mapping = {
        ".venv/bin/cxr": f"{shlex.quote(sys.executable)} -m cxr.app.cli",
        "models/model1.onnx": str(model),
        "/data/cxr/eval": str(folder),
        "results/eval_baseline.json": str(
            tmp_path / "eval_baseline.json" if case != "baseline missing" else tmp_path / "none.json"
        ),
        "/var/lib/node_exporter/textfile/cxr.prom": str(tmp_path / "cxr.prom"),
        "/var/log/cxr/evaluate.jsonl": str(log),
    }
    for old, new in mapping.items():
        assert old in command, old
        command = command.replace(old, new)
    if case == "bad option":
        command = command.replace("--max-drop", "--max-dorp")
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == {"passes": 0, "baseline missing": 2, "bad option": 2}[case], log.read_text()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    events = [json.loads(line) for line in lines]
    if case == "passes":
        assert events[-1]["event"] == "verdict" and events[-1]["verdict"] == "pass"
    else:
        assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 2


def test_write_baseline_is_refused_when_the_gate_fails(tmp_path: Path, folder: Path) -> None:
    """A failing evaluation never becomes the next baseline; report.md opens with the verdict."""
    model = make_tiny_model(tmp_path / "m.onnx")
    impossible = tmp_path / "impossible.json"
    impossible.write_text(
        json.dumps({"models": {"m": {"at_model_threshold": {"metrics": {"roc_auc": 2.0, "recall": 2.0}}}}})
    )
    out = tmp_path / "baseline.json"
    failed = _run(
        "--model",
        str(model),
        "--data",
        str(folder),
        "--history",
        str(tmp_path / "h.csv"),
        "--out",
        str(tmp_path / "e"),
        "--baseline",
        str(impossible),
        "--write-baseline",
        str(out),
    )
    assert failed.exit_code == 1 and not out.exists() and "baseline not written" in failed.output
    report_md = (tmp_path / "e" / "report.md").read_text()
    assert report_md.splitlines()[2].startswith("**Gate: FAILED")
    assert "What the gate compared" in report_md
    missing_folder = _run(
        "--model",
        str(model),
        "--data",
        str(folder),
        "--history",
        str(tmp_path / "h.csv"),
        "--out",
        str(tmp_path / "e2"),
        "--write-baseline",
        str(tmp_path / "no" / "b.json"),
    )
    assert missing_folder.exit_code == 2 and "--write-baseline" in missing_folder.output
    assert not (tmp_path / "e2").exists()


@pytest.mark.slow  # over 5 s on 2 cores: two evaluations, each with its report
def test_a_passing_gate_writes_the_next_baseline(tmp_path: Path, folder: Path) -> None:
    model = make_tiny_model(tmp_path / "m.onnx")
    common = ["--model", str(model), "--data", str(folder), "--history", str(tmp_path / "h.csv")]
    first = _run(*common, "--out", str(tmp_path / "a"), "--write-baseline", str(tmp_path / "b1.json"))
    assert first.exit_code == 0 and "baseline written" in first.output, first.output
    second = _run(
        *common,
        "--out",
        str(tmp_path / "b"),
        "--baseline",
        str(tmp_path / "b1.json"),
        "--write-baseline",
        str(tmp_path / "b2.json"),
    )
    assert second.exit_code == 0 and "PASSED" in second.output and (tmp_path / "b2.json").is_file(), (
        second.output
    )
    assert (tmp_path / "b" / "report.md").read_text().splitlines()[2].startswith("**Gate: PASSED")
    assert json.loads((tmp_path / "b2.json").read_text())["gate"]["verdict"] == "pass"
