"""Slow tests: train tiny EfficientNet runs (weights=None) and export them to ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cxr.app.cli import cxr
from tests.synthetic import make_dataset

pytestmark = pytest.mark.slow
TINY = ["--weights", "none", "--epochs", "1", "--input-size", "64", "--batch-size", "8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    data = make_dataset(root / "data", n_patients=6, images_per_patient=2)
    runner = CliRunner()
    prepared = runner.invoke(cxr, ["data", "prepare", "--source", str(data), "--out", str(root / "splits")])
    assert prepared.exit_code == 0, prepared.output
    result = runner.invoke(
        cxr,
        [
            "train",
            "--variant",
            "all",
            "--manifest",
            str(root / "splits" / "manifest.csv"),
            "--out",
            str(root / "runs"),
            "--cache-dir",
            str(root / "cache"),
            *TINY,
        ],
    )
    assert result.exit_code == 0, result.output
    return {
        "root": root,
        "data": data,
        "manifest": root / "splits" / "manifest.csv",
        "runs": root / "runs",
        "output": result.output,
    }


def test_both_variants_write_every_artifact(trained) -> None:
    for variant in ("model1", "model2"):
        run = trained["runs"] / variant
        for name in (
            "best.keras",
            "history.csv",
            "config.json",
            "run.json",
            "augment_grid.png",
            "curves.png",
            "val_predictions.csv",
        ):
            assert (run / name).is_file(), f"{variant}: {name} missing"
        info = json.loads((run / "run.json").read_text())
        assert info["finished"] and info["epochs_run"] == 1 and info["seed"] == 42
        assert len(info["manifest_sha256"]) == 64 and "keras" in info["versions"]
        assert not (run / "backup").exists()


def test_freezing_counts_and_parameters_match_the_seed(trained) -> None:
    m1 = json.loads((trained["runs"] / "model1" / "run.json").read_text())
    m2 = json.loads((trained["runs"] / "model2" / "run.json").read_text())
    assert m1["frozen_base_layers"] == 10
    assert m2["frozen_base_layers"] == int(m2["base_layers"] * 0.7)
    # the seed's Keras 2 counts (input size does not change parameter counts)
    assert (m1["params"]["trainable"], m1["params"]["non_trainable"]) == (7_888_387, 68_855)
    assert (m2["params"]["trainable"], m2["params"]["non_trainable"]) == (6_383_963, 1_573_279)


def test_frozen_random_base_warns_and_is_recorded(trained) -> None:
    assert "frozen random features cannot learn" in trained["output"]
    info = json.loads((trained["runs"] / "model2" / "run.json").read_text())
    assert any("cannot learn" in w for w in info["warnings"])


def test_existing_run_needs_resume(trained) -> None:
    result = CliRunner().invoke(
        cxr,
        [
            "train",
            "--variant",
            "model1",
            "--manifest",
            str(trained["manifest"]),
            "--out",
            str(trained["runs"] / "model1"),
            *TINY,
        ],
    )
    assert result.exit_code == 2 and "--resume" in result.output


def test_resuming_finished_runs_changes_nothing(trained) -> None:
    histories = {v: (trained["runs"] / v / "history.csv").read_text() for v in ("model1", "model2")}
    result = CliRunner().invoke(
        cxr,
        [
            "train",
            "--variant",
            "all",
            "--manifest",
            str(trained["manifest"]),
            "--out",
            str(trained["runs"]),
            "--resume",
            *TINY,
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("already finished") == 2
    assert histories == {v: (trained["runs"] / v / "history.csv").read_text() for v in histories}


def test_interrupted_run_resumes_from_last_finished_epoch(trained, monkeypatch) -> None:
    import keras

    from cxr.train import fit
    from cxr.train.config import load_config, resolve_variant

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt("simulated kill after epoch 1")

    original = fit._callbacks
    monkeypatch.setattr(fit, "_callbacks", lambda *a: original(*a) + [Crash()])
    cfg = resolve_variant(
        load_config(), "model2", {"weights": "none", "epochs": 2, "input_size": 64, "batch_size": 8}
    )
    run = trained["root"] / "resume"
    with pytest.raises(KeyboardInterrupt):
        fit.fit_variant(cfg, trained["manifest"], run, cache_dir=trained["root"] / "cache", verbose=0)
    assert (run / "backup").is_dir() and len(pd.read_csv(run / "history.csv")) == 1
    monkeypatch.setattr(fit, "_callbacks", original)
    result = fit.fit_variant(
        cfg, trained["manifest"], run, resume=True, cache_dir=trained["root"] / "cache", verbose=0
    )
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1] and result.run_info.epochs_run == 2


def test_time_budget_stops_cleanly_and_resume_continues(trained) -> None:
    from cxr.train import fit
    from cxr.train.config import load_config, resolve_variant

    cfg = resolve_variant(
        load_config(), "model2", {"weights": "none", "epochs": 3, "input_size": 64, "batch_size": 8}
    )
    run = trained["root"] / "budget"
    first = fit.fit_variant(
        cfg, trained["manifest"], run, cache_dir=trained["root"] / "cache", verbose=0, max_minutes=0.1
    )
    assert first.run_info.epochs_run == 1 and not first.run_info.finished
    assert "time budget" in first.run_info.stopped_reason and (run / "val_predictions.csv").is_file()
    assert (run / "backup").is_dir()
    second = fit.fit_variant(
        cfg, trained["manifest"], run, resume=True, cache_dir=trained["root"] / "cache", verbose=0
    )
    assert second.run_info.epochs_run == 3 and second.run_info.finished and not (run / "backup").exists()


def test_export_metadata_parity_and_round_trip(trained, tmp_path: Path) -> None:
    import onnx

    from cxr.app.infer import infer
    from cxr.export.onnx_export import load_keras_model
    from cxr.imaging import decode_image, list_images

    run = trained["runs"] / "model1"
    out = tmp_path / "models" / "model1.onnx"
    result = CliRunner().invoke(
        cxr,
        [
            "export",
            "--run",
            str(run),
            "--out",
            str(out),
            "--n-parity",
            "8",
            "--calibration",
            "none",
            "--no-guard",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "max |dp|" in result.output
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    from cxr.export.graph_edit import logit_name
    from cxr.export.trust import guard_taps

    assert len(guard_taps(model)) == 4  # swish activations of EfficientNet B0-B7 are found as taps
    assert logit_name(model)  # the head's Sigmoid, not one of swish's
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["cxr.classes"]) == ["NORMAL", "PNEUMONIA"]
    assert json.loads(meta["cxr.threshold"]) == 0.5 and json.loads(meta["cxr.input_size"]) == 64
    assert meta["cxr.variant"] == "model1" and meta["cxr.input_dtype"] == "uint8"
    assert len(meta["cxr.config_sha256"]) == 64 and len(meta["cxr.manifest_sha256"]) == 64
    assert not any(n.op_type.startswith("Random") for n in model.graph.node)
    parity = json.loads((out.with_suffix(".parity.json")).read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and len(parity["model_sha256"]) == 64
    assert parity["source"].endswith("real images")  # the run's own validation images

    # export -> cxr-infer round trip against Keras on the same decoded images
    scored = tmp_path / "scored"
    infer_result = CliRunner().invoke(
        infer, [str(trained["data"]), "--model", str(out), "--out", str(scored), "-q", "--n-boot", "20"]
    )
    assert infer_result.exit_code == 0, infer_result.output
    rows = pd.read_csv(scored / "predictions.csv")
    paths = list_images(trained["data"])
    keras_p = (
        load_keras_model(run / "best.keras")
        .predict(np.stack([decode_image(p, 64) for p in paths]).astype("float32"), verbose=0)
        .reshape(-1)
    )
    assert np.abs(rows["p_PNEUMONIA"].to_numpy() - keras_p).max() <= 1e-4


def test_failed_parity_leaves_no_model(trained, tmp_path: Path) -> None:
    from cxr.export.onnx_export import ParityError, export_onnx

    out = tmp_path / "m.onnx"
    with pytest.raises(ParityError):
        export_onnx(trained["runs"] / "model2", out, tolerance=-1.0, n_parity=4)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_corrupted_or_foreign_run_gives_clear_error(trained, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["runs"] / "model1", run)
    (run / "best.keras").write_bytes(b"definitely not a keras zip")
    result = CliRunner().invoke(cxr, ["export", "--run", str(run), "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "cannot load" in result.output and not (tmp_path / "x.onnx").exists()
    result = CliRunner().invoke(cxr, ["export", "--run", str(tmp_path), "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "missing" in result.output


def test_lite2_backbone_builds_with_the_same_contract() -> None:
    from cxr.train.config import load_config, resolve_variant
    from cxr.train.model import build_classifier

    for variant, frozen in (("model1", 10), ("model2", None)):
        cfg = resolve_variant(
            load_config(), variant, {"backbone": "efficientnet_lite2", "weights": "none", "input_size": 64}
        )
        model, facts = build_classifier(cfg)
        assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 1)
        assert facts.frozen_base_layers == (frozen or int(facts.base_layers * 0.7))


def _toy_lesion_model(size: int = 64):
    """A model whose last feature map is local brightness above background, with the seed's head
    (positive weights), so the positive logit rises with a bright 'lesion'."""
    import keras

    from cxr.train.model import add_head

    inputs = keras.Input((size, size, 3))
    x = keras.layers.AveragePooling2D(8, name="pool")(inputs)
    x = keras.layers.Conv2D(4, 1, activation="relu", name="top_activation")(x)
    model = add_head(keras.Model(inputs, x), "toy")
    model.get_layer("top_activation").set_weights(
        [np.full((1, 1, 3, 4), 1 / 3, "float32"), np.full(4, -90.0, "float32")]
    )
    for name, shape in (("head_dense128", (4, 128)), ("head_dense64", (128, 64)), ("p_positive", (64, 1))):
        model.get_layer(name).set_weights(
            [np.full(shape, 0.05, "float32"), np.full(shape[1], 0.1, "float32")]
        )
    return model


def _lesion_images(size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(60, 5, (2, size, size, 3)), 0, 255)
    images[0, 4:20, 4:20] = 250  # top-left lesion
    images[1, 44:60, 40:56] = 250  # bottom-right lesion
    return images.astype(np.uint8)


def test_gradcam_follows_a_planted_lesion_in_keras_and_onnx(tmp_path: Path) -> None:
    from cxr.export.gradcam import gradcam_keras
    from cxr.export.onnx_export import convert
    from cxr.infer.model import OnnxClassifier

    model, images = _toy_lesion_model(), _lesion_images()
    from cxr.artifacts import ModelContract

    meta = ModelContract(("NORMAL", "PNEUMONIA"), 0.5, 64).to_metadata()
    convert(model, 64, 17, tmp_path / "toy.onnx", meta)
    onnx_p, onnx_cam = OnnxClassifier(tmp_path / "toy.onnx").explain(images)
    keras_p, keras_cam = gradcam_keras(model, images.astype("float32"))
    assert onnx_cam.shape == keras_cam.shape == (2, 8, 8)
    assert np.allclose(onnx_cam, keras_cam, atol=1e-4) and np.allclose(onnx_p, keras_p, atol=1e-5)
    assert onnx_cam.min() >= 0 and onnx_cam.max() == pytest.approx(1.0)
    peaks = [np.unravel_index(np.argmax(c), c.shape) for c in onnx_cam]
    assert peaks[0][0] < 3 and peaks[0][1] < 3  # top-left cells
    assert peaks[1][0] > 4 and peaks[1][1] > 4  # bottom-right cells


def test_explain_command_writes_overlays(trained, tmp_path: Path) -> None:
    from PIL import Image

    run = trained["runs"] / "model2"
    image = next(iter(sorted((trained["data"] / "test" / "PNEUMONIA").iterdir())))
    for model_arg in (str(run), str(run / "best.keras")):
        result = CliRunner().invoke(
            cxr, ["explain", str(image), "--model", model_arg, "--out", str(tmp_path)]
        )
        assert result.exit_code == 0, result.output
        figure = tmp_path / f"{image.stem}_gradcam.png"
        assert figure.is_file() and Image.open(figure).size[0] > 200
        figure.unlink()


def test_imagenet_weights_unavailable_is_one_clear_line(monkeypatch) -> None:
    import keras

    from cxr.train.model import WeightsUnavailableError, build_backbone

    def offline(**kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/...: [Errno -2] Name or service not known"
        )

    monkeypatch.setattr(keras.applications, "EfficientNetB2", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("efficientnet_b2", "imagenet", 128)
    message = str(info.value)
    assert "\n" not in message and "--weights none" in message and "--weights PATH" in message


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    from cxr.train.model import build_backbone

    source = build_backbone("efficientnet_b2", None, 64)
    path = tmp_path / "b2_notop.weights.h5"
    source.save_weights(path)
    loaded = build_backbone("efficientnet_b2", str(path), 64)
    for a, b in zip(source.weights[:5] + source.weights[-5:], loaded.weights[:5] + loaded.weights[-5:]):
        assert np.array_equal(a.numpy(), b.numpy())


def test_batchnorm_mode_gap_scores_validation_both_ways(trained) -> None:
    from cxr.train.batchnorm import batchnorm_mode_gap

    gap = batchnorm_mode_gap(trained["runs"] / "model1", batch_size=4, cache_dir=trained["root"] / "cache")
    val = pd.read_csv(trained["runs"] / "model1" / "val_predictions.csv")
    assert gap.n == len(val)
    inference = gap.moving_averages
    # inference mode is what val_predictions.csv holds (written with the best checkpoint)
    assert inference.p_min == pytest.approx(val["p_PNEUMONIA"].min(), abs=1e-5)
    assert 0 <= gap.batch_statistics.roc_auc <= 1 and inference.p_std >= 0


def test_recalibrate_bn_writes_an_exportable_run(trained, tmp_path: Path) -> None:

    out = tmp_path / "recalibrated"
    args = [
        "recalibrate-bn",
        "--run",
        str(trained["runs"] / "model1"),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--cache-dir",
        str(trained["root"] / "cache"),
    ]
    result = CliRunner().invoke(cxr, args)
    assert result.exit_code == 0, result.output
    assert "validation ROC AUC" in result.output
    record = json.loads((out / "run.json").read_text())["bn_recalibration"]
    assert record["layers"] > 0 and record["source_run"] == str(trained["runs"] / "model1")
    assert {"best.keras", "config.json", "history.csv", "val_predictions.csv"} <= {
        p.name for p in out.iterdir()
    }
    again = CliRunner().invoke(cxr, args)
    assert again.exit_code == 2 and "not empty" in again.output

    from cxr.artifacts import RunFolder
    from cxr.export.onnx_export import build_contract

    fixed = {"rule": "fixed"}
    meta = build_contract(
        *RunFolder(out).export_facts(), 0.5, fixed
    ).to_metadata()  # what `cxr export` writes
    assert json.loads(meta["cxr.bn_recalibration"])["layers"] == record["layers"]
    original = build_contract(*RunFolder(trained["runs"] / "model1").export_facts(), 0.5, fixed).to_metadata()
    assert json.loads(original["cxr.bn_recalibration"]) is None


@pytest.mark.slow
def test_a_failed_guard_or_calibration_leaves_no_model(trained, tmp_path: Path) -> None:
    """The tiny run has too few validation images for a guard: the export says so in one line and
    leaves neither the model nor its parity file (a model without the guard asked for is not kept)."""
    out = tmp_path / "models" / "model1.onnx"
    result = CliRunner().invoke(
        cxr, ["export", "--run", str(trained["runs"] / "model1"), "--out", str(out), "--n-parity", "4"]
    )
    assert result.exit_code == 2 and "nothing written" in result.output, result.output
    assert "--no-guard" in result.output or "--calibration none" in result.output
    assert not out.exists() and not out.with_suffix(".parity.json").exists()
