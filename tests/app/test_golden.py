"""Golden outputs of ``cxr-infer``: what it writes today, pinned, so that a refactor that changes an
output fails here.

Pinned, under tests/golden/: every row of predictions.csv, metrics.json and the exit code (and its
one-line message) of

- ``hostile/``: a tiny synthetic folder with hostile files (corrupt, empty, truncated, blank, colour,
  tiny, too wide, 16-bit and 12-bit PNGs, a multi-page TIFF, a broken symbolic link, a name that is
  not UTF-8), scored with a tiny hand-built ONNX model (tests/onnx_fixtures.py), and the exit codes
  of a few more runs beside it (a clean folder, a resume, usage errors);
- ``test_split/``: the shipped model1 on the real test split (data/splits/manifest.csv over
  ../shared/data/chest_xray; ``slow``, skipped where either is absent), as a compact CSV (path,
  probability, labels, qc, domain score; 6 decimals) and its metrics.json.

What changes from run to run is normalised before the comparison: the time stamp, the temporary
folder, the files' modification times (and the listing hash made from them), the cxr version,
the machine's CPU count and the model's sha256 (checked against the model file, then replaced:
the bytes onnx writes for the tiny model depend on the onnx version). Numbers are compared to
1e-7 (absolute) or 1e-6 (relative), which float32 arithmetic on another CPU stays within.

After a change that is MEANT to change these outputs, regenerate the files and commit them with
the change, saying why::

    CXR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/app/test_golden.py   # or: make golden

(the tests then rewrite tests/golden/ and skip, saying so); `git diff tests/golden` shows what
changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from cxr.app.infer import infer
from tests.onnx_fixtures import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("CXR_UPDATE_GOLDEN") == "1"
SHARED = ROOT.parent / "shared" / "data" / "chest_xray"
MANIFEST = ROOT / "data" / "splits" / "manifest.csv"
MODEL1 = ROOT / "models" / "model1.onnx"


# the hostile folder ----------------------------------------------------------------------------------


def _gray(
    rng: np.random.Generator, level: float, shape: tuple[int, int] = (72, 72), sd: float = 12
) -> np.ndarray:
    return np.clip(rng.normal(level, sd, shape), 0, 255).astype(np.uint8)


def make_hostile_folder(root: Path) -> Path:
    """Eight good images a class (overlapping brightness, so the metrics are not all 1.0) and one
    hostile file of each kind. Seeded: the same bytes every time."""
    rng = np.random.default_rng(20240601)
    normal, pneumonia = root / "NORMAL", root / "PNEUMONIA"
    normal.mkdir(parents=True)
    pneumonia.mkdir()
    for i in range(8):
        Image.fromarray(_gray(rng, 55 + 8 * i)).save(normal / f"IM-{i + 1:04d}-0001.png")
        Image.fromarray(_gray(rng, 75 + 9 * i)).save(pneumonia / f"person{i + 1}_bacteria_{i + 10}.png")
    Image.fromarray(_gray(rng, 70)).convert("RGB").save(normal / "IM-0009-0001.jpeg", quality=90)
    Image.fromarray(_gray(rng, 120)).convert("RGB").save(pneumonia / "person9_virus_20.jpeg", quality=90)
    # hostile files
    (normal / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    (normal / "empty.jpeg").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(_gray(rng, 90)).convert("RGB").save(jpeg, "JPEG", quality=90)
    (pneumonia / "truncated.jpeg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    Image.fromarray(np.zeros((72, 72), np.uint8)).save(normal / "blank.png")
    colour = np.stack([_gray(rng, 150), _gray(rng, 60), _gray(rng, 100)], axis=2)
    Image.fromarray(colour).save(pneumonia / "colour.png")
    Image.fromarray(_gray(rng, 100, (16, 16))).save(normal / "tiny.png")
    Image.fromarray(_gray(rng, 100, (64, 200))).save(pneumonia / "wide.png")
    wide16 = (rng.uniform(0.2, 0.8, (72, 72)) * 65535).astype(np.uint16)
    Image.fromarray(wide16).save(pneumonia / "sixteen_bit.png")
    twelve = (rng.uniform(0.1, 0.6, (72, 72)) * 4095).astype(np.uint16)
    Image.fromarray(twelve).save(normal / "twelve_bit.png")
    pages = [Image.fromarray(_gray(rng, v)) for v in (60, 120)]
    pages[0].save(normal / "stack.tif", save_all=True, append_images=pages[1:])
    (normal / "gone.png").symlink_to(root / "nowhere.png")
    Image.fromarray(_gray(rng, 65)).save(os.fsdecode(os.fsencode(normal) + b"/IM-0010-\xe9, copy.png"))
    (normal / "notes.txt").write_text("not an image: not listed")
    Image.fromarray(_gray(rng, 65)).save(normal / ".hidden.png")
    return root


def _run(*args: str):
    return CliRunner().invoke(infer, [*args, "-q", "--workers", "0", "--n-boot", "50"])


# normalising ------------------------------------------------------------------------------------------


def _normalise_text(text: str, tmp: Path) -> str:
    """Without absolute paths (where the checkout and the temporary folder are) and speeds."""
    for folder, name in ((tmp, "<tmp>"), (SHARED, "<chest_xray>"), (ROOT, "<repo>")):
        text = text.replace(str(folder), name)
    return re.sub(r"\((nan|[\d.]+) img/s\)", "(<speed> img/s)", text)


def normalise_metrics(value, tmp: Path, model_sha: str):
    """metrics.json (or predictions.meta.json) without what changes from run to run."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "generated":
                item = "<time>"
            elif key == "file_stamps":  # size:mtime_ns -> size
                item = {path: stamp.split(":")[0] for path, stamp in item.items()}
            elif key == "listing_sha256":
                item = "<made from the files' modification times>"
            elif key == "cxr_version":
                item = "<version>"
            elif key in ("parallel_runs",):  # the machine's CPU count
                item = "<cpus>"
            elif key == "model_sha256":
                assert item == model_sha, f"model_sha256 {item} is not the sha256 of the model file"
                item = "<sha256 of the model file>"
            else:
                item = normalise_metrics(item, tmp, model_sha)
            out[key] = item
        return out
    if isinstance(value, list):
        return [normalise_metrics(v, tmp, model_sha) for v in value]
    if isinstance(value, str):
        return _normalise_text(value, tmp)
    return value


def normalise_rows(csv_path: Path, tmp: Path, model_sha: str) -> str:
    """predictions.csv as text, with the model's sha256 checked and replaced."""
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8")
    assert (frame["model_sha256"] == model_sha).all()
    frame["model_sha256"] = "<sha256 of the model file>"
    frame["error"] = [_normalise_text(e, tmp) for e in frame["error"]]
    return frame.to_csv(index=False, lineterminator="\n")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# comparing --------------------------------------------------------------------------------------------

NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)


def differences(got, want, where: str = "") -> list[str]:
    """Where two JSON values differ (floats compared to 1e-6 relative or 1e-7 absolute)."""
    if isinstance(want, dict) and isinstance(got, dict):
        found = [f"{where}/{k}: missing" for k in want if k not in got]
        found += [f"{where}/{k}: not in the golden file" for k in got if k not in want]
        return found + [d for k in want if k in got for d in differences(got[k], want[k], f"{where}/{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{where}: {len(got)} items, golden {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(want, numbers) and isinstance(got, numbers) and not isinstance(want, bool):
        return [] if _close(float(got), float(want)) else [f"{where}: {got!r}, golden {want!r}"]
    return [] if got == want else [f"{where}: {got!r}, golden {want!r}"]


def csv_differences(got: str, want: str, abs_tol: float = 1e-7) -> list[str]:
    """Row by row, cell by cell; cells that are numbers compared as numbers (to ``abs_tol``)."""
    got_rows, want_rows = list(csv.reader(io.StringIO(got))), list(csv.reader(io.StringIO(want)))
    if got_rows[:1] != want_rows[:1]:
        return [f"columns {got_rows[:1]}, golden {want_rows[:1]}"]
    if len(got_rows) != len(want_rows):
        return [f"{len(got_rows) - 1} rows, golden {len(want_rows) - 1}"]
    header, found = want_rows[0], []
    for n, (g_row, w_row) in enumerate(zip(got_rows[1:], want_rows[1:]), 1):
        for column, g, w in zip(header, g_row, w_row):
            numbers = NUMBER.match(g) and NUMBER.match(w)
            same = math.isclose(float(g), float(w), abs_tol=abs_tol) if numbers else g == w
            if not same:
                found.append(f"row {n} ({w_row[0]}), {column}: {g!r}, golden {w!r}")
    return found


def check_golden(name: str, got, kind: str, abs_tol: float = 1e-7) -> None:
    """Compare ``got`` with tests/golden/``name`` (or write it there under CXR_UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    text = got if kind == "csv" else json.dumps(got, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing: CXR_UPDATE_GOLDEN=1 writes it"
    want = path.read_text(encoding="utf-8")
    found = csv_differences(got, want, abs_tol) if kind == "csv" else differences(got, json.loads(want))
    assert not found, (
        f"the output differs from {path.relative_to(ROOT)} ({len(found)} differences; if the change is "
        "meant, regenerate with CXR_UPDATE_GOLDEN=1 and say why in the commit):\n" + "\n".join(found[:40])
    )


def _finish() -> None:
    if UPDATE:
        pytest.skip("CXR_UPDATE_GOLDEN=1: golden files rewritten, nothing compared")


# the tests --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(tmp root, the hostile folder, the tiny model); the model reads the mean pixel (onnx_fixtures)."""
    tmp = tmp_path_factory.mktemp("golden")
    folder = make_hostile_folder(tmp / "in")
    model = make_tiny_model(tmp / "tiny.onnx", size=32, threshold=0.45, scale=0.06, centre=80.0)
    return tmp, folder, model


@pytest.mark.parametrize(
    "report", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["no-report", "report"]
)
def test_hostile_folder_predictions_and_metrics_are_the_golden_ones(hostile, report: bool) -> None:
    """The rows, metrics.json, the settings sidecar and the exit code; with the report (figures and
    HTML, 4 s of CPU: ``slow``) metrics.json is the same plus the names of its figures."""
    tmp, folder, model = hostile
    out = tmp / ("out_report" if report else "out")
    result = _run(str(folder), "--model", str(model), "--out", str(out), *([] if report else ["--no-report"]))
    sha = sha256_of(model)
    check_golden("hostile/predictions.csv", normalise_rows(out / "predictions.csv", tmp, sha), "csv")
    metrics = normalise_metrics(json.loads((out / "metrics.json").read_text()), tmp, sha)
    metrics["models"]["tiny"]["predictions"] = metrics["models"]["tiny"]["predictions"].replace(
        out.name, "<out>"
    )
    if report:
        check_golden("hostile/report_figures.json", metrics["models"]["tiny"].pop("figures"), "json")
        check_golden("hostile/report_files.json", sorted(p.name for p in out.iterdir()), "json")
    check_golden("hostile/metrics.json", metrics, "json")
    settings = normalise_metrics(json.loads((out / "predictions.meta.json").read_text()), tmp, sha)
    check_golden("hostile/predictions.meta.json", settings, "json")
    output = _normalise_text(result.output, tmp).replace(f"<tmp>/{out.name}/", "<tmp>/<out>/").splitlines()
    name = "exit_code_report" if report else "exit_code"
    check_golden(f"hostile/{name}.json", {"exit_code": result.exit_code, "output": output}, "json")
    _finish()


def test_exit_codes_and_messages_are_the_golden_ones(hostile) -> None:
    tmp, folder, model = hostile
    clean = tmp / "clean"
    for label in ("NORMAL", "PNEUMONIA"):
        (clean / label).mkdir(parents=True, exist_ok=True)
        for good in sorted((folder / label).glob("[Ip]*_*.png")) + sorted(
            (folder / label).glob("IM-000*.png")
        ):
            (clean / label / good.name).write_bytes(good.read_bytes())
    blocker = tmp / "a_file"
    blocker.write_text("x")
    bad_model = make_tiny_model(tmp / "bad.onnx", metadata={"threshold": 2})
    runs = {
        "clean folder": [str(clean), "--model", str(model), "--out", str(tmp / "o_clean"), "--no-report"],
        "resume a finished run": [
            str(clean),
            "--model",
            str(model),
            "--out",
            str(tmp / "o_clean"),
            "--no-report",
            "--resume",
        ],
        "missing folder": [str(tmp / "nowhere"), "--model", str(model), "--out", str(tmp / "o_m")],
        "missing model": [str(clean), "--model", str(tmp / "nowhere.onnx"), "--out", str(tmp / "o_mm")],
        "bad model metadata": [str(clean), "--model", str(bad_model), "--out", str(tmp / "o_b")],
        "out under a file": [str(clean), "--model", str(model), "--out", str(blocker / "out")],
        "unknown option": [str(clean), "--model", str(model), "--out", str(tmp / "o_u"), "--no-such-option"],
    }
    got = {}
    for name, args in runs.items():
        result = _run(*args)
        got[name] = {
            "exit_code": result.exit_code,
            "output": _normalise_text(result.output, tmp).splitlines(),
        }
    check_golden("hostile/exit_codes.json", got, "json")
    _finish()


@pytest.mark.slow
def test_model1_on_the_test_split_gives_the_golden_rows(tmp_path: Path) -> None:
    if not (SHARED.is_dir() and MANIFEST.is_file() and MODEL1.is_file()):
        pytest.skip("needs ../shared/data/chest_xray, data/splits/manifest.csv and models/model1.onnx")
    out = tmp_path / "out"
    args = [
        "--model",
        str(MODEL1),
        "--manifest",
        str(MANIFEST),
        "--split",
        "test",
        "--out",
        str(out),
        "--no-report",
    ]
    result = _run(str(SHARED), *args)
    sha = sha256_of(MODEL1)
    golden_sha = GOLDEN / "test_split" / "model_sha256.txt"
    if UPDATE:
        golden_sha.parent.mkdir(parents=True, exist_ok=True)
        golden_sha.write_text(sha + "\n")
    assert golden_sha.read_text().strip() == sha, (
        "models/model1.onnx is not the model the golden files were made with: regenerate them "
        "(CXR_UPDATE_GOLDEN=1) with the new model, and say so in the commit"
    )
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    compact = pd.DataFrame(
        {
            "path": rows["path"],
            "p": rows["p_PNEUMONIA"].map(lambda p: f"{float(p):.6f}" if p else ""),
            "pred_label": rows["pred_label"],
            "true_label": rows["true_label"],
            "qc": rows["qc"],
            "domain_score": rows["domain_score"].map(lambda d: f"{float(d):.6f}" if d else ""),
            "error": rows["error"],
        }
    )
    # rounded to 6 decimals: a float32 difference in the 9th can move the 6th by one
    check_golden(
        "test_split/predictions.csv", compact.to_csv(index=False, lineterminator="\n"), "csv", abs_tol=1.5e-6
    )
    metrics = normalise_metrics(json.loads((out / "metrics.json").read_text()), tmp_path, sha)
    for model in metrics["models"].values():
        model["settings"].pop("file_stamps")  # 1,036 file sizes: the rows above pin the files
    check_golden("test_split/metrics.json", metrics, "json")
    check_golden("test_split/exit_code.json", {"exit_code": result.exit_code}, "json")
    _finish()
