from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from cxr.app.evaluate import evaluate
from cxr.app.report import report
from cxr.artifacts.report_sections import ShortcutCheck
from cxr.reports.evaluate import GateSpecError, parse_max_drop
from cxr.reports.summary import ReportInputs, ReportOptions, summarize
from tests.onnx_fixtures import make_tiny_model
from tests.synthetic import make_gray_class_folders


def _predictions(path: Path, images_root: Path | None = None, n: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.4 * y + rng.uniform(0, 0.6, n), 0, 1)
    rows = []
    for i, (yi, pi) in enumerate(zip(y, p)):
        label = ("NORMAL", "PNEUMONIA")[yi]
        rel = f"{label}/person{i // 2}_bacteria_{i}.jpeg"
        if images_root is not None:
            (images_root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((24, 24), int(pi * 255), np.uint8)).save(images_root / rel)
        rows.append(
            {
                "path": rel,
                "p_PNEUMONIA": f"{pi:.6f}",
                "pred_label": ("NORMAL", "PNEUMONIA")[int(pi >= 0.5)],
                "threshold": 0.5,
                "true_label": label,
                "error": "",
                "model": "m.onnx",
                "model_sha256": "a" * 64,
            }
        )
    rows.append(
        {
            "path": "broken.jpeg",
            "p_PNEUMONIA": "",
            "pred_label": "",
            "threshold": 0.5,
            "true_label": "",
            "error": "not a recognised image file",
            "model": "m.onnx",
            "model_sha256": "a" * 64,
        }
    )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.slow  # over 5 s on 2 cores: a full report
def test_report_writes_metrics_figures_and_self_contained_html(tmp_path: Path) -> None:
    preds = _predictions(tmp_path / "preds.csv", images_root=tmp_path / "images")
    history = tmp_path / "history.csv"
    pd.DataFrame(
        {
            "epoch": [0, 1],
            "accuracy": [0.6, 0.7],
            "loss": [0.7, 0.6],
            "val_accuracy": [0.6, 0.65],
            "val_loss": [0.69, 0.66],
        }
    ).to_csv(history, index=False)
    val = tmp_path / "val.csv"
    pd.DataFrame(
        {
            "path": ["a", "b", "c", "d"],
            "label": ["NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL"],
            "p_PNEUMONIA": [0.2, 0.9, 0.4, 0.5],
        }
    ).to_csv(val, index=False)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        report,
        [
            "--preds",
            str(preds),
            "--out",
            str(out),
            "--history",
            str(history),
            "--val-preds",
            str(val),
            "--threshold-rule",
            "point",
            "--images-root",
            str(tmp_path / "images"),
            "--n-boot",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    model = metrics["models"]["m"]
    assert model["n_errors"] == 1 and model["n_labelled"] == 120
    assert metrics["val_threshold"]["threshold"] == pytest.approx(0.4)
    assert "at_val_threshold" in model and model["threshold_table"]
    for name in (
        "confusion",
        "roc",
        "pr",
        "reliability",
        "samples",
        "false_positives",
        "false_negatives",
        "error_p",
    ):
        assert (out / model["figures"][name]).is_file()
    assert (out / "curves.png").is_file() and (out / "report.md").is_file()
    html = (out / "report.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,", html)) == 10  # the ROC twice: summary and section
    assert "published" in html and "0.991" in html


def _two_models(tmp_path: Path) -> tuple[Path, Path]:
    """Predictions of 'model1' and 'model2' on the same synthetic files."""
    a = _predictions(tmp_path / "a.csv", seed=1)
    b = _predictions(tmp_path / "b.csv", seed=2)
    for path, name in ((a, "model1.onnx"), (b, "model2.onnx")):
        frame = pd.read_csv(path)
        frame["model"] = name
        frame.to_csv(path, index=False)
    return a, b


@pytest.mark.slow  # over 5 s on 2 cores: a full report of two models
def test_comparison_of_two_prediction_files(tmp_path: Path) -> None:
    a, b = _two_models(tmp_path)
    result = summarize(ReportInputs((a, b)), tmp_path / "cmp", ReportOptions(n_boot=20))
    assert set(result.models) == {"model1", "model2"}
    assert (tmp_path / "cmp" / "model1_roc.png").is_file() and (tmp_path / "cmp" / "model2_roc.png").is_file()


@pytest.mark.slow  # over 5 s on 2 cores: a full report, then a browser
def test_html_renders_in_headless_chromium_with_images_loaded(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    preds = _predictions(tmp_path / "preds.csv")
    summarize(ReportInputs((preds,)), tmp_path / "r", ReportOptions(n_boot=20))
    probe = tmp_path / "probe.html"
    html = (tmp_path / "r" / "report.html").read_text()
    script = (
        "<script>window.onload=()=>{const imgs=[...document.images];"
        "document.title='IMAGES '+imgs.length+' LOADED '"
        "+imgs.filter(i=>i.complete&&i.naturalWidth>0).length;}"
        "</script>"
    )
    probe.write_text(html.replace("</body>", script + "</body>"))
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"<title>IMAGES (\d+) LOADED (\d+)</title>", proc.stdout)
    assert match, proc.stderr[-2000:]
    n_img_tags = len(re.findall(r"<img\b", html))  # every figure the report embeds, whatever their number
    assert n_img_tags >= 4 and int(match.group(1)) == n_img_tags
    assert match.group(2) == match.group(1), "an image of the report did not load"


def test_parse_max_drop() -> None:
    assert parse_max_drop("auc=0.01, recall=0.02") == {"roc_auc": 0.01, "recall": 0.02}
    with pytest.raises(GateSpecError):
        parse_max_drop("bogus=1")
    with pytest.raises(GateSpecError):
        parse_max_drop("auc")


def _labelled_folder(root: Path) -> Path:
    return make_gray_class_folders(
        root, {"NORMAL": 60, "PNEUMONIA": 110}, sigma=25, count=8, shape=(40, 40), name="person{i}_x_{i}.png"
    )


@pytest.mark.slow
def test_evaluate_gate_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    folder = _labelled_folder(tmp_path / "data")
    good = make_tiny_model(tmp_path / "good.onnx")
    common = ["--data", str(folder), "--history", str(tmp_path / "history.csv"), "--n-boot", "20", "-q"]
    first = runner.invoke(evaluate, ["--model", str(good), "--out", str(tmp_path / "e1"), *common])
    assert first.exit_code == 0, first.output
    assert "no baseline: nothing compared" in first.output and "PASSED" not in first.output
    baseline = tmp_path / "e1" / "metrics.json"
    same = runner.invoke(
        evaluate, ["--model", str(good), "--out", str(tmp_path / "e2"), "--baseline", str(baseline), *common]
    )
    assert same.exit_code == 0 and "PASSED" in same.output
    # planted regression: a model whose scores barely depend on the image
    worse = make_tiny_model(tmp_path / "worse.onnx", scale=0.0005, centre=200.0)
    regressed = runner.invoke(
        evaluate,
        [
            "--model",
            str(worse),
            "--out",
            str(tmp_path / "e3"),
            "--baseline",
            str(baseline),
            "--max-drop",
            "recall=0.02",
            *common,
        ],
    )
    assert regressed.exit_code == 1 and "FAILED" in regressed.output and "failed: recall" in regressed.output
    (folder / "NORMAL" / "person0_x_0.png").unlink()
    changed = runner.invoke(
        evaluate, ["--model", str(good), "--out", str(tmp_path / "e4"), "--baseline", str(baseline), *common]
    )
    assert changed.exit_code == 3 and "data changed" in changed.output
    allowed = runner.invoke(
        evaluate,
        [
            "--model",
            str(good),
            "--out",
            str(tmp_path / "e5"),
            "--baseline",
            str(baseline),
            "--allow-new-data",
            *common,
        ],
    )
    assert allowed.exit_code == 0
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["verdict"]) == ["not_compared", "pass", "regression", "data_changed", "pass"]
    assert {"time", "model_sha256", "data_sha256", "roc_auc", "precision", "execution_precision"} <= set(
        history.columns
    )
    assert history["precision"].astype(float).between(0, 1).all()  # the metric, not the execution precision
    assert set(history["execution_precision"]) == {"fp32"}


def test_evaluate_usage_errors(tmp_path: Path) -> None:
    good = make_tiny_model(tmp_path / "good.onnx")
    result = CliRunner().invoke(evaluate, ["--model", str(good), "--data", str(tmp_path / "none")])
    assert result.exit_code == 2
    folder = _labelled_folder(tmp_path / "data")
    bad_baseline = tmp_path / "b.json"
    bad_baseline.write_text("{}")
    result = CliRunner().invoke(
        evaluate,
        [
            "--model",
            str(good),
            "--data",
            str(folder),
            "--baseline",
            str(bad_baseline),
            "--out",
            str(tmp_path / "o"),
            "--history",
            str(tmp_path / "h.csv"),
            "--n-boot",
            "20",
            "-q",
        ],
    )
    assert result.exit_code == 2 and "not a cxr metrics.json" in result.output


@pytest.mark.slow  # over 5 s on 2 cores: full reports with image grids
def test_linked_images_and_grids_for_chosen_models(tmp_path: Path) -> None:
    root = tmp_path / "images"
    first = _predictions(tmp_path / "a.csv", images_root=root)
    second = tmp_path / "b.csv"
    pd.read_csv(first, dtype=str, keep_default_na=False).assign(model="other.onnx").to_csv(
        second, index=False
    )
    out = tmp_path / "report"
    result = CliRunner().invoke(
        report,
        [
            "--preds",
            str(first),
            "--preds",
            str(second),
            "--out",
            str(out),
            "--images-root",
            str(root),
            "--image-grids-for",
            "m",
            "--link-images",
            "--n-boot",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert "data:image/png" not in html and "src='m_roc.png'" in html
    assert (out / "m_samples.png").is_file() and not (out / "other_samples.png").exists()
    assert (out / "other_roc.png").is_file()


# --- summary first, honest intervals, unlabelled runs --------------------------------------------


def _chromium_dom(html_path: Path, tmp_path: Path, script: str) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", f"<script>{script}</script></body>"))
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1400,900",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout + proc.stderr[-2000:]


@pytest.mark.slow  # over 5 s on 2 cores: a full report
def test_the_summary_panel_fits_the_first_screen(tmp_path: Path) -> None:
    """At 1400x900 the verdict, model identity, data, headline figures with intervals, the ROC and the
    warnings all lie within the first 900 px."""
    preds = _predictions(tmp_path / "preds.csv", images_root=tmp_path / "images", n=200)
    shortcut = ShortcutCheck(
        {
            "source": "synthetic",
            "n_images": 10,
            "method": "x",
            "groups": {},
            "classes": ["NORMAL", "PNEUMONIA"],
            "verdict": "SHORTCUT RISK: size separates the classes",
            "findings": [],
        }
    )
    inputs = ReportInputs((preds,), images_root=tmp_path / "images", shortcut=(shortcut,))
    summarize(inputs, tmp_path / "r", ReportOptions(n_boot=50))
    script = (
        "window.onload=()=>{const s=document.querySelector('#summary');"
        "const parts=[...s.querySelectorAll('.verdict, table, img, li')];"
        "const bottom=Math.max(...parts.map(e=>e.getBoundingClientRect().bottom));"
        "document.title='PARTS '+parts.length+' BOTTOM '+Math.ceil(bottom)+' VH '+window.innerHeight;}"
    )
    dom = _chromium_dom(tmp_path / "r" / "report.html", tmp_path, script)
    match = re.search(r"<title>PARTS (\d+) BOTTOM (\d+) VH (\d+)</title>", dom)
    assert match, dom[-2000:]
    assert int(match.group(1)) >= 5 and int(match.group(2)) <= 900, match.group(0)
    html = (tmp_path / "r" / "report.html").read_text()
    summary = html.split("<section id='summary'>", 1)[1].split("</section>", 1)[0]
    for fact in (
        "sha256",
        "a" * 64,
        "threshold and rule",
        "cxr version",
        "data folder",
        "sensitivity",
        "specificity",
        "ROC AUC",
        "SHORTCUT RISK",
        "could not be scored",
        "<img",
    ):
        assert fact in summary, fact
    assert html.index("id='summary'") < html.index("id='contents'") < html.index("<details")
    last = html.rsplit("<details", 1)[1]  # published figures come last
    assert "Published figures" in last


def test_small_sets_get_no_interval_and_no_zero_width_one(tmp_path: Path) -> None:
    """Eight images: every interval says 'too few'; none reads 1.000-1.000."""
    preds = _predictions(tmp_path / "preds.csv", n=8)
    report_ = summarize(ReportInputs((preds,)), tmp_path / "r", ReportOptions(n_boot=50))
    block = report_.models["m"].at_model_threshold
    assert all(ci is None for ci in block.ci95.values())
    assert set(block.ci_method.values()) == {"too few"}
    text = (tmp_path / "r" / "report.md").read_text() + (tmp_path / "r" / "report.html").read_text()
    assert not re.search(r"(\d\.\d{3})\s*[-–]\s*\1", text), "a zero-width interval was printed"
    assert "too few" in text


def test_proportions_get_wilson_intervals() -> None:
    """39 normal chests all called normal: specificity 1.000 with the Wilson interval about 0.91-1.00,
    not the bootstrap's 1.000-1.000; ROC AUC keeps the patient bootstrap."""
    from cxr.reports.metrics import BOOTSTRAP, WILSON, confidence_intervals

    y = np.r_[np.zeros(39, int), np.ones(40, int)]
    p = np.r_[np.full(39, 0.1), np.linspace(0.3, 0.95, 40)]
    ci, method = confidence_intervals(y, p, 0.5, groups=[str(i) for i in range(79)], n_boot=200)
    assert method["specificity"] == WILSON and method["roc_auc"] == BOOTSTRAP
    assert ci["specificity"][0] == pytest.approx(0.910, abs=0.002) and ci["specificity"][1] == pytest.approx(
        1.0
    )


def test_a_factor_with_one_group_is_not_a_subgroup(tmp_path: Path) -> None:
    preds = _predictions(tmp_path / "preds.csv", n=60)  # every file is 'bacteria'
    report_ = summarize(ReportInputs((preds,)), tmp_path / "r", ReportOptions(n_boot=20, with_figures=False))
    factors = {row.factor for row in report_.models["m"].subgroups}
    assert "pneumonia type (file name)" not in factors


@pytest.mark.slow  # over 5 s on 2 cores: full reports
def test_the_shipped_model_is_marked_and_opens_the_summary(tmp_path: Path) -> None:
    a, b = _two_models(tmp_path)
    result = CliRunner().invoke(
        report,
        [
            "--preds",
            str(a),
            "--preds",
            str(b),
            "--out",
            str(tmp_path / "r"),
            "--shipped",
            "model2",
            "--n-boot",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r" / "report.html").read_text()
    summary = html.split("<section id='summary'>", 1)[1].split("</section>", 1)[0]
    assert "model2 (shipped)" in summary and "model1" in summary
    unknown = CliRunner().invoke(
        report, ["--preds", str(a), "--out", str(tmp_path / "x"), "--shipped", "nope"]
    )
    assert unknown.exit_code == 2 and "--shipped nope" in unknown.output


@pytest.mark.parametrize("layout", ["flat", "lower-case classes"])
def test_every_run_gets_a_report(tmp_path: Path, layout: str) -> None:
    """A flat folder (no labels) gets the score distribution, the calls and the images to review; class
    folders in lower case are read as labels."""
    from cxr.app.infer import infer

    names = {"flat": ("", ""), "lower-case classes": ("normal", "Pneumonia")}[layout]
    for label, level in zip(names, (60, 110)):
        folder = tmp_path / "data" / label
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(level)
        for i in range(12):
            Image.fromarray(np.clip(rng.normal(level, 25, (40, 40)), 0, 255).astype(np.uint8)).save(
                folder / f"person{i}_{level}_{i}.png"
            )
    model = make_tiny_model(tmp_path / "m.onnx")
    result = CliRunner().invoke(
        infer,
        [
            str(tmp_path / "data"),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "out"),
            "--n-boot",
            "20",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    html = (tmp_path / "out" / "report.html").read_text()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    if layout == "flat":
        assert "no labels:" in result.output and "in any case" in result.output
        assert metrics["labelled"] is False
        entry = metrics["models"]["m"]
        assert entry["n_called_positive"] + entry["n_called_negative"] == 24
        assert (tmp_path / "out" / "distribution.png").is_file() and (
            tmp_path / "out" / "suspicious.png"
        ).is_file()
        assert "images to review first" in html and "no labels" in html
    else:
        assert "no labels" not in result.output
        assert metrics["models"]["m"]["n_labelled"] == 24
        assert set(pd.read_csv(tmp_path / "out" / "predictions.csv")["true_label"]) == {"NORMAL", "PNEUMONIA"}
    probabilities = (tmp_path / "out" / "predictions.csv").read_text()
    assert "e-" not in probabilities  # fixed decimals, not scientific notation
