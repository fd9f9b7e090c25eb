"""The one engine interface (both engines implement ``Engine``; ``make_engine`` refuses an option
an engine does not take), what the two engines share and how each fails, without starting Ray: the
cluster's address, the file list, damaged shards, a model error on the cluster, and a resume
across engines (infer/engine.py, infer/score.py, infer/ray_engine.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cxr.app.infer import infer
from tests.onnx_fixtures import make_tiny_model
from tests.synthetic import make_dataset


def test_an_unreachable_ray_address_fails_fast_with_one_line() -> None:
    from cxr.infer.ray_engine import RayRunFailed, check_reachable

    started = time.monotonic()
    with pytest.raises(RayRunFailed, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        check_reachable("127.0.0.1:1", timeout=5)
    with pytest.raises(RayRunFailed):
        check_reachable("ray://127.0.0.1:1", timeout=5)
    assert time.monotonic() - started < 11
    check_reachable("auto")  # left to Ray


def test_a_csv_list_honours_the_manifest_split(tmp_path: Path) -> None:
    from cxr.infer.ray_engine import list_source

    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": [f"a/{i}.png" for i in range(6)]}).to_csv(listing, index=False)
    assert len(list_source(str(listing)).rels) == 6
    assert list_source(str(listing), only=["a/1.png", "a/4.png"]).rels == ["a/1.png", "a/4.png"]


def test_damaged_shards_are_scored_again_and_damaged_settings_refused(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="the shards are parquet files: the [ray] extra")
    from cxr.artifacts import Predictions
    from cxr.artifacts.scoring_settings import ScoringSettings
    from cxr.infer.ray_engine import _readable_shards
    from cxr.infer.score import ScoreInputError

    shards = tmp_path / "shards"
    recorded = ScoringSettings.from_json({"classes": ["NORMAL", "PNEUMONIA"]})
    Predictions.start_shards(shards, recorded)
    good = [Predictions.row("a.png", 0.2, ["NORMAL", "PNEUMONIA"], 0.5, model_sha256="0" * 64)]
    Predictions.write_shard(shards, good, "PNEUMONIA")
    (shards / "shard-99999999999999999999-deadbeef.parquet").write_bytes(b"PAR1 not really")
    settings, rows = _readable_shards(shards)
    assert settings == recorded and settings.classes == ("NORMAL", "PNEUMONIA") and list(rows) == ["a.png"]
    (shards / Predictions.SHARD_SETTINGS).write_text("{cut")
    with pytest.raises(ScoreInputError, match="damaged"):
        _readable_shards(shards)


def test_a_model_error_on_the_cluster_is_the_models_fault() -> None:
    from cxr.infer.model import ModelOutputError
    from cxr.infer.ray_engine import _user_error_inside

    class RayTaskError(Exception):  # Ray's wrapper keeps the original as .cause
        def __init__(self, cause):
            super().__init__(f"ray task failed: {cause}")
            self.cause = cause

    inner = ModelOutputError("m.onnx returned 134.2, which is not a probability in [0, 1]")
    assert _user_error_inside(RayTaskError(inner)) is inner
    text_only = Exception(
        "Traceback ...\ncxr.infer.model.ModelOutputError: m.onnx returned 134.2, which is not"
    )
    assert "returned 134.2" in str(_user_error_inside(text_only))
    assert _user_error_inside(Exception("node died")) is None


def test_resume_across_engines_is_refused_and_leftovers_are_cleared(tmp_path: Path) -> None:
    from cxr.artifacts import Predictions
    from cxr.artifacts.scoring_settings import ScoringSettings

    folder = make_dataset(tmp_path / "data", n_patients=3, images_per_patient=1)
    model = make_tiny_model(tmp_path / "m.onnx")
    out = tmp_path / "o"
    shards = Predictions.shards_path(out / "predictions.csv")
    Predictions.start_shards(shards, ScoringSettings.from_json({"engine": "ray"}))
    args = [str(folder), "--model", str(model), "--out", str(out), "-q", "--workers", "0", "--no-report"]
    refused = CliRunner().invoke(infer, [*args, "--resume"])
    assert refused.exit_code == 2 and "used --engine ray" in refused.output
    fresh = CliRunner().invoke(infer, args)
    assert fresh.exit_code == 0 and not shards.exists()


def test_both_engines_implement_the_one_engine_interface() -> None:
    """Each engine is an ``Engine`` with the shared ``score``, its own listing and scoring, and only
    its own options; the ray engine reaches the shared pieces through cxr.infer.engine, not score.py."""
    import inspect

    from cxr.infer.engine import ENGINES, Engine, engine_class, make_engine
    from tests.project.test_layout import ROOT, imports_of

    expected = {"local": ("workers",), "ray": ("address", "gpus_per_actor", "timeout")}
    assert set(ENGINES) == set(expected)
    for name in ENGINES:
        cls = engine_class(name)
        assert issubclass(cls, Engine) and not inspect.isabstract(cls) and cls.name == name
        assert cls.score is Engine.score  # the shared steps (listing, settings, already complete) run once
        assert cls._list is not Engine._list and cls._score is not Engine._score
        assert cls.options() == expected[name]
        assert isinstance(make_engine(name), cls)
    assert make_engine("local", workers=3).workers == 3
    ray_engine = make_engine("ray", address="auto", gpus_per_actor=0.5, timeout=5)
    assert (ray_engine.address, ray_engine.gpus_per_actor, ray_engine.timeout) == ("auto", 0.5, 5)
    assert "cxr.infer.score" not in imports_of(ROOT / "infer" / "ray_engine.py")


@pytest.mark.parametrize(
    ("name", "options", "refused"),
    [
        ("ray", {"workers": 2}, "'workers'"),
        ("local", {"address": "auto", "timeout": 5}, "'address', 'timeout'"),
        ("local", {"gpus_per_actor": 1.0}, "'gpus_per_actor'"),
    ],
)
def test_make_engine_refuses_an_option_the_engine_does_not_take(
    name: str, options: dict, refused: str
) -> None:
    from cxr.infer.engine import EngineOptionError, make_engine
    from cxr.infer.score import ScoreInputError

    with pytest.raises(EngineOptionError) as caught:
        make_engine(name, **options)
    message = str(caught.value)
    assert (
        message.startswith(f"the {name} engine does not take {refused} (its options: ")
        and "\n" not in message
    )
    assert isinstance(caught.value, ScoreInputError)  # a usage error (exit 2) on the command line
    with pytest.raises(EngineOptionError, match="unknown engine 'spark' \\(engines: local, ray\\)"):
        make_engine("spark")


def test_given_options_leave_out_only_what_was_not_set() -> None:
    """A command line passes every engine option, unset ones as None or at their default; only
    those reach ``make_engine``, so an unset option never trips the refusal and a set one is never dropped."""
    from cxr.infer.engine import given_options

    assert given_options(workers=None, address=None, gpus_per_actor=None, timeout=60.0) == {}
    assert given_options(workers=0, address=None, gpus_per_actor=0.5, timeout=5) == {
        "workers": 0,
        "gpus_per_actor": 0.5,
        "timeout": 5,
    }


def test_an_option_of_the_other_engine_is_a_one_line_usage_error(tmp_path: Path) -> None:
    """``--workers`` with ``--engine ray`` (and a Ray option with the local engine) is refused
    before anything is scored, not silently dropped."""
    folder = make_dataset(tmp_path / "data", n_patients=2, images_per_patient=1)
    model = make_tiny_model(tmp_path / "m.onnx")
    base = [str(folder), "--model", str(model), "-q", "--no-report"]
    for extra, refused in (
        (["--engine", "ray", "--workers", "2"], "the ray engine does not take 'workers'"),
        (["--ray-address", "auto"], "the local engine does not take 'address'"),
    ):
        out = tmp_path / f"o{len(extra)}"
        result = CliRunner().invoke(infer, [*base, "--out", str(out), *extra])
        assert result.exit_code == 2 and refused in result.output, result.output
        assert "Traceback" not in result.output and not (out / "predictions.csv").exists()
