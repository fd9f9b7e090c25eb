"""The domain guard, the set-level shift test and calibration: fitted by `cxr export`, folded into the
ONNX graph, and read by every scoring run (export/trust.py, cxr/shift.py, infer, reports)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("onnx")

from cxr.app.cli import cxr as cxr_cli  # noqa: E402 - after the importorskip of the train extra
from cxr.app.infer import infer as infer_main  # noqa: E402
from tests.onnx_fixtures import make_tiny_backbone  # noqa: E402
from tests.synthetic import synthetic_xray  # noqa: E402

SIZE = 32


def _labelled_set(root: Path, model: Path, n: int = 120, seed: int = 0) -> Path:
    """Synthetic chest-like images split train/val/test, labelled by the untrained model's own ranking
    with 10% of labels flipped (so that calibration has something to fit); returns the manifest."""
    from cxr.infer.model import OnnxClassifier

    rng = np.random.default_rng(seed)
    rows, images = [], []
    for index in range(n):
        image = synthetic_xray(rng, bool(index % 2), 96)
        path = root / "images" / f"p{index:03d}-1.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        images.append(np.repeat(np.asarray(Image.fromarray(image).resize((SIZE, SIZE)))[:, :, None], 3, 2))
        rows.append({"path": f"images/{path.name}", "split": ("train", "train", "val", "test")[(index // 2) % 4],
                     "patient_id": f"p{index:03d}", "sha256": "0" * 64})
    p = OnnxClassifier(model, device="cpu").predict(np.stack(images))
    labels = p > np.median(p)
    labels ^= rng.random(n) < 0.1
    frame = pd.DataFrame(rows).assign(label=np.where(labels, "PNEUMONIA", "NORMAL"))
    manifest = root / "manifest.csv"
    frame[["path", "label", "split", "patient_id", "sha256"]].to_csv(manifest, index=False)
    return manifest


@pytest.fixture()
def fitted(tmp_path: Path) -> tuple[Path, Path]:
    """(a tiny model with its guard and calibration fitted by `cxr export --from-onnx`, its manifest)."""
    base = make_tiny_backbone(tmp_path / "base.onnx", SIZE)
    manifest = _labelled_set(tmp_path, base)
    out = tmp_path / "trusted.onnx"
    result = CliRunner().invoke(cxr_cli, ["export", "--from-onnx", str(base), "--manifest", str(manifest),
                                          "--out", str(out), "--guard-false-flags", "0.05"])
    assert result.exit_code == 0, result.output
    assert "domain guard: 4 taps" in result.output and "calibration: platt" in result.output
    return out, manifest


def _foreign_folder(root: Path, n: int = 12) -> Path:
    """Colour noise and inverted, rotated chest-like images: nothing like the training set."""
    rng = np.random.default_rng(7)
    folder = root / "foreign"
    folder.mkdir()
    for index in range(n):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(folder / f"noise{index}.png")
        chest = synthetic_xray(rng, True, 96)
        Image.fromarray(np.rot90(255 - chest)).save(folder / f"turned{index}.png")
    return folder


def test_exported_graph_carries_guard_and_calibration_that_inference_reads(fitted) -> None:
    from cxr.infer.model import OnnxClassifier

    model = OnnxClassifier(fitted[0], device="cpu")
    assert model.guard is not None and model.guard.false_flag_rate == 0.05
    assert len(model.guard.reference_scores) == 30  # the validation images' scores travel with the model
    calibration = model.info.contract.calibration
    assert calibration is not None and calibration.method == "platt" and calibration.a > 0
    p, domain = model.predict_with_domain(np.zeros((2, SIZE, SIZE, 3), np.uint8) + 90)
    assert p.shape == domain.shape == (2,) and np.isfinite(domain).all()


def test_calibration_keeps_the_ranking_and_reruns_the_threshold_rule(tmp_path: Path, fitted) -> None:
    import onnx

    from cxr.artifacts import ModelContract
    from cxr.export.trust import strip_trust
    from cxr.infer.model import OnnxClassifier

    trusted = OnnxClassifier(fitted[0], device="cpu")
    proto = onnx.load(str(fitted[0]))
    strip_trust(proto)
    keep = [p for p in proto.metadata_props if p.key not in ("cxr.guard", "cxr.calibration")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    bare = OnnxClassifier(tmp_path / "bare.onnx", device="cpu")
    batch = np.random.default_rng(0).integers(40, 200, (16, SIZE, SIZE, 3), dtype=np.uint8)
    order = np.argsort(bare.predict(batch), kind="stable")
    assert (np.diff(trusted.predict(batch)[order]) >= -1e-6).all()  # the same ranking
    c = trusted.info.contract.calibration
    raw = bare.predict(batch).clip(1e-7, 1 - 1e-7)
    expected = 1 / (1 + np.exp(-(c.a * np.log(raw / (1 - raw)) + c.b)))
    assert np.allclose(trusted.predict(batch), expected, atol=1e-5)
    # a fixed threshold is carried over to the calibrated scale: the same decisions
    contract = ModelContract.from_file(fitted[0])
    assert ((trusted.predict(batch) >= contract.threshold) == (bare.predict(batch) >= 0.5)).all()


def test_refitting_an_already_fitted_model_replaces_its_guard(tmp_path: Path, fitted) -> None:
    import onnx

    again = tmp_path / "again.onnx"
    result = CliRunner().invoke(cxr_cli, ["export", "--from-onnx", str(fitted[0]), "--manifest", str(fitted[1]),
                                          "--out", str(again), "--guard-false-flags", "0.05"])
    assert result.exit_code == 0, result.output
    assert len(onnx.load(str(again)).graph.node) == len(onnx.load(str(fitted[0])).graph.node)


def test_no_guard_and_no_calibration_are_options(tmp_path: Path, fitted) -> None:
    from cxr.infer.model import OnnxClassifier

    out = tmp_path / "plain.onnx"
    result = CliRunner().invoke(cxr_cli, ["export", "--from-onnx", str(fitted[0]), "--manifest", str(fitted[1]),
                                          "--out", str(out), "--no-guard", "--calibration", "temperature"])
    assert result.exit_code == 0, result.output
    model = OnnxClassifier(out, device="cpu")
    assert model.guard is None and model.info.contract.calibration.method == "temperature"
    assert model.info.contract.calibration.b == 0.0


def test_export_needs_a_manifest_and_one_source(tmp_path: Path, fitted) -> None:
    runner = CliRunner()
    missing = runner.invoke(cxr_cli, ["export", "--from-onnx", str(fitted[0]), "--out", str(tmp_path / "x.onnx")])
    assert missing.exit_code == 2 and "--manifest" in missing.output
    both = runner.invoke(cxr_cli, ["export", "--from-onnx", str(fitted[0]), "--run", str(tmp_path),
                                   "--out", str(tmp_path / "x.onnx")])
    assert both.exit_code == 2 and "one of them" in both.output


def test_every_row_says_when_an_image_is_foreign_and_the_run_reports_a_shift(tmp_path: Path, fitted) -> None:
    folder = _foreign_folder(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(infer_main, [str(folder), "--model", str(fitted[0]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert rows["domain_score"].astype(float).gt(0).all()
    outside = rows["qc"].str.contains("outside training domain")
    assert outside.mean() >= 0.9
    assert rows.loc[rows["path"].str.startswith("noise"), "qc"].str.contains("colour image").all()
    assert rows.loc[outside, "p_PNEUMONIA"].ne("").all()  # --foreign flag (the default): scored and flagged
    assert f"domain guard: {int(outside.sum())} of {len(rows)} images outside the training domain" in result.output
    assert "data shift: these images differ from the training data" in result.output
    meta = json.loads((out / "predictions.meta.json").read_text())
    assert meta["shift"]["shifted"] and meta["shift"]["n_images"] == len(rows)
    assert meta["n_outside_domain"] == int(outside.sum())


def test_foreign_skip_keeps_the_row_and_the_reason_but_no_probability(tmp_path: Path, fitted) -> None:
    folder = _foreign_folder(tmp_path)
    result = CliRunner().invoke(infer_main, [str(folder), "--model", str(fitted[0]), "--out", str(tmp_path / "o"),
                                             "--foreign", "skip"])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype=str, keep_default_na=False)
    outside = rows["qc"].str.contains("outside training domain")
    assert len(rows) == 24 and outside.any()
    assert (rows.loc[outside, "p_PNEUMONIA"] == "").all() and (rows.loc[outside, "pred_label"] == "").all()
    assert (rows.loc[outside, "error"] == "").all()


def test_in_domain_images_are_rarely_flagged_and_show_no_shift(tmp_path: Path, fitted) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(infer_main, [str(tmp_path), "--model", str(fitted[0]), "--out", str(out),
                                             "--manifest", str(fitted[1]), "--split", "test"])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert rows["qc"].str.contains("outside training domain").mean() <= 0.2
    assert "data shift: none detected" in result.output


def test_a_model_without_a_guard_says_so(tmp_path: Path, tiny_model: Path, kaggle_folder: Path) -> None:
    result = CliRunner().invoke(infer_main, [str(kaggle_folder), "--model", str(tiny_model), "--out",
                                             str(tmp_path / "o")])
    assert "domain guard: this model has none" in result.output
    rows = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype=str, keep_default_na=False)
    assert (rows["domain_score"] == "").all()


def test_a_graph_and_metadata_that_disagree_about_the_guard_are_refused(tmp_path: Path, fitted) -> None:
    import onnx

    from cxr.infer.model import ModelLoadError, OnnxClassifier

    proto = onnx.load(str(fitted[0]))
    keep = [p for p in proto.metadata_props if p.key != "cxr.guard"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(tmp_path / "odd.onnx"))
    with pytest.raises(ModelLoadError, match="disagree about the domain guard"):
        OnnxClassifier(tmp_path / "odd.onnx", device="cpu")


def test_evaluate_gates_on_data_shift(tmp_path: Path, fitted, tiny_model: Path) -> None:
    folder = _foreign_folder(tmp_path)
    for kind in ("NORMAL", "PNEUMONIA"):
        (folder / kind).mkdir()
    for index, path in enumerate(sorted(folder.glob("*.png"))):
        path.rename(folder / ("NORMAL", "PNEUMONIA")[index % 2] / path.name)
    args = ["evaluate", "--data", str(folder), "--history", str(tmp_path / "h.csv"), "--n-boot", "20"]
    shifted = CliRunner().invoke(cxr_cli, [*args, "--model", str(fitted[0]), "--out", str(tmp_path / "e"),
                                           "--max-shift", "0.2", "--metrics-file", str(tmp_path / "m.prom")])
    assert shifted.exit_code == 1, shifted.output
    assert "KS distance" in shifted.output
    prom = (tmp_path / "m.prom").read_text()
    assert "cxr_evaluate_shift_detected 1.0" in prom and "cxr_evaluate_images_outside_domain" in prom
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    domain = next(iter(metrics["models"].values()))["domain"]
    assert domain["shift"]["shifted"] and domain["n_flagged"] >= 1 and domain["flagged"]
    external = [r for r in metrics["checklist"] if r["item"] == "External testing"][0]["answer"]
    assert external.startswith("other source") and "differ from the training data" in external
    unguarded = CliRunner().invoke(cxr_cli, [*args, "--model", str(tiny_model), "--out", str(tmp_path / "u"),
                                             "--max-shift", "0.2"])
    assert unguarded.exit_code == 2 and "needs a model with a domain guard" in unguarded.output
