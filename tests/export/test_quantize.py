"""`cxr quantize`: an INT8 copy behind an accuracy gate, with the guard refitted and the calibration kept
(export/quantize.py, app/quantize.py), on the tiny EfficientNet-shaped model of tests/onnx_fixtures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.app.cli import cxr as cxr_cli
from tests.export.test_trust import SIZE, fitted  # noqa: F401 - fitted: a fixture, used below

# The untrained tiny model on 30 validation images is far more fragile than a trained one: the tests
# use loose limits for it, and show that a broken calibration breaks them.
LOOSE = ("--max-flips", "0.2", "--max-auc-drop", "0.1")


@pytest.fixture()
def trusted(fitted: tuple[Path, Path]) -> tuple[Path, Path]:  # noqa: F811 - the fixture imported above
    """(a tiny model with its guard and calibration, fitted by `cxr export --from-onnx`; its manifest)."""
    return fitted


def _quantize(model: Path, manifest: Path, *args: str):
    return CliRunner().invoke(
        cxr_cli, ["quantize", "--model", str(model), "--manifest", str(manifest), *args]
    )


def test_a_passing_quantization_writes_a_model_that_inference_reads(tmp_path: Path, trusted) -> None:
    import onnx

    from cxr.app.infer import infer as infer_main
    from cxr.artifacts import ModelContract
    from cxr.files import sha256_file
    from cxr.infer.model import OnnxClassifier

    model, manifest = trusted
    result = _quantize(model, manifest, "--float-groups", "none", *LOOSE)
    assert result.exit_code == 0, result.output
    out = tmp_path / "trusted.int8.onnx"
    assert "int8 gate on the validation split, 30 images" in result.output and "-> passed" in result.output
    graph = onnx.load(str(out)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert not any(
        n.op_type == "DequantizeLinear" and n.output[0].startswith(("guard", "calibration"))
        for n in graph.node
    )  # the guard's and the calibration's own tensors stay float

    fp32, int8 = ModelContract.from_file(model), ModelContract.from_file(out)
    q = int8.quantization
    assert (q.dtype, q.format) == ("int8", "QDQ") and q.facts["weights"].endswith("per output channel")
    assert "MinMax" in q.method and q.gate["passed"] and q.source_sha256 == sha256_file(model)
    val = pd.read_csv(manifest).query("split == 'val'")["path"]
    assert q.calibration_set == {
        "split": "val",
        "count": len(val),
        "paths_sha256": hashlib.sha256("\n".join(sorted(val)).encode()).hexdigest(),
    }
    assert (int8.calibration.a, int8.calibration.b) == (fp32.calibration.a, fp32.calibration.b)
    assert q.facts["calibration_check"]["same_mapping"] and int8.threshold == fp32.threshold
    assert int8.guard.threshold > 0 and "int8_refit" in int8.guard.facts
    assert json.loads((tmp_path / "trusted.int8.quantization.json").read_text())["gate"]["passed"]

    classifier = OnnxClassifier(out, device="cpu")
    p, domain = classifier.predict_with_domain(np.full((2, SIZE, SIZE, 3), 90, np.uint8))
    assert np.all((p >= 0) & (p <= 1)) and np.all(domain > 0)
    scored = CliRunner().invoke(
        infer_main,
        [
            str(tmp_path / "images"),
            "--model",
            str(out),
            "--out",
            str(tmp_path / "scored"),
            "--quiet",
            "--no-report",
        ],
    )
    assert scored.exit_code == 0, scored.output
    rows = pd.read_csv(tmp_path / "scored" / "predictions.csv")
    assert len(rows) == 120 and rows["error"].isna().all() and rows["model"].eq("trusted.int8.onnx").all()


def test_the_gate_refuses_a_broken_calibration_and_writes_nothing(
    tmp_path: Path, trusted, monkeypatch
) -> None:
    """Calibration images scaled to a sixteenth of their brightness: the activation ranges are far too
    narrow, real images saturate them, and the gate fails with one line and exit 2."""
    from cxr.export import quantize

    model, manifest = trusted
    real = quantize.load_split

    def dimmed(manifest, split, size, positive, limit=None):
        found = real(manifest, split, size, positive, limit)
        return (
            quantize.LabelledImages(found.split, found.images // 16, found.labels, found.paths)
            if limit
            else found
        )

    monkeypatch.setattr(quantize, "load_split", dimmed)
    result = _quantize(model, manifest, "--float-groups", "none", "--calibration-images", "30", *LOOSE)
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(
        "Error: int8 gate failed with the whole backbone int8: validation split, 30 images"
    )
    assert error.endswith("-> FAILED; no file written")
    assert not list(tmp_path.glob("trusted.int8*"))


def test_a_constant_calibration_fails_the_gate_through_the_core(tmp_path: Path, trusted) -> None:
    """Black calibration images: every activation range collapses to zero."""
    from cxr.export.quantize import GateFailed, LabelledImages, Search, quantize_model

    model, manifest = trusted
    flat = LabelledImages(
        "val",
        np.zeros((32, SIZE, SIZE, 3), np.uint8),
        np.zeros(32, int),
        tuple(f"flat{i}.png" for i in range(32)),
    )
    with pytest.raises(GateFailed, match="no file written"):
        quantize_model(
            model,
            tmp_path / "flat.onnx",
            manifest,
            float_groups=[],
            calibration=flat,
            search=Search(max_auc_drop=0.1, max_flip_share=0.2),
        )
    assert not (tmp_path / "flat.onnx").exists()


def test_auto_keeps_the_most_sensitive_groups_float_until_the_limit(tmp_path: Path, trusted) -> None:
    model, manifest = trusted
    result = _quantize(model, manifest, "--max-float-groups", "1", "--max-flips", "0", "--max-auc-drop", "0")
    assert result.exit_code == 2
    assert "sensitivity (mean |dp|, one group int8):" in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: int8 gate failed with block")


@pytest.mark.parametrize(
    "args, message",
    [
        (("--float-groups", "block99"), "no group 'block99' in this backbone"),
        (("--out", "{model}"), "--out is the fp32 model itself"),
    ],
)
def test_quantize_mistakes_are_one_line_usage_errors(trusted, args, message) -> None:
    model, manifest = trusted
    result = _quantize(model, manifest, *(a.format(model=model) for a in args))
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) <= 2  # at most the progress line, then the error


def test_an_int8_model_is_not_quantized_again(tmp_path: Path, trusted) -> None:
    model, manifest = trusted
    assert _quantize(model, manifest, "--float-groups", "none", *LOOSE).exit_code == 0
    again = _quantize(tmp_path / "trusted.int8.onnx", manifest, "--out", str(tmp_path / "twice.onnx"))
    assert again.exit_code == 2 and "already quantized" in again.output


def test_a_model_without_guard_or_calibration_is_quantized_as_it_is(tmp_path: Path, trusted) -> None:
    from cxr.artifacts import ModelContract

    _, manifest = trusted
    result = _quantize(tmp_path / "base.onnx", manifest, "--float-groups", "none", *LOOSE)
    assert result.exit_code == 0, result.output
    int8 = ModelContract.from_file(tmp_path / "base.int8.onnx")
    assert int8.guard is None and int8.calibration is None and int8.quantization.gate["passed"]
    assert "domain guard: validation" not in result.output and "kept; same mapping" not in result.output


def test_the_guards_mean_of_squares_is_fused_without_changing_the_score(tmp_path: Path, trusted) -> None:
    """ReduceMean(x * x) at each guard tap becomes ReduceSumSquare(x) / (H * W): the same domain score
    and probability, no squared copy of a tap left, and the INT8 copy records the taps rewritten."""
    import onnx
    import onnxruntime as ort

    from cxr.artifacts import ModelContract
    from cxr.export.quantize import fuse_guard_squares, preprocess

    model, manifest = trusted
    pre = tmp_path / "pre.onnx"
    preprocess(model, pre)
    proto = onnx.load(str(pre))
    taps = fuse_guard_squares(proto)
    assert len(taps) == 4
    assert not any(n.op_type == "Mul" and n.output[0].endswith("_sq") for n in proto.graph.node)
    assert (
        sum(n.op_type == "ReduceSumSquare" and n.output[0].endswith("_sumsq") for n in proto.graph.node) == 4
    )
    onnx.checker.check_model(proto)
    images = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    names = ["probability", "domain_score"]

    def run(source) -> list[np.ndarray]:
        return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(names, {"pixels": images})

    (p0, d0), (p1, d1) = run(str(model)), run(proto.SerializeToString())
    np.testing.assert_allclose(p1, p0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d1, d0, rtol=1e-5)
    assert fuse_guard_squares(proto) == []  # nothing left to rewrite

    assert _quantize(model, manifest, "--float-groups", "none", *LOOSE).exit_code == 0
    assert ModelContract.from_file(tmp_path / "trusted.int8.onnx").quantization.facts["guard_taps_fused"] == 4
