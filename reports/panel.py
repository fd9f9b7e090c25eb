"""The summary panel that opens every report: a verdict, which model and data, the headline figures
with their intervals at the operating threshold, the ROC with the operating point, and every
warning. Built from the metrics report alone; render.py lays it out as HTML and Markdown."""

from __future__ import annotations

from dataclasses import dataclass

from cxr.artifacts.metric_records import MetricBlock, SubgroupRow
from cxr.artifacts.metrics_report import MetricsReport, ModelEntry, ModelMetrics
from cxr.thresholds import describe_rule

WARNINGS_SHOWN = 10
GATE_WORDS = {
    "pass": "PASSED",
    "regression": "FAILED",
    "data_changed": "FAILED: the evaluation data changed",
    "partial": "PARTIAL: the gate held, but some files could not be scored",
    "not_compared": "no baseline: nothing compared",
}


@dataclass(frozen=True)
class SummaryPanel:
    """What the first screen of a report says."""

    verdict: str
    model: str
    identity: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]
    headline: tuple[tuple[str, str, str], ...]  # (figure, value, 95% interval)
    warnings: tuple[str, ...]
    roc_figure: str | None
    others: tuple[tuple[str, str, str, str], ...]  # (model, sensitivity, specificity, ROC AUC) of the rest


def primary_model(report: MetricsReport) -> str:
    """The model the panel is about: the first shipped one named, else the first."""
    shipped = [name for name in report.shipped or () if name in report.models]
    return shipped[0] if shipped else next(iter(report.models))


def fmt(value: float | None) -> str:
    """A figure as the reports print it: three decimals, "-" when missing or NaN."""
    return "-" if value is None or value != value else f"{value:.3f}"


def ci_text(block: MetricBlock | SubgroupRow, name: str, sep: str = "–") -> str:
    """A metric's 95% interval as text: "low–high", or "too few" where none was computed."""
    ci = block.ci95.get(name)
    if not ci or ci[0] is None or ci[0] != ci[0]:
        return "too few" if block.ci_method.get(name, "too few") == "too few" or not ci else "-"
    return f"{fmt(ci[0])}{sep}{fmt(ci[1])}"


def _interval(block: MetricBlock, name: str) -> str:
    text = ci_text(block, name)
    return "too few images for an interval" if text in ("too few", "-") else text


def _identity(result: ModelEntry) -> tuple[tuple[str, str], ...]:
    settings = result.settings
    threshold = result.threshold
    rule = settings.threshold_rule
    rule_text = describe_rule({"threshold": threshold, **rule}) if "rule" in rule else "not recorded"
    guard, calibration = settings.guard, settings.calibration
    return (
        ("model file", settings.model or "(not recorded)"),
        ("sha256", result.model_sha256 or settings.model_sha256 or "(not recorded)"),
        ("threshold and rule", f"{fmt(threshold)}: {rule_text}" if threshold is not None else "-"),
        (
            "calibration / domain guard",
            f"{calibration.method if calibration else 'none'} / {guard.method if guard else 'none'}",
        ),
        ("cxr version", settings.cxr_version or "(not recorded)"),
    )


def _data(result: ModelEntry) -> tuple[tuple[str, str], ...]:
    settings = result.settings
    rows = [
        ("data folder", settings.source or "(not recorded)"),
        ("files", f"{result.n_rows} ({result.n_scored} scored, {result.n_errors} could not be read)"),
    ]
    if not isinstance(result, ModelMetrics):
        rows.append(("labels", "none: no accuracy can be measured"))
        return tuple(rows)
    negative, positive = result.classes
    block = result.at_model_threshold
    rows.append(
        (
            "labelled images",
            f"{block.n_positive} {positive}, {block.n_negative} {negative} ({result.n_patients} patients; "
            f"labels from {settings.labels_source or 'folder names'})",
        )
    )
    return tuple(rows)


def _headline(result: ModelEntry) -> tuple[tuple[str, str, str], ...]:
    if not isinstance(result, ModelMetrics):
        positive = result.classes[-1]
        return (
            (
                f"called {positive} at {fmt(result.threshold)}",
                f"{result.n_called_positive} of {result.n_scored}",
                "no labels",
            ),
        )
    block = result.at_model_threshold
    m = block.metrics
    return (
        ("sensitivity (recall)", fmt(m["recall"]), _interval(block, "recall")),
        ("specificity", fmt(m["specificity"]), _interval(block, "specificity")),
        ("ROC AUC", fmt(m["roc_auc"]), _interval(block, "roc_auc")),
    )


def _domain_warnings(name: str, result: ModelEntry) -> list[str]:
    """The domain guard's flags and the set-level shift verdict."""
    out = []
    settings = result.settings
    domain = result.domain if isinstance(result, ModelMetrics) else None
    if domain and domain.n_flagged:
        rate = domain.guard.false_flag_rate
        expected = f"; about {rate:.0%} of in-domain images are" if rate else ""
        out.append(f"{name}: {domain.n_flagged} image(s) flagged as outside the training domain{expected}")
    shift = (domain.shift if domain else None) or settings.shift
    if shift and shift.shifted:
        out.append(f"{name}: {shift.line()}")
    if settings.guard is None and settings.recorded:
        out.append(f"{name}: the model has no domain guard; images unlike its training data are not flagged")
    return out


def model_warnings(name: str, result: ModelEntry) -> list[str]:
    """Everything about one model's run that a reader must know before trusting its figures."""
    out = []
    settings = result.settings
    if result.n_errors:
        out.append(
            f"{name}: {result.n_errors} file(s) could not be scored (see the 'error' column of "
            f"{result.predictions or 'predictions.csv'})"
        )
    if result.n_unscored_outside_domain:
        out.append(
            f"{name}: {result.n_unscored_outside_domain} image(s) left unscored as outside the training "
            "domain (--foreign skip)"
        )
    out += _domain_warnings(name, result)
    if settings.n_qc_flagged:
        out.append(f"{name}: {settings.n_qc_flagged} image(s) carry a quality flag (see the 'qc' column)")
    if isinstance(result, ModelMetrics) and "too few" in result.at_model_threshold.ci_method.values():
        out.append(f"{name}: fewer than 10 images in a class or a proportion: some figures have no interval")
    return out


def report_warnings(report: MetricsReport, name: str) -> list[str]:
    out = model_warnings(name, report.models[name])
    for model, section in (report.robustness or {}).items():
        if section.gate and not section.gate.passed:
            out += [f"{model}: robustness: {line}" for line in section.gate.messages] or [
                f"{model}: the robustness gate failed"
            ]
    for check in report.shortcut or ():
        if check.verdict.startswith("SHORTCUT RISK"):
            out.append(f"data {check.source}: {check.verdict}")
    if report.gate and report.gate.verdict in ("regression", "data_changed"):
        out = [f"gate: {line}" for line in report.gate.messages] + out
    return out


def _verdict(report: MetricsReport, name: str, n_warnings: int) -> str:
    result = report.models[name]
    tail = f"{n_warnings} warning(s) below" if n_warnings else "no warnings"
    gate = report.gate
    prefix = f"Gate: {GATE_WORDS.get(gate.verdict, gate.verdict)}. " if gate else ""
    if not isinstance(result, ModelMetrics):
        positive = result.classes[-1]
        return (
            f"{prefix}{name} called {result.n_called_positive} of {result.n_scored} scored images "
            f"{positive} at threshold {fmt(result.threshold)}; no labels, so no accuracy: {tail}."
        )
    block = result.at_model_threshold
    m = block.metrics
    return (
        f"{prefix}{name} at threshold {block.threshold:.3g}: sensitivity {fmt(m['recall'])}, specificity "
        f"{fmt(m['specificity'])}, ROC AUC {fmt(m['roc_auc'])} on {result.n_labelled} labelled images; "
        f"{tail}."
    )


def _others(report: MetricsReport, name: str) -> tuple[tuple[str, str, str, str], ...]:
    shipped = set(report.shipped or ())
    rows = []
    for other, result in report.models.items():
        if other == name or not isinstance(result, ModelMetrics):
            continue
        m = result.at_model_threshold.metrics
        label = f"{other} (shipped)" if other in shipped else other
        rows.append((label, fmt(m["recall"]), fmt(m["specificity"]), fmt(m["roc_auc"])))
    return tuple(rows)


def summary_panel(report: MetricsReport) -> SummaryPanel:
    name = primary_model(report)
    result = report.models[name]
    warnings = report_warnings(report, name)
    if len(warnings) > WARNINGS_SHOWN:
        warnings = warnings[: WARNINGS_SHOWN - 1] + [
            f"and {len(warnings) - WARNINGS_SHOWN + 1} more in the sections below"
        ]
    shipped = name in (report.shipped or ())
    return SummaryPanel(
        verdict=_verdict(report, name, len(report_warnings(report, name))),
        model=f"{name} (shipped)" if shipped else name,
        identity=_identity(result),
        data=_data(result),
        headline=_headline(result),
        warnings=tuple(warnings),
        roc_figure=(result.figures or {}).get("roc"),
        others=_others(report, name),
    )
