"""The architecture, enforced from the source (AST, imports inside functions counted):

- a stage (train, export, infer, reports) imports only the core (``cxr.*`` outside the stages
  and the app layer, the artifacts included) and itself;
- infer never imports TensorFlow or Keras, directly or through the core modules it reaches;
- the core imports no stage, no app layer and no click; click lives in the app layer alone.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxr.app.cli import cxr

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("train", "export", "infer", "reports")
HEAVY = ("tensorflow", "keras", "tf2onnx", "jax", "torch")


def _package_of(path: Path) -> str:
    """The dotted module name of a source file."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in STAGES or parts[0] == "app":
        parts = ["cxr", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (functions, classes, conditionals)."""
    module = _package_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(
                f"{base}.{alias.name}" for alias in node.names
            )  # `from cxr import app` names a module
    return found


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def layer_of(module: str) -> str | None:
    """'core', 'app', a stage name, or None for third-party and the standard library."""
    parts = module.split(".")
    if parts[0] != "cxr":
        return None
    if len(parts) == 1:
        return "core"
    if parts[1] == "app":
        return "app"
    return parts[1] if parts[1] in STAGES else "core"


def _real_modules(names: set[str]) -> set[str]:
    """Drop ``from cxr.x import name`` entries that name an attribute, not a module."""
    known = {_package_of(p) for folder in ("cxr", "app", *STAGES) for p in sources(folder)}
    return {n for n in names if layer_of(n) is None or n in known}


def stage_offences(stage: str) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(stage)
        for name in sorted(_real_modules(imports_of(path)))
        if layer_of(name) not in (None, "core", stage)
    ]


def heavy_offences() -> list[str]:
    """TensorFlow/Keras imports anywhere in infer or in the core modules it reaches."""
    files = {_package_of(p): p for folder in ("cxr", "infer") for p in sources(folder)}
    seen, todo, offences = set(), [_package_of(p) for p in sources("infer")], []
    while todo:
        module = todo.pop()
        if module in seen or module not in files:
            continue
        seen.add(module)
        for name in _real_modules(imports_of(files[module])):
            if name.split(".")[0] in HEAVY:
                offences.append(f"{module} imports {name}")
            elif layer_of(name) in ("core", "infer"):
                todo.append(name)
    return offences


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_only_the_core_and_itself(stage: str) -> None:
    offences = stage_offences(stage)
    assert not offences, "\n".join(offences)


def test_the_core_imports_no_stage_no_app_and_no_click() -> None:
    offences = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources("cxr")
        for name in sorted(_real_modules(imports_of(path)))
        if layer_of(name) not in (None, "core") or name.split(".")[0] == "click"
    ]
    assert not offences, "\n".join(offences)


def test_click_lives_in_the_app_layer_alone() -> None:
    offences = [
        str(path.relative_to(ROOT))
        for folder in ("cxr", *STAGES)
        for path in sources(folder)
        if any(name.split(".")[0] == "click" for name in imports_of(path))
    ]
    assert not offences, offences


def test_infer_reaches_no_tensorflow_or_keras_through_any_import() -> None:
    offences = heavy_offences()
    assert not offences, "\n".join(offences)


def test_the_rules_catch_planted_violations() -> None:
    """A function-level import of another stage and of Keras, planted in infer and reached from
    the core through a relative import, is caught by both checks."""
    planted = ROOT / "infer" / "_planted_violation.py"
    planted.write_text("def f():\n    from ..export import onnx_export\n    import keras.models\n")
    try:
        assert "infer/_planted_violation.py imports cxr.export.onnx_export" in stage_offences("infer")
        assert "cxr.infer._planted_violation imports keras.models" in heavy_offences()
    finally:
        planted.unlink()


def test_stage_modules_live_under_the_cxr_namespace(tmp_path: Path) -> None:
    """Outside the repo, only `cxr` is importable: no bare train/export/infer/reports/app."""
    code = (
        "import importlib.util as u, sys\n"
        "bare = [n for n in ('train', 'export', 'infer', 'reports', 'app') if u.find_spec(n) is not None]\n"
        "import cxr.train, cxr.export, cxr.infer, cxr.reports, cxr.app\n"
        "print(bare); sys.exit(1 if bare else 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cxr_help_lists_the_stages() -> None:
    result = CliRunner().invoke(cxr, ["--help"])
    assert result.exit_code == 0
    for stage in ("data", "train", "export", "infer", "report", "evaluate", "robustness", "weights"):
        assert stage in result.output


TEST_FOLDERS = {"core", "artifacts", "train", "export", "infer", "reports", "app", "project"}


def test_the_tests_mirror_the_packages() -> None:
    """Every test module sits in the folder of the package it tests (tests/core for cxr/, tests/project
    for the repository as a whole), and every folder is a package, so that equal names cannot clash."""
    tests = ROOT / "tests"
    loose = sorted(p.name for p in tests.glob("test_*.py"))
    assert not loose, f"test modules outside a package folder: {loose}"
    folders = {p.parent.relative_to(tests).parts[0] for p in tests.rglob("test_*.py")}
    assert folders <= TEST_FOLDERS, f"test folders that mirror no package: {sorted(folders - TEST_FOLDERS)}"
    assert all((tests / folder / "__init__.py").is_file() for folder in folders)
