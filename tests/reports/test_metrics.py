from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr.reports.metrics import binary_metrics, bootstrap_ci, expected_calibration_error, threshold_table


@pytest.fixture
def scored():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 400), 0, 1)
    return y, p


def test_metrics_match_sklearn(scored) -> None:
    y, p = scored
    m = binary_metrics(y, p, 0.5)
    pred = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert m["loss"] == pytest.approx(skm.log_loss(y, p))


def test_roc_auc_uses_probabilities_not_labels() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])  # at 0.5 the hard labels would give AUC 0.75
    assert binary_metrics(y, p)["roc_auc"] == pytest.approx(0.75)
    assert binary_metrics(y, np.array([0.1, 0.2, 0.3, 0.4]))["roc_auc"] == pytest.approx(1.0)


def test_ece_of_known_arrays() -> None:
    y = np.array([0, 1, 1, 1])
    p = np.array([0.05, 0.95, 0.95, 0.95])  # bins 0 and 9: |0-0.05|*1 + |1-0.95|*3 over 4
    assert expected_calibration_error(y, p) == pytest.approx(0.05)


def test_bootstrap_cis_contain_point_estimates(scored) -> None:
    y, p = scored
    groups = [f"pt{i // 2}" for i in range(len(y))]
    point = binary_metrics(y, p, 0.5)
    ci = bootstrap_ci(y, p, 0.5, groups, n_boot=200, seed=0)
    for name in ("accuracy", "recall", "specificity", "roc_auc", "f1", "brier"):
        low, high = ci[name]
        assert low <= point[name] <= high
        assert high - low > 0


def test_bootstrap_is_seeded(scored) -> None:
    y, p = scored
    assert bootstrap_ci(y, p, 0.5, n_boot=50, seed=4) == bootstrap_ci(y, p, 0.5, n_boot=50, seed=4)


def test_point_threshold_reaches_the_target(scored) -> None:
    from cxr.thresholds import choose_threshold

    y, p = scored
    for target in (0.8, 0.95, 1.0):
        t = choose_threshold(y, p, target, rule="point").threshold
        assert binary_metrics(y, p, t)["recall"] >= target
        # and it is the highest such threshold: a hair above loses recall below target
        assert binary_metrics(y, p, t + 1e-9)["recall"] < target


def test_wilson_threshold_puts_the_lower_bound_of_recall_on_the_target(scored) -> None:
    from cxr.thresholds import choose_threshold, wilson_interval

    y, p = scored
    facts = choose_threshold(y, p, 0.9, rule="wilson")
    t = facts.threshold
    positives = int((y == 1).sum())
    reached = int(((p >= t) & (y == 1)).sum())
    assert wilson_interval(reached, positives)[0] >= 0.9 and facts.val_recall_wilson95[0] >= 0.9
    # the highest such threshold: one positive fewer and the lower bound falls below the target
    assert wilson_interval(reached - 1, positives)[0] < 0.9
    assert t <= choose_threshold(y, p, 0.9, rule="point").threshold


def test_wilson_interval_matches_the_textbook_formula() -> None:
    from cxr.thresholds import wilson_interval

    k, n, z = 95, 100, 1.959963984540054
    centre, half = (k + z * z / 2) / (n + z * z), z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)


def test_too_few_positives_for_the_margin_is_a_clear_error() -> None:
    from cxr.thresholds import ThresholdError, choose_threshold

    with pytest.raises(ThresholdError, match="too few"):
        choose_threshold(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1]), 0.95)


def test_threshold_table_rows(scored) -> None:
    y, p = scored
    rows = threshold_table(y, p, [0.2, 0.5, 0.8])
    assert [r.threshold for r in rows] == [0.2, 0.5, 0.8]
    assert rows[0].recall >= rows[1].recall >= rows[2].recall


def test_a_model_without_a_recorded_rule_is_not_called_fixed(tmp_path) -> None:
    from cxr.artifacts import ModelContract
    from cxr.thresholds import describe_rule
    from tests.onnx_fixtures import make_tiny_model

    path = make_tiny_model(tmp_path / "old.onnx")
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != "cxr.threshold_rule"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(path))
    contract = ModelContract.from_file(path)
    assert contract.threshold_rule == {"rule": "unrecorded"}
    text = describe_rule({"threshold": contract.threshold, **contract.threshold_rule})
    assert "not recorded" in text and "fixed" not in text


def test_the_validation_threshold_reads_what_a_run_folder_writes(tmp_path) -> None:
    """Regression: training wrote val_predictions.csv in the Predictions schema while export's
    threshold reader still wanted the legacy ``label`` column; both now go through the owner."""
    import pandas as pd

    from cxr.artifacts import RunFolder
    from cxr.thresholds import choose_val_threshold

    rng = np.random.default_rng(0)
    labels = ["NORMAL"] * 60 + ["PNEUMONIA"] * 140
    p = np.clip(np.where(np.array(labels) == "PNEUMONIA", 0.8, 0.2) + rng.normal(0, 0.15, 200), 0, 1)
    rows = pd.DataFrame(
        {
            "path": [f"x/{i}.jpeg" for i in range(200)],
            "label": labels,
            "patient_id": [f"P{i}" for i in range(200)],
        }
    )
    run = RunFolder(tmp_path / "run")
    run.path.mkdir(parents=True)
    written = run.write_val_predictions(rows, p, ["NORMAL", "PNEUMONIA"])
    legacy = tmp_path / "legacy.csv"
    rows.assign(p_PNEUMONIA=p).to_csv(legacy, index=False)
    new, old = choose_val_threshold(written, 0.95), choose_val_threshold(legacy, 0.95)
    assert (
        abs(new["threshold"] - old["threshold"]) < 1e-8 and new["n_positive"] == 140
    )  # 9 significant digits


def test_vectorised_bootstrap_equals_resampling_patients_one_by_one() -> None:
    """The numpy bootstrap (image weights, rank-based AUC) gives the same CIs as drawing each resample's
    patients and computing scikit-learn's metrics on the duplicated images, ties included."""
    from cxr.artifacts import METRIC_NAMES
    from cxr.reports.metrics import binary_metrics, bootstrap_ci

    rng = np.random.default_rng(5)
    n = 150
    y = rng.integers(0, 2, n)
    p = np.clip(rng.beta(2, 2, n) * 0.6 + y * 0.3, 0, 1)
    p[:20] = 0.5  # ties
    groups = np.array([f"p{g}" for g in rng.integers(0, 70, n)])
    fast = bootstrap_ci(y, p, 0.45, groups, n_boot=60, seed=11)
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    draws = np.random.default_rng(11).integers(0, len(members), (60, len(members)))
    samples = {name: [] for name in METRIC_NAMES}
    for picked in draws:
        idx = np.concatenate([members[g] for g in picked])
        if len(np.unique(y[idx])) == 2:
            for name, value in binary_metrics(y[idx], p[idx], 0.45).items():
                samples[name].append(value)
    for name in METRIC_NAMES:
        slow = [np.nanpercentile(samples[name], 2.5), np.nanpercentile(samples[name], 97.5)]
        assert np.allclose(fast[name], slow, atol=1e-9), name
