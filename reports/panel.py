"""The summary panel that opens every report: a verdict, which model and data, the headline figures
with their intervals at the operating threshold, the ROC with the operating point, and every
warning. Built from metrics.json alone; render.py lays it out as HTML and Markdown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def primary_model(report: dict[str, Any]) -> str:
    """The model the panel is about: the first shipped one named, else the first."""
    shipped = [name for name in report.get("shipped") or [] if name in report["models"]]
    return shipped[0] if shipped else next(iter(report["models"]))


def fmt(value: Any) -> str:
    """A figure as the reports print it: three decimals, "-" when missing or NaN."""
    return "-" if value is None or value != value else f"{value:.3f}"


def ci_text(block: dict[str, Any], name: str, sep: str = "–") -> str:
    """A metric's 95% interval as text: "low–high", or "too few" where none was computed."""
    ci = (block.get("ci95") or {}).get(name)
    if not ci or ci[0] is None or ci[0] != ci[0]:
        return "too few" if (block.get("ci_method") or {}).get(name, "too few") == "too few" or not ci else "-"
    return f"{fmt(ci[0])}{sep}{fmt(ci[1])}"


def _interval(block: dict[str, Any], name: str) -> str:
    text = ci_text(block, name)
    return "too few images for an interval" if text in ("too few", "-") else text


def _identity(result: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    settings = result.get("settings") or {}
    threshold = (result.get("at_model_threshold") or {}).get("threshold", result.get("threshold"))
    rule = settings.get("threshold_rule") or {}
    rule_text = describe_rule({"threshold": threshold, **rule}) if "rule" in rule else "not recorded"
    guard = settings.get("guard")
    calibration = settings.get("calibration")
    return (
        ("model file", str(settings.get("model") or "(not recorded)")),
        ("sha256", str(result.get("model_sha256") or settings.get("model_sha256") or "(not recorded)")),
        ("threshold and rule", f"{fmt(threshold)}: {rule_text}" if threshold is not None else "-"),
        (
            "calibration / domain guard",
            f"{calibration['method'] if calibration else 'none'} / {guard['method'] if guard else 'none'}",
        ),
        ("cxr version", str(settings.get("cxr_version") or "(not recorded)")),
    )


def _data(result: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    settings = result.get("settings") or {}
    rows = [
        ("data folder", str(settings.get("source") or "(not recorded)")),
        ("files", f"{result['n_rows']} ({result['n_scored']} scored, {result['n_errors']} could not be read)"),
    ]
    block = result.get("at_model_threshold")
    if block is None:
        rows.append(("labels", "none: no accuracy can be measured"))
        return tuple(rows)
    negative, positive = result["classes"]
    counts = (
        f"{block['n_positive']} {positive}, {block['n_negative']} {negative}"
        if "n_positive" in block
        else f"{result['n_labelled']}"
    )
    rows.append(
        (
            "labelled images",
            f"{counts} ({result['n_patients']} patients; labels from "
            f"{settings.get('labels_source') or 'folder names'})",
        )
    )
    return tuple(rows)


def _headline(result: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    block = result.get("at_model_threshold")
    if block is None:
        positive = result["classes"][-1]
        return (
            (
                f"called {positive} at {fmt(result['threshold'])}",
                f"{result['n_called_positive']} of {result['n_scored']}",
                "no labels",
            ),
        )
    m = block["metrics"]
    return (
        ("sensitivity (recall)", fmt(m["recall"]), _interval(block, "recall")),
        ("specificity", fmt(m["specificity"]), _interval(block, "specificity")),
        ("ROC AUC", fmt(m["roc_auc"]), _interval(block, "roc_auc")),
    )


def model_warnings(name: str, result: dict[str, Any]) -> list[str]:
    """Everything about one model's run that a reader must know before trusting its figures."""
    out = []
    settings = result.get("settings") or {}
    if result.get("n_errors"):
        out.append(
            f"{name}: {result['n_errors']} file(s) could not be scored (see the 'error' column of "
            f"{result.get('predictions', 'predictions.csv')})"
        )
    if result.get("n_unscored_outside_domain"):
        out.append(
            f"{name}: {result['n_unscored_outside_domain']} image(s) left unscored as outside the training "
            "domain (--foreign skip)"
        )
    domain = result.get("domain") or {}
    if domain.get("n_flagged"):
        rate = (domain.get("guard") or {}).get("false_flag_rate")
        expected = f"; about {rate:.0%} of in-domain images are" if rate else ""
        out.append(f"{name}: {domain['n_flagged']} image(s) flagged as outside the training domain{expected}")
    shift = domain.get("shift") or settings.get("shift")
    if shift and shift.get("shifted"):
        out.append(f"{name}: {shift['verdict']}")
    if not settings.get("guard") and settings:
        out.append(f"{name}: the model has no domain guard; images unlike its training data are not flagged")
    if settings.get("n_qc_flagged"):
        out.append(f"{name}: {settings['n_qc_flagged']} image(s) carry a quality flag (see the 'qc' column)")
    block = result.get("at_model_threshold")
    if block and "too few" in (block.get("ci_method") or {}).values():
        out.append(f"{name}: fewer than 10 images in a class or a proportion: some figures have no interval")
    return out


def report_warnings(report: dict[str, Any], name: str) -> list[str]:
    out = model_warnings(name, report["models"][name])
    for model, section in (report.get("robustness") or {}).items():
        gate = section.get("gate") or {}
        if gate and not gate.get("passed", True):
            out += [f"{model}: robustness: {line}" for line in gate.get("messages", [])] or [
                f"{model}: the robustness gate failed"
            ]
    for check in report.get("shortcut") or []:
        if str(check.get("verdict", "")).startswith("SHORTCUT RISK"):
            out.append(f"data {check.get('source', '')}: {check['verdict']}")
    gate = report.get("gate") or {}
    if gate.get("verdict") in ("regression", "data_changed"):
        out = [f"gate: {line}" for line in gate.get("messages", [])] + out
    return out


def _verdict(report: dict[str, Any], name: str, n_warnings: int) -> str:
    result = report["models"][name]
    tail = f"{n_warnings} warning(s) below" if n_warnings else "no warnings"
    gate = report.get("gate")
    if gate:
        prefix = f"Gate: {GATE_WORDS.get(gate.get('verdict'), gate.get('verdict'))}. "
    else:
        prefix = ""
    block = result.get("at_model_threshold")
    if block is None:
        positive = result["classes"][-1]
        return (
            f"{prefix}{name} called {result['n_called_positive']} of {result['n_scored']} scored images "
            f"{positive} at threshold {fmt(result['threshold'])}; no labels, so no accuracy: {tail}."
        )
    m = block["metrics"]
    return (
        f"{prefix}{name} at threshold {block['threshold']:.3g}: sensitivity {fmt(m['recall'])}, specificity "
        f"{fmt(m['specificity'])}, ROC AUC {fmt(m['roc_auc'])} on {result['n_labelled']} labelled images; "
        f"{tail}."
    )


def _others(report: dict[str, Any], name: str) -> tuple[tuple[str, str, str, str], ...]:
    shipped = set(report.get("shipped") or [])
    rows = []
    for other, result in report["models"].items():
        block = result.get("at_model_threshold")
        if other == name or block is None:
            continue
        m = block["metrics"]
        label = f"{other} (shipped)" if other in shipped else other
        rows.append((label, fmt(m["recall"]), fmt(m["specificity"]), fmt(m["roc_auc"])))
    return tuple(rows)


def summary_panel(report: dict[str, Any]) -> SummaryPanel:
    name = primary_model(report)
    result = report["models"][name]
    warnings = report_warnings(report, name)
    if len(warnings) > WARNINGS_SHOWN:
        warnings = warnings[: WARNINGS_SHOWN - 1] + [
            f"and {len(warnings) - WARNINGS_SHOWN + 1} more in the sections below"
        ]
    shipped = name in (report.get("shipped") or [])
    return SummaryPanel(
        verdict=_verdict(report, name, len(report_warnings(report, name))),
        model=f"{name} (shipped)" if shipped else name,
        identity=_identity(result),
        data=_data(result),
        headline=_headline(result),
        warnings=tuple(warnings),
        roc_figure=(result.get("figures") or {}).get("roc"),
        others=_others(report, name),
    )
