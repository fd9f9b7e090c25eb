from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from cxr.app.infer import infer
from cxr.imaging import decode_image
from cxr.infer.model import ModelLoadError, OnnxClassifier, ProviderError, choose_providers
from cxr.infer.score import score_folder
from tests.onnx_fixtures import make_tiny_model
from tests.synthetic import make_gray_class_folders


def _mixed_folder(root: Path) -> tuple[Path, int, int]:
    """Good images under class folders plus broken and odd files. Returns (root, files, bad)."""
    make_gray_class_folders(
        root, {"NORMAL": 40, "PNEUMONIA": 140}, sigma=10, count=5, shape=(48, 40), name="img{i}.jpeg"
    )
    odd = root / "odd"
    odd.mkdir()
    Image.fromarray(np.full((30, 30, 4), 90, np.uint8), "RGBA").save(odd / "rgba.png")
    Image.fromarray(np.full((30, 30), 90, np.uint8)).convert("P").save(odd / "palette.PNG")
    Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(np.full((30, 30), 90, np.uint16) * 257).save(odd / "sixteen.png")
    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.png").write_text("this is not a png")
    buffer = io.BytesIO()
    Image.fromarray(np.full((200, 200), 90, np.uint8)).save(buffer, format="JPEG")
    (bad / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    Image.new("1", (12000, 12000)).save(bad / "bomb.png")
    (root / "notes.txt").write_text("ignored: not an image extension")
    (root / ".hidden.png").write_text("ignored: hidden")
    return root, 18, 4


def test_one_row_per_file_and_exit_code_1_on_errors(tmp_path: Path, tiny_model: Path) -> None:
    folder, n_files, n_bad = _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        infer,
        [
            str(folder),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "--quiet",
            "--workers",
            "2",
            "--batch-size",
            "4",
            "--n-boot",
            "50",
            "--no-report",  # the report is test_all_good_exits_0_labels_from_folders_and_report's
        ],
    )
    assert result.exit_code == 1, result.output
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert len(rows) == n_files and rows["path"].is_unique
    assert list(rows["path"]) == sorted(rows["path"])
    errors = rows[rows["error"] != ""]
    assert sorted(errors["path"]) == ["bad/bomb.png", "bad/text.png", "bad/truncated.jpg", "bad/zero.jpg"]
    assert (errors["p_PNEUMONIA"] == "").all() and (errors["pred_label"] == "").all()
    assert f"{n_bad} file(s) could not be scored" in result.output
    assert not list(out.glob("*.partial")) and not list(out.glob(".*partial"))


def test_all_good_exits_0_labels_from_folders_and_report(tmp_path: Path, tiny_model: Path) -> None:
    folder, _, _ = _mixed_folder(tmp_path / "in")
    for extra in ("bad", "odd"):
        for f in (folder / extra).iterdir():
            f.unlink()
    out = tmp_path / "out"
    result = CliRunner().invoke(
        infer, [str(folder), "--model", str(tiny_model), "--out", str(out), "-q", "--n-boot", "50"]
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(rows["true_label"]) == {"NORMAL", "PNEUMONIA"}
    assert (rows["pred_label"] == rows["true_label"]).all()  # the tiny model separates dark from bright
    for name in ("metrics.json", "report.html", "report.md", "roc.png", "confusion.png"):
        assert (out / name).is_file()


def test_no_report_writes_metrics_json_only(tmp_path: Path, tiny_model: Path) -> None:
    folder, _, _ = _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    CliRunner().invoke(
        infer,
        [str(folder), "--model", str(tiny_model), "--out", str(out), "-q", "--no-report", "--n-boot", "50"],
    )
    assert (out / "metrics.json").is_file() and not (out / "report.html").exists()


def test_labels_csv_overrides_folders(tmp_path: Path, tiny_model: Path) -> None:
    folder, _, _ = _mixed_folder(tmp_path / "in")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nNORMAL/img0.jpeg,PNEUMONIA\nimg1.jpeg,NORMAL\n")
    model = OnnxClassifier(tiny_model, device="cpu")
    from cxr.infer.score import read_labels_csv

    result = score_folder(
        folder, model, tmp_path / "p.csv", truth=read_labels_csv(labels, model.info.classes), workers=0
    )
    truth = dict(zip(result.predictions["path"], result.predictions["true_label"]))
    assert truth["NORMAL/img0.jpeg"] == "PNEUMONIA" and truth["NORMAL/img1.jpeg"] == "NORMAL"
    assert truth["PNEUMONIA/img2.jpeg"] == ""


def test_resume_scores_each_file_once_and_loses_no_row(tmp_path: Path, tiny_model: Path) -> None:
    folder, n_files, _ = _mixed_folder(tmp_path / "in")
    model = OnnxClassifier(tiny_model, device="cpu")
    out = tmp_path / "p.csv"
    full = score_folder(folder, model, out, workers=0).predictions
    # simulate a run killed after 7 rows, the last one cut mid-line
    import json

    from cxr.artifacts import Predictions

    settings = Predictions.read_settings(out)
    rows = [json.dumps(row) for row in full.to_dict("records")]
    partial = Predictions.partial_path(out)
    partial.write_text("\n".join([json.dumps({"settings": settings}), *rows[:7]]) + "\n" + rows[7][:20])
    out.unlink()
    resumed = score_folder(folder, model, out, workers=0, resume=True)
    assert resumed.n_scored_now == n_files - 7
    assert resumed.predictions.equals(full)


def test_usage_errors_exit_2(tmp_path: Path, tiny_model: Path) -> None:
    runner = CliRunner()
    folder, _, _ = _mixed_folder(tmp_path / "in")
    assert runner.invoke(infer, [str(tmp_path / "missing"), "--model", str(tiny_model)]).exit_code == 2
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx")
    result = runner.invoke(infer, [str(folder), "--model", str(garbage)])
    assert result.exit_code == 2 and "cannot load" in result.output
    assert runner.invoke(infer, [str(folder), "--model", str(tmp_path / "none.onnx")]).exit_code == 2
    mismatched = make_tiny_model(tmp_path / "mismatch.onnx", size=32, input_size_in_graph=64)
    result = runner.invoke(infer, [str(folder), "--model", str(mismatched)])
    assert result.exit_code == 2 and "does not match its metadata" in result.output


def test_foreign_onnx_without_cxr_metadata_is_refused(tmp_path: Path) -> None:
    import onnx

    path = make_tiny_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="not a cxr model"):
        OnnxClassifier(path)


def test_cpu_provider_selection(tiny_model: Path) -> None:
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert OnnxClassifier(tiny_model, device="cpu").provider == "CPUExecutionProvider"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderError):
            OnnxClassifier(tiny_model, device="cuda")
        assert OnnxClassifier(tiny_model, device="auto").provider == "CPUExecutionProvider"


def test_predictions_use_the_shared_preprocessing(tmp_path: Path, tiny_model: Path) -> None:
    folder, _, _ = _mixed_folder(tmp_path / "in")
    model = OnnxClassifier(tiny_model, device="cpu")
    rows = score_folder(folder, model, tmp_path / "p.csv", workers=2).predictions.set_index("path")
    expected = model.predict(decode_image(folder / "NORMAL" / "img3.jpeg", model.info.input_size)[None])[0]
    assert float(rows.loc["NORMAL/img3.jpeg", "p_PNEUMONIA"]) == pytest.approx(expected, abs=1e-6)


# over 5 s on 2 cores: a fresh interpreter scoring with the report (test_layout checks imports)
@pytest.mark.slow
def test_inference_path_never_imports_tensorflow(tmp_path: Path, tiny_model: Path) -> None:
    folder, _, _ = _mixed_folder(tmp_path / "in")
    code = (
        "import sys\nfrom cxr.app.cli import infer_main as main\n"
        "sys.argv=['cxr-infer', sys.argv[1], '--model', sys.argv[2], '--out', sys.argv[3], "
        "'-q', '--n-boot', '20']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]\n"
        "print('IMPORTED', bad)\nsys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(tiny_model), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "o" / "predictions.csv").is_file()


def test_manifest_split_scores_only_that_split_with_its_labels(
    tmp_path: Path, tiny_model: Path, kaggle_folder: Path
) -> None:
    from cxr.data import prepare_splits

    result = prepare_splits(kaggle_folder, tmp_path / "splits")
    test_rows = result.manifest[result.manifest["split"] == "test"]
    out = tmp_path / "out"
    run = CliRunner().invoke(
        infer,
        [
            str(kaggle_folder),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "--manifest",
            str(result.manifest_path),
            "--split",
            "test",
            "-q",
            "--n-boot",
            "20",
            "--no-report",
        ],
    )
    assert run.exit_code == 0, run.output
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert sorted(rows["path"]) == sorted(test_rows["path"])
    assert dict(zip(rows["path"], rows["true_label"])) == dict(zip(test_rows["path"], test_rows["label"]))


def test_tta_averages_flip_and_shift_views(tmp_path: Path, tiny_model: Path) -> None:
    from cxr.infer.model import predict_tta, tta_views

    batch = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    views = tta_views(batch, 2)
    assert len(views) == 6 and all(v.shape == batch.shape for v in views)
    assert np.array_equal(views[1][:, :, 0], batch[:, :, -1])
    assert np.array_equal(views[2][:, :, 2:], batch[:, :, :-2])  # content moved right by 2
    model = OnnxClassifier(tiny_model, device="cpu")
    expected = np.mean([model.predict(v) for v in tta_views(batch, 1)], axis=0)
    assert np.allclose(predict_tta(model, batch), expected)
    folder, _, _ = _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        infer,
        [
            str(folder),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "-q",
            "--tta",
            "--no-report",
            "--n-boot",
            "20",
        ],
    )
    assert result.exit_code == 1
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert (rows["model"] == "tiny.onnx+tta").all()


def test_cuda_sessions_are_exact_by_default_and_tf32_is_opt_in(monkeypatch) -> None:
    import onnxruntime as ort

    from cxr.infer.model import cuda_provider_options

    calls = []
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: calls.append("preload"), raising=False)
    providers = choose_providers("auto")
    assert providers[0] == (
        "CUDAExecutionProvider",
        {"use_tf32": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"},
    )
    assert providers[1] == "CPUExecutionProvider" and calls == ["preload"]
    assert choose_providers("cuda", "tf32")[0][1]["use_tf32"] == "1"
    assert choose_providers("cpu") == ["CPUExecutionProvider"] and calls == ["preload", "preload"]
    with pytest.raises(ProviderError):
        cuda_provider_options("fp16")


def test_execution_facts_are_recorded_with_the_predictions(tmp_path: Path, tiny_model: Path) -> None:
    from cxr.artifacts import Predictions

    folder, _, _ = _mixed_folder(tmp_path / "in")
    score_folder(folder, OnnxClassifier(tiny_model, device="cpu"), tmp_path / "p.csv", workers=0)
    settings = Predictions.read_settings(tmp_path / "p.csv")
    assert settings["provider"] == "CPUExecutionProvider" and settings["precision"] == "fp32"
    assert settings["n_files"] == 18 and settings["n_errors"] == 4 and "provider_options" in settings


def test_the_cli_runs_as_a_module_where_no_console_script_is_installed() -> None:
    """scripts/gpu_train_jax.py installs cxr with pip --target (no entry points) and calls it so."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "cxr.app.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "Usage: cxr" in proc.stdout, proc.stderr[-2000:]


def test_the_cpu_plan_gives_the_rows_of_the_session_thread_plan(tmp_path: Path, tiny_model: Path) -> None:
    """On CPUs each worker process decodes and scores its own batches; the rows (errors, qc flags,
    probabilities) are those of decoding in a pool and scoring on one session thread."""
    from cxr.artifacts import Predictions
    from cxr.infer.score import uses_cpu_plan

    folder, n_files, _ = _mixed_folder(tmp_path / "in")
    by_processes = OnnxClassifier(tiny_model, device="cpu")
    one_session = OnnxClassifier(tiny_model, device="cpu", threads=1)
    assert (
        uses_cpu_plan(by_processes, 2)
        and not uses_cpu_plan(one_session, 2)
        and not uses_cpu_plan(by_processes, 0)
    )
    a = score_folder(folder, by_processes, tmp_path / "a.csv", workers=2, batch_size=3).predictions
    b = score_folder(folder, one_session, tmp_path / "b.csv", workers=2, batch_size=3).predictions
    assert len(a) == n_files
    pd.testing.assert_frame_equal(a.drop(columns="p_PNEUMONIA"), b.drop(columns="p_PNEUMONIA"))
    pa, pb = (pd.to_numeric(f["p_PNEUMONIA"], errors="coerce").to_numpy() for f in (a, b))
    np.testing.assert_allclose(pa, pb, atol=1e-6)
    assert Predictions.read_settings(tmp_path / "a.csv")["plan"].startswith("cpu")
    assert Predictions.read_settings(tmp_path / "b.csv")["plan"].startswith("decode pool")


def test_a_model_replaced_during_a_run_is_refused_by_the_workers(tiny_model: Path) -> None:
    from cxr.infer.batch import worker_model as _worker_model

    with pytest.raises(ModelLoadError, match="changed while it was scoring"):
        _worker_model(str(tiny_model), "0" * 64)


def test_a_killed_worker_is_one_line_and_exit_69_and_resume_finishes(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process killed by the system (out of memory, say) is not a bug in cxr: one line,
    exit 69, the rows so far kept; --resume finishes the run."""
    from concurrent.futures.process import BrokenProcessPool

    import cxr.infer.score as score

    folder, n_files, _ = _mixed_folder(tmp_path / "in")
    real = score._scored_on_cpu_plan

    def dies_after_one_batch(*args, **kwargs):
        batches = real(*args, **kwargs)
        yield next(batches)
        batches.close()
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(score, "_scored_on_cpu_plan", dies_after_one_batch)
    out = tmp_path / "out"
    args = [
        str(folder),
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        "--quiet",
        "--workers",
        "2",
        "--batch-size",
        "4",
        "--no-report",
    ]
    result = CliRunner().invoke(infer, args)
    assert result.exit_code == 69, result.output
    assert "worker process died" in result.output and "Traceback" not in result.output
    monkeypatch.setattr(score, "_scored_on_cpu_plan", real)
    result = CliRunner().invoke(infer, [*args, "--resume"])
    assert result.exit_code == 1, result.output
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert len(rows) == n_files and rows["path"].is_unique


def test_a_named_pipe_in_the_folder_does_not_block_the_listing(tmp_path: Path) -> None:
    import os
    import threading

    from cxr.imaging import list_images

    (tmp_path / "scan").mkdir()
    os.mkfifo(tmp_path / "scan" / "no_extension")
    os.mkfifo(tmp_path / "scan" / "pipe.png")
    found: list = []
    thread = threading.Thread(target=lambda: found.append(list_images(tmp_path)), daemon=True)
    thread.start()
    thread.join(10)
    assert found and [p.name for p in found[0]] == [
        "pipe.png"
    ]  # listed by its name; scoring gives it an error row
