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
# what the cxr-infer runs here do not look at: the report's figures, the decode pool, the bootstrap
QUICK = ("--no-report", "--workers", "0", "--n-boot", "20")


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
        rows.append(
            {
                "path": f"images/{path.name}",
                "split": ("train", "train", "val", "test")[(index // 2) % 4],
                "patient_id": f"p{index:03d}",
                "sha256": "0" * 64,
            }
        )
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
    result = CliRunner().invoke(
        cxr_cli,
        [
            "export",
            "--from-onnx",
            str(base),
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--guard-false-flags",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "domain guard: 4 layers" in result.output and "calibration: platt" in result.output
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
    rng = np.random.default_rng(0)
    batch = np.stack(
        [
            np.repeat(
                np.asarray(Image.fromarray(synthetic_xray(rng, bool(i % 2), 96)).resize((SIZE, SIZE)))[
                    :, :, None
                ],
                3,
                2,
            )
            for i in range(16)
        ]
    )
    order = np.argsort(bare.predict(batch), kind="stable")
    assert (np.diff(trusted.predict(batch)[order]) >= -1e-5).all()  # the same ranking (float32 rounding)
    c = trusted.info.contract.calibration
    raw = bare.predict(batch).clip(1e-12, 1 - 1e-12)
    expected = 1 / (1 + np.exp(-(c.a * np.log(raw / (1 - raw)) + c.b)))
    assert np.allclose(trusted.predict(batch), expected, atol=1e-5)
    # a fixed threshold is carried over to the calibrated scale: the same decisions
    contract = ModelContract.from_file(fitted[0])
    assert ((trusted.predict(batch) >= contract.threshold) == (bare.predict(batch) >= 0.5)).all()


def test_refitting_an_already_fitted_model_replaces_its_guard(tmp_path: Path, fitted) -> None:
    import onnx

    again = tmp_path / "again.onnx"
    result = CliRunner().invoke(
        cxr_cli,
        [
            "export",
            "--from-onnx",
            str(fitted[0]),
            "--manifest",
            str(fitted[1]),
            "--out",
            str(again),
            "--guard-false-flags",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(onnx.load(str(again)).graph.node) == len(onnx.load(str(fitted[0])).graph.node)


def test_no_guard_and_no_calibration_are_options(tmp_path: Path, fitted) -> None:
    from cxr.infer.model import OnnxClassifier

    out = tmp_path / "plain.onnx"
    result = CliRunner().invoke(
        cxr_cli,
        [
            "export",
            "--from-onnx",
            str(fitted[0]),
            "--manifest",
            str(fitted[1]),
            "--out",
            str(out),
            "--no-guard",
            "--calibration",
            "temperature",
        ],
    )
    assert result.exit_code == 0, result.output
    model = OnnxClassifier(out, device="cpu")
    assert model.guard is None and model.info.contract.calibration.method == "temperature"
    assert model.info.contract.calibration.b == 0.0


def test_export_needs_a_manifest_and_one_source(tmp_path: Path, fitted) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        cxr_cli, ["export", "--from-onnx", str(fitted[0]), "--out", str(tmp_path / "x.onnx")]
    )
    assert missing.exit_code == 2 and "--manifest" in missing.output
    both = runner.invoke(
        cxr_cli,
        ["export", "--from-onnx", str(fitted[0]), "--run", str(tmp_path), "--out", str(tmp_path / "x.onnx")],
    )
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
    assert (
        f"domain guard: {int(outside.sum())} of {len(rows)} images outside the training domain"
        in result.output
    )
    assert "data shift: these images differ from the training data" in result.output
    meta = json.loads((out / "predictions.meta.json").read_text())
    assert meta["shift"]["shifted"] and meta["shift"]["n_images"] == len(rows)
    assert meta["n_outside_domain"] == int(outside.sum())


def test_foreign_skip_keeps_the_row_and_the_reason_but_no_probability(tmp_path: Path, fitted) -> None:
    folder = _foreign_folder(tmp_path)
    result = CliRunner().invoke(
        infer_main,
        [str(folder), "--model", str(fitted[0]), "--out", str(tmp_path / "o"), "--foreign", "skip"],
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype=str, keep_default_na=False)
    outside = rows["qc"].str.contains("outside training domain")
    assert len(rows) == 24 and outside.any()
    assert (rows.loc[outside, "p_PNEUMONIA"] == "").all() and (rows.loc[outside, "pred_label"] == "").all()
    assert (rows.loc[outside, "error"] == "").all()


def test_in_domain_images_are_rarely_flagged_and_show_no_shift(tmp_path: Path, fitted) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        infer_main,
        [
            str(tmp_path),
            "--model",
            str(fitted[0]),
            "--out",
            str(out),
            "--manifest",
            str(fitted[1]),
            "--split",
            "test",
            *QUICK,
        ],
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert rows["qc"].str.contains("outside training domain").mean() <= 0.2
    assert "data shift: none detected" in result.output


def test_a_model_without_a_guard_says_so(tmp_path: Path, tiny_model: Path, kaggle_folder: Path) -> None:
    result = CliRunner().invoke(
        infer_main, [str(kaggle_folder), "--model", str(tiny_model), "--out", str(tmp_path / "o"), *QUICK]
    )
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


@pytest.mark.slow  # over 5 s on 2 cores: two evaluations, each with its report
def test_evaluate_gates_on_data_shift(tmp_path: Path, fitted, tiny_model: Path) -> None:
    folder = _foreign_folder(tmp_path)
    for kind in ("NORMAL", "PNEUMONIA"):
        (folder / kind).mkdir()
    for index, path in enumerate(sorted(folder.glob("*.png"))):
        path.rename(folder / ("NORMAL", "PNEUMONIA")[index % 2] / path.name)
    args = [
        "evaluate",
        "--data",
        str(folder),
        "--history",
        str(tmp_path / "h.csv"),
        "--n-boot",
        "20",
        "--workers",
        "0",
    ]
    shifted = CliRunner().invoke(
        cxr_cli,
        [
            *args,
            "--model",
            str(fitted[0]),
            "--out",
            str(tmp_path / "e"),
            "--max-shift",
            "0.2",
            "--metrics-file",
            str(tmp_path / "m.prom"),
        ],
    )
    assert shifted.exit_code == 1, shifted.output
    assert "KS distance" in shifted.output
    prom = (tmp_path / "m.prom").read_text()
    assert "cxr_evaluate_shift_detected 1.0" in prom and "cxr_evaluate_images_outside_domain" in prom
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    domain = next(iter(metrics["models"].values()))["domain"]
    assert domain["shift"]["shifted"] and domain["n_flagged"] >= 1 and domain["flagged"]
    external = [r for r in metrics["checklist"] if r["item"] == "External testing"][0]["answer"]
    assert external.startswith("other source") and "differ from the training data" in external
    unguarded = CliRunner().invoke(
        cxr_cli, [*args, "--model", str(tiny_model), "--out", str(tmp_path / "u"), "--max-shift", "0.2"]
    )
    assert unguarded.exit_code == 2 and "needs a model with a domain guard" in unguarded.output


# -- the set-level test, the file checks and the DICOM header (no model needed) ------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def test_shift_test_tells_a_shifted_set_from_a_like_one() -> None:
    from cxr.shift import shift_test

    rng = np.random.default_rng(0)
    reference = np.sort(rng.lognormal(0, 0.3, 1000))
    like = shift_test(rng.lognormal(0, 0.3, 50), reference, threshold=2.0, expected_flag_rate=0.02)
    unlike = shift_test(rng.lognormal(1.0, 0.3, 50), reference, threshold=2.0, expected_flag_rate=0.02)
    assert not like.shifted and like.p_value > 0.05 and like.line().startswith("data shift: none detected")
    assert unlike.shifted and unlike.p_value < 0.001 and "p < 0.001" in unlike.line()
    assert unlike.flagged_share > 0.5 and f"{unlike.flagged_share:.0%} of images flagged" in unlike.line()
    assert shift_test(rng.lognormal(0, 0.3, 9), reference, 2.0, 0.02) is None  # too few for a verdict


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.01, 100, allow_nan=False), min_size=10, max_size=200),
    st.lists(st.floats(0.01, 100, allow_nan=False), min_size=10, max_size=200),
)
def test_shift_verdict_is_a_probability_and_round_trips(scores: list[float], reference: list[float]) -> None:
    from cxr.shift import ShiftVerdict, shift_test

    verdict = shift_test(np.array(scores + [np.nan]), reference, threshold=1.0, expected_flag_rate=0.02)
    assert verdict.n_images == len(scores)  # NaN (files that did not decode) are left out
    assert 0.0 <= verdict.p_value <= 1.0 and 0.0 <= verdict.statistic <= 1.0
    assert ShiftVerdict.from_dict(verdict.to_dict()) == verdict


ATTACKS_ON_THE_FILE = {  # (width, height, mode) -> the qc reason expected
    "tiny": ((40, 40, "L"), "tiny image (40x40)"),
    "screenshot strip": ((600, 120, "L"), "extreme aspect ratio (600x120)"),
    "colour photo": ((128, 128, "RGB"), "colour image"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS_ON_THE_FILE))
def test_file_checks_flag_what_cannot_be_a_chest_radiograph(tmp_path: Path, attack: str) -> None:
    from cxr.imaging import decode_or_error
    from cxr.infer.batch import errors_and_flags

    (width, height, mode), reason = ATTACKS_ON_THE_FILE[attack]
    rng = np.random.default_rng(0)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    path = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    decoded = [decode_or_error(path, 32)]
    _, flags = errors_and_flags(decoded, [str(path)])
    assert reason in flags[0]


@pytest.mark.parametrize(
    "tags,reason",
    [
        ({"Modality": "CT"}, "DICOM Modality CT"),
        ({"BodyPartExamined": "KNEE"}, "DICOM BodyPartExamined KNEE"),
        ({"ViewPosition": "LL"}, "DICOM ViewPosition LL"),
        ({"PatientAge": "054Y"}, "DICOM PatientAge 054Y outside the training population (1-5 years)"),
        ({"PatientAge": "003M"}, "DICOM PatientAge 003M outside the training population"),
    ],
)
def test_dicom_header_against_the_model(tmp_path: Path, tags: dict, reason: str) -> None:
    pydicom = pytest.importorskip("pydicom")
    from cxr.imaging import source_flags
    from tests.dicom_fixtures import write_dicom

    path = write_dicom(tmp_path / "x.dcm", np.full((64, 64), 2000, np.uint16))
    ds = pydicom.dcmread(str(path))
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)
    assert reason in source_flags(path)


def test_a_frontal_child_chest_dicom_gets_no_header_flag(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from cxr.imaging import source_flags
    from tests.dicom_fixtures import write_dicom

    path = write_dicom(tmp_path / "x.dcm", np.full((64, 64), 2000, np.uint16))
    ds = pydicom.dcmread(str(path))
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientAge = "CHEST", "AP", "003Y"
    ds.save_as(path)
    assert source_flags(path) == ""


# -- the shipped models on real data (skipped without ../shared) ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", ["model1", "model2"])
def test_shipped_guard_flags_other_sites_and_passes_the_test_split(
    tmp_path: Path, shared_data: Path, model: str
) -> None:
    from cxr.infer.model import OnnxClassifier
    from cxr.infer.score import score_folder

    shipped = OnnxClassifier(Path(__file__).resolve().parents[2] / "models" / f"{model}.onnx", device="cpu")
    assert shipped.guard is not None and shipped.info.contract.calibration is not None
    from cxr.foreign import outlier_fit_part

    sites = pd.read_csv(shared_data / "other_sites" / "MANIFEST.csv")["relpath"].tolist()
    share = shipped.guard.facts["site_classifier"]["outlier_share"]
    held_out = [p for p, fit in zip(sites, outlier_fit_part(sites, share)) if not fit][::4]  # 56 images
    other = score_folder(shared_data / "other_sites", shipped, tmp_path / "o.csv", only=held_out, workers=0)
    test = pd.read_csv(shared_data / "chest_xray" / "MANIFEST.csv")
    own = score_folder(
        shared_data / "chest_xray",
        shipped,
        tmp_path / "t.csv",
        workers=0,
        only=test.loc[test["kaggle_split"] == "test", "relpath"].tolist()[::6],
    )
    flagged = other.predictions["qc"].str.contains("outside training domain").mean()
    assert flagged >= 0.9, flagged  # patients the guard's site classifier did not learn from
    assert own.predictions["qc"].str.contains("outside training domain").mean() <= 0.05
    meta = json.loads((tmp_path / "o.meta.json").read_text())
    assert meta["shift"]["shifted"]


# -- refitting, options and mistakes of `cxr export --from-onnx` (found by a hostile review) -----------------


def _export(*args: str):
    return CliRunner().invoke(cxr_cli, ["export", *args])


def test_refitting_a_fixed_threshold_does_not_move_it(tmp_path: Path, fitted) -> None:
    from cxr.artifacts import ModelContract

    fixed = tmp_path / "fixed.onnx"
    assert (
        _export(
            "--from-onnx",
            str(fitted[0]),
            "--manifest",
            str(fitted[1]),
            "--out",
            str(fixed),
            "--threshold",
            "0.4",
        ).exit_code
        == 0
    )
    thresholds = [ModelContract.from_file(fixed).threshold]
    for _ in range(2):
        result = _export("--from-onnx", str(fixed), "--manifest", str(fitted[1]), "--out", str(fixed))
        assert result.exit_code == 0, result.output
        thresholds.append(ModelContract.from_file(fixed).threshold)
    assert thresholds == pytest.approx([0.4, 0.4, 0.4], abs=1e-6)


def test_threshold_options_apply_to_from_onnx(tmp_path: Path, fitted) -> None:
    from cxr.artifacts import ModelContract

    out = tmp_path / "o.onnx"
    result = _export(
        "--from-onnx",
        str(fitted[0]),
        "--manifest",
        str(fitted[1]),
        "--out",
        str(out),
        "--threshold",
        "val",
        "--threshold-rule",
        "point",
        "--target-recall",
        "0.5",
    )
    assert result.exit_code == 0, result.output
    rule = ModelContract.from_file(out).threshold_rule
    assert rule["rule"] == "point" and rule["target_recall"] == 0.5


def test_neither_guard_nor_calibration_takes_them_out(tmp_path: Path, fitted) -> None:
    from cxr.infer.model import OnnxClassifier

    out = tmp_path / "bare.onnx"
    result = _export(
        "--from-onnx",
        str(fitted[0]),
        "--manifest",
        str(fitted[1]),
        "--out",
        str(out),
        "--no-guard",
        "--calibration",
        "none",
    )
    assert result.exit_code == 0 and "taken out" in result.output, result.output
    model = OnnxClassifier(out, device="cpu")
    assert model.guard is None and model.info.contract.calibration is None


@pytest.mark.parametrize(
    "attack", ["garbage manifest", "missing image", "garbage model", "no manifest", "tiny validation split"]
)
def test_export_mistakes_are_one_line_usage_errors(tmp_path: Path, fitted, attack: str) -> None:
    model, manifest = fitted
    frame = pd.read_csv(manifest)
    if attack == "garbage manifest":
        manifest = tmp_path / "g.csv"
        manifest.write_text("a,b\n1,2\n")
    elif attack == "missing image":
        frame.loc[frame["split"] == "val", "path"] = "images/none.png"
        frame.to_csv(manifest, index=False)
    elif attack == "garbage model":
        model = tmp_path / "g.onnx"
        model.write_text("not a model")
    elif attack == "tiny validation split":
        frame.loc[frame.index[frame["split"] == "val"][3:], "split"] = "train"
        frame.to_csv(manifest, index=False)
    args = ["--from-onnx", str(model), "--out", str(tmp_path / "o.onnx")]
    args += [] if attack == "no manifest" else ["--manifest", str(manifest)]
    result = _export(*args)
    assert result.exit_code == 2, (attack, result.output)
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output


def test_a_tampered_guard_is_refused(tmp_path: Path, fitted) -> None:
    import onnx

    from cxr.infer.model import ModelLoadError, OnnxClassifier

    proto = onnx.load(str(fitted[0]))
    for prop in proto.metadata_props:
        if prop.key == "cxr.guard":
            guard = json.loads(prop.value)
            guard["reference_scores"] = [float("nan")] * 30
            prop.value = json.dumps(guard)
    onnx.save(proto, str(tmp_path / "nan.onnx"))
    with pytest.raises(ModelLoadError, match="finite"):
        OnnxClassifier(tmp_path / "nan.onnx", device="cpu")


def test_skipped_images_are_not_counted_as_scored(tmp_path: Path, fitted) -> None:
    folder = _foreign_folder(tmp_path)
    result = CliRunner().invoke(
        infer_main,
        [str(folder), "--model", str(fitted[0]), "--out", str(tmp_path / "o"), "--foreign", "skip"],
    )
    rows = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype=str, keep_default_na=False)
    skipped = int((rows["p_PNEUMONIA"] == "").sum())
    assert (
        skipped
        and f"scored {len(rows) - skipped}/{len(rows)} files, {skipped} left unscored" in result.output
    )


def test_fewer_than_ten_images_say_the_shift_was_not_tested(tmp_path: Path, fitted) -> None:
    folder = _foreign_folder(tmp_path, n=3)
    result = CliRunner().invoke(
        infer_main, [str(folder), "--model", str(fitted[0]), "--out", str(tmp_path / "o")]
    )
    assert "data shift: not tested (fewer than 10 images" in result.output


def test_training_images_are_not_a_shift(tmp_path: Path, fitted) -> None:
    """The one-sided test: images scoring lower than the reference (the training images themselves)
    are not called shifted."""
    frame = pd.read_csv(fitted[1])
    frame["split"] = frame["split"].replace({"train": "test", "test": "unused"})
    frame.to_csv(tmp_path / "as_test.csv", index=False)
    result = CliRunner().invoke(
        infer_main,
        [
            str(tmp_path),
            "--model",
            str(fitted[0]),
            "--out",
            str(tmp_path / "o"),
            "--manifest",
            str(tmp_path / "as_test.csv"),
            "--split",
            "test",
            *QUICK,
        ],
    )
    assert "data shift: none detected" in result.output, result.output


def test_a_guard_is_not_fitted_on_too_few_validation_images() -> None:
    from cxr.export.graph_edit import GraphEditError
    from cxr.export.trust import MIN_GUARD_VAL, fit_guard

    rng = np.random.default_rng(0)
    train, val = [rng.normal(size=(60, 4))], [rng.normal(size=(MIN_GUARD_VAL - 1, 4))]
    with pytest.raises(GraphEditError, match="--no-guard"):
        fit_guard(["tap"], train, val, 0.02)
    assert fit_guard(["tap"], train, [rng.normal(size=(MIN_GUARD_VAL, 4))], 0.02).threshold > 0


# -- the site classifier (cxr export --guard-outliers) ----------------------------------------------------


def _other_site(root: Path, n: int) -> Path:
    """Chest-like images of another 'site': the same kind of picture, brighter and with a border."""
    rng = np.random.default_rng(11)
    folder = root / "other_site"
    folder.mkdir()
    for index in range(n):
        chest = synthetic_xray(rng, bool(index % 2), 96).astype(np.int16)
        chest = np.clip(chest * 0.6 + 100, 0, 255).astype(np.uint8)
        chest[:8], chest[-8:] = 255, 0
        Image.fromarray(chest).save(folder / f"site_p{index:03d}-1.png")
    return folder


def _with_outliers(tmp_path: Path, fitted, folder: Path, *extra: str):
    base = make_tiny_backbone(tmp_path / "base2.onnx", SIZE)
    out = tmp_path / "site.onnx"
    args = ["--from-onnx", str(base), "--manifest", str(fitted[1]), "--out", str(out)]
    return _export(*args, "--guard-false-flags", "0.05", "--guard-outliers", str(folder), *extra), out


def test_a_site_classifier_is_fitted_on_half_the_outlier_patients_and_folded_in(
    tmp_path: Path, fitted
) -> None:
    from cxr.foreign import outlier_fit_part
    from cxr.imaging import list_images
    from cxr.infer.model import OnnxClassifier

    folder = _other_site(tmp_path, 60)
    result, out = _with_outliers(tmp_path, fitted, folder)
    assert result.exit_code == 0, result.output
    chosen = int(outlier_fit_part([str(p) for p in list_images(folder)], 0.5).sum())
    assert f"site classifier on {chosen} images of" in result.output
    guarded = OnnxClassifier(out, device="cpu")
    assert guarded.guard.method == "mahalanobis-multi-depth+site-classifier"
    assert guarded.guard.facts["site_classifier"]["n_other_site_images"] == chosen
    # the score is the larger of the Gaussian's and the classifier's: never below the Gaussian alone
    plain = OnnxClassifier(fitted[0], device="cpu")
    images = np.stack(
        [np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE))) for p in list_images(folder)]
    )
    assert (guarded.predict_with_domain(images)[1] >= plain.predict_with_domain(images)[1] * (1 - 1e-4)).all()


def test_the_site_classifier_flags_the_held_out_patients_of_the_other_site(tmp_path: Path, fitted) -> None:
    from cxr.foreign import outlier_fit_part
    from cxr.imaging import list_images
    from cxr.infer.model import OnnxClassifier

    folder = _other_site(tmp_path, 60)
    result, out = _with_outliers(tmp_path, fitted, folder)
    assert result.exit_code == 0, result.output
    paths = list_images(folder)
    held_out = [p for p, fit in zip(paths, outlier_fit_part([str(p) for p in paths], 0.5)) if not fit]
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE))) for p in held_out])
    model = OnnxClassifier(out, device="cpu")
    assert np.mean([model.guard.is_foreign(s) for s in model.predict_with_domain(images)[1]]) >= 0.9


@pytest.mark.parametrize(
    "attack, expected",
    [("too few images", "needs at least 20"), ("not a folder", "is not a folder")],
)
def test_bad_outlier_folders_are_one_line_errors(tmp_path: Path, fitted, attack: str, expected: str) -> None:
    folder = _other_site(tmp_path, 6) if attack == "too few images" else tmp_path / "missing"
    result, out = _with_outliers(tmp_path, fitted, folder)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output and not out.exists()


def test_the_model_records_which_patients_the_classifier_learnt_from(tmp_path: Path, fitted) -> None:
    from cxr.foreign import not_learnt_from, outlier_fit_part
    from cxr.imaging import list_images
    from cxr.infer.model import OnnxClassifier

    folder = _other_site(tmp_path, 60)
    result, out = _with_outliers(tmp_path, fitted, folder)
    assert result.exit_code == 0, result.output
    paths = [str(p) for p in list_images(folder)]
    facts = OnnxClassifier(out, device="cpu").guard.facts
    assert len(facts["site_classifier"]["patients_sha256"]) == int(outlier_fit_part(paths, 0.5).sum())
    assert sorted(not_learnt_from(paths, facts)) == sorted(
        p for p, fit in zip(paths, outlier_fit_part(paths, 0.5)) if not fit
    )
    assert not any("site_p" in key for key in facts["site_classifier"]["patients_sha256"])  # hashed


def test_outliers_without_a_guard_is_a_usage_error(tmp_path: Path, fitted) -> None:
    result, out = _with_outliers(tmp_path, fitted, _other_site(tmp_path, 60), "--no-guard")
    assert result.exit_code == 2 and "--no-guard" in result.output and not out.exists()


def test_using_every_outlier_patient_warns_that_none_is_left_to_measure(tmp_path: Path, fitted) -> None:
    result, _ = _with_outliers(tmp_path, fitted, _other_site(tmp_path, 30), "--guard-outlier-share", "1")
    assert result.exit_code == 0, result.output
    assert "none is left out to measure the guard on" in result.output
