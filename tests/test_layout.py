from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from cxr.cli import cxr


def test_stage_modules_live_under_the_cxr_namespace(tmp_path: Path) -> None:
    """Outside the repo, only `cxr` is importable: no bare train/export/infer/reports."""
    code = ("import importlib.util as u, sys\n"
            "bare = [n for n in ('train', 'export', 'infer', 'reports') if u.find_spec(n) is not None]\n"
            "import cxr.train, cxr.export, cxr.infer, cxr.reports\n"
            "print(bare); sys.exit(1 if bare else 0)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cxr_help_lists_the_stages() -> None:
    result = CliRunner().invoke(cxr, ["--help"])
    assert result.exit_code == 0
    for stage in ("data", "train", "export", "infer", "report", "evaluate", "weights"):
        assert stage in result.output


def test_core_modules_do_not_import_click() -> None:
    root = Path(__file__).resolve().parents[1]
    for folder in ("cxr", "train", "export", "infer", "reports"):
        for path in (root / folder).glob("*.py"):
            if path.name in ("cli.py", "options.py", "bench.py"):
                continue
            assert "import click" not in path.read_text(), path
