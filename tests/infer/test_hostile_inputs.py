"""Hostile files and models given to ``cxr-infer``: each test is one attack and what must happen.

A bad file is one error row (exit 1) or a flagged row; a bad model is one line and exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.artifacts import unescape_path
from tests.attacks import gray_folder, kill_after, rows_of, run_infer
from tests.onnx_fixtures import make_tiny_model


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return gray_folder(tmp_path)


# a file name that is not UTF-8 --------------------------------------------------------------------


def test_attack_non_utf8_file_name_is_scored_and_written_reversibly(
    tmp_path: Path, folder: Path, tiny_model: Path
) -> None:
    raw = os.fsencode(folder / "NORMAL") + b"/IM-0500-\xe9.png"
    Image.fromarray(np.full((40, 40), 40, np.uint8)).save(os.fsdecode(raw))
    out = tmp_path / "out"
    result = run_infer(folder, tiny_model, out, report=True)
    assert result.exit_code == 0, result.output
    paths = list(rows_of(out)["path"])
    assert "NORMAL/IM-0500-\\xe9.png" in paths
    assert os.fsencode(folder / unescape_path("NORMAL/IM-0500-\\xe9.png")) == raw
    kill_after(out, 3)
    assert run_infer(folder, tiny_model, out, "--resume").exit_code == 0
    assert list(rows_of(out)["path"]) == paths


# model metadata is validated, outputs are checked -------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        {"threshold": "abc"},
        {"input_size": "abc"},
        {"classes": ["PNEUMONIA"]},
        {"threshold": float("nan")},
        {"threshold": 2},
        {"classes": "PNEU"},
        {"resize_rule": "crop-center"},
        {"classes": ["A", "A"]},
        {"positive_class": "NORMAL"},
    ],
)
def test_attack_bad_model_metadata_is_a_usage_error(tmp_path: Path, folder: Path, metadata: dict) -> None:
    model = make_tiny_model(tmp_path / "bad.onnx", metadata=metadata)
    result = run_infer(folder, model, tmp_path / "out")
    assert result.exit_code == 2 and "bad cxr metadata" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_attack_foreign_graph_with_copied_metadata(tmp_path: Path, folder: Path) -> None:
    model = make_tiny_model(tmp_path / "foreign.onnx", scale=0.0, centre=0.0)  # sigmoid(0) = 0.5: fine
    import onnx
    from onnx import helper

    proto = onnx.load(str(model))
    sigmoid = next(n for n in proto.graph.node if n.op_type == "Sigmoid")
    proto.graph.node.remove(sigmoid)
    proto.graph.node.append(helper.make_node("Add", ["z", "centre"], ["raw"]))
    proto.graph.node.append(
        helper.make_node("ReduceMean", ["x"], ["probability_mean"], axes=[1, 2, 3], keepdims=0)
    )
    proto.graph.node.append(helper.make_node("Identity", ["probability_mean"], ["probability"]))
    onnx.save(proto, str(model))
    result = run_infer(folder, model, tmp_path / "out")
    assert result.exit_code == 2 and "not a probability" in result.output


# files that are not one readable image ------------------------------------------------------------


def test_attack_broken_symlink_and_symlink_loop_get_rows(
    tmp_path: Path, folder: Path, tiny_model: Path
) -> None:
    (folder / "NORMAL" / "gone.png").symlink_to(folder / "nowhere.png")
    (folder / "NORMAL" / "loop.png").symlink_to(folder / "NORMAL" / "loop.png")
    out = tmp_path / "out"
    result = run_infer(folder, tiny_model, out)
    assert result.exit_code == 1
    errors = rows_of(out).set_index("path")["error"]
    assert (
        errors["NORMAL/gone.png"] == "broken symbolic link"
        and errors["NORMAL/loop.png"] == "symbolic link loop"
    )


def test_attack_multi_page_tiff(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    pages = [Image.fromarray(np.full((40, 40), v, np.uint8)) for v in (40, 140, 90)]
    pages[0].save(folder / "NORMAL" / "stack.tif", save_all=True, append_images=pages[1:])
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 1
    assert "multi-page TIFF (3 pages)" in rows_of(out).set_index("path").loc["NORMAL/stack.tif", "error"]


def test_attack_blank_image_is_flagged(tmp_path: Path, folder: Path, tiny_model: Path) -> None:
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "NORMAL" / "blank.png")
    out = tmp_path / "out"
    assert run_infer(folder, tiny_model, out).exit_code == 0
    rows = rows_of(out).set_index("path")
    assert rows.loc["NORMAL/blank.png", "qc"].startswith("uniform image")
    assert rows.loc["NORMAL/blank.png", "p_PNEUMONIA"] != ""  # scored, and flagged
    # noisy real-like images are not uniform (these 40 px fixtures are flagged as tiny, which they are)
    assert not rows.drop("NORMAL/blank.png")["qc"].str.contains("uniform").any()


# probabilities that rank --------------------------------------------------------------------------


def test_attack_probabilities_keep_enough_digits_to_rank(tmp_path: Path, folder: Path) -> None:
    model = make_tiny_model(tmp_path / "steep.onnx", scale=0.1, centre=30.0)  # PNEUMONIA: p = 1 - ~2e-5
    out = tmp_path / "out"
    assert run_infer(folder, model, out).exit_code == 0
    rows = rows_of(out)
    p = rows.loc[rows["true_label"] == "PNEUMONIA", "p_PNEUMONIA"]
    assert p.nunique() == len(p)  # every image keeps its own rank
    assert p.astype(float).round(6).nunique() < len(p)  # which 6 decimals would have lost
