"""Hostile conditions for the command line layer: a bug, a full disk, log lines for machines, two
images with one name. Each test is one attack and what must happen: a bug exits 70 (never 1, a
verdict), the environment is one line and exit 2, no traceback reaches the user.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.artifacts import Predictions
from tests.attacks import gray_folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return gray_folder(tmp_path)


# exit codes ---------------------------------------------------------------------------------------


# over 5 s on 2 cores: a fresh interpreter and an evaluation (test_cli.py checks exit 70 in process)
@pytest.mark.slow
def test_attack_a_bug_exits_70_not_1(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    code = (
        "import sys\nimport cxr.reports.evaluate as e\n"
        "def boom(*a, **k):\n    raise KeyError('planted bug')\n"
        "e.finish_evaluation = boom\nfrom cxr.app.cli import main\n"
        "sys.argv = ['cxr', 'evaluate', '--model', sys.argv[1], '--data', sys.argv[2], '--out', sys.argv[3],"
        " '--history', sys.argv[4], '-q', '--workers', '0', '--n-boot', '20']\nmain()\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tiny_model),
            str(folder),
            str(tmp_path / "o"),
            str(tmp_path / "h.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 70, proc.stderr
    assert "internal error" in proc.stderr and "Traceback" not in proc.stderr


def test_attack_full_disk_is_one_line_and_exit_2(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    """A disk that fills while writing (ENOSPC from the atomic writer) is the environment, not a bug."""
    code = (
        "import errno, sys\nimport cxr.artifacts.predictions as p\n"
        "def full(*a, **k):\n    raise OSError(errno.ENOSPC, 'No space left on device', 'predictions.csv')\n"
        "p.Predictions.write_csv = staticmethod(full)\nfrom cxr.app.cli import infer_main\n"
        "sys.argv = ['cxr-infer', sys.argv[1], '--model', sys.argv[2], '--out', sys.argv[3], "
        "'-q', '--workers', '0']\n"
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
    assert Predictions.partial_path(
        tmp_path / "o" / "predictions.csv"
    ).is_file()  # nothing lost: --resume goes on


# logs for machines --------------------------------------------------------------------------------


@pytest.mark.slow  # over 5 s on 2 cores: a fresh interpreter scoring with the report
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


# names --------------------------------------------------------------------------------------------


def test_attack_explain_two_images_with_one_name() -> None:
    from cxr.app.explain import _unique_name

    used: set[str] = set()
    assert [_unique_name(Path(p), used) for p in ("a/x.jpeg", "b/x.jpeg", "c/x.png")] == [
        "x_gradcam.png",
        "x-2_gradcam.png",
        "x-3_gradcam.png",
    ]
