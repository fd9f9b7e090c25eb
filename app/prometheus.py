"""``cxr evaluate --metrics-file``: one evaluation in the Prometheus text format, for a node_exporter
textfile collector."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cxr.artifacts.scoring_settings import Execution
from cxr.shift import ShiftVerdict

PREFIX = "cxr_evaluate"
VERDICTS = ("pass", "not_compared", "regression", "data_changed", "partial")


@dataclass(frozen=True)
class PrometheusFacts:
    """What one evaluation exports: its verdict, the headline metrics, the gate's allowed drops and
    baseline values, the counts and wall time, the model and its execution, the robustness suite's
    worst flip rate per perturbation, the shift test and the images outside the training domain."""

    verdict: str
    headline: dict[str, float]
    limits: dict[str, float]
    baseline: dict[str, float] | None
    scored: int
    failed: int
    seconds: float
    model_sha256: str
    execution: Execution
    flip_rates: dict[str, float] | None = None
    shift: ShiftVerdict | None = None
    outside_domain: int | None = None


def write_prometheus(path: Path, facts: PrometheusFacts) -> None:
    """Prometheus text format, written atomically (``write_to_textfile``). The last-success
    timestamp is set on success and carried over from the previous file otherwise."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()

    def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", text, list(labels), registry=registry)

    verdicts = gauge("verdict", "1 for this run's verdict, 0 for the others", ("verdict",))
    for name in VERDICTS:
        verdicts.labels(name).set(int(name == facts.verdict))
    gauge(
        "passed", "1 if the evaluation passed a gate that compared something and every file was scored"
    ).set(int(facts.verdict == "pass"))
    gauge("compared", "1 if anything was gated (a baseline, robustness limits or a shift limit)").set(
        int(facts.verdict != "not_compared")
    )
    metric = gauge("metric", "headline metric at the model's threshold", ("metric",))
    for name, value in facts.headline.items():
        metric.labels(name).set(value)
    if facts.baseline is not None:
        allowed = gauge("metric_allowed_drop", "allowed drop per gated metric", ("metric",))
        base = gauge("metric_baseline", "baseline value per gated metric", ("metric",))
        for name, limit in facts.limits.items():
            allowed.labels(name).set(limit)
            base.labels(name).set(facts.baseline[name])
    if facts.flip_rates is not None:
        flips = gauge("robustness_max_flip_rate", "worst class flip rate per perturbation", ("perturbation",))
        for name, rate in facts.flip_rates.items():
            flips.labels(name).set(rate)
    if facts.shift is not None:
        gauge("shift_detected", "1 if the set-level test finds these images unlike the training data").set(
            int(facts.shift.shifted)
        )
        gauge(
            "shift_statistic", "KS distance between this run's domain scores and the training reference"
        ).set(facts.shift.statistic)
        gauge("shift_p_value", "p-value of the set-level shift test").set(facts.shift.p_value)
    if facts.outside_domain is not None:
        gauge("images_outside_domain", "images the domain guard flagged").set(facts.outside_domain)
    gauge("images_scored", "images scored").set(facts.scored)
    gauge("images_failed", "files that could not be scored").set(facts.failed)
    gauge("duration_seconds", "wall time of the evaluation").set(facts.seconds)
    gauge("info", "model and execution", ("model_sha256", "provider", "precision")).labels(
        facts.model_sha256, facts.execution.provider, facts.execution.precision
    ).set(1)
    last = time.time() if facts.verdict == "pass" else previous_success(path)
    if last is not None:
        gauge("last_success_timestamp_seconds", "Unix time of the last passing evaluation").set(last)
    write_to_textfile(str(path), registry)


def previous_success(path: Path) -> float | None:
    """The last-success timestamp of an earlier file at ``path`` (None without one)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
            if family.name == f"{PREFIX}_last_success_timestamp_seconds":
                return float(family.samples[0].value)
    except (OSError, ValueError, IndexError):
        return None
    return None
