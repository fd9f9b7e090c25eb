"""report.md and a self-contained report.html (images embedded as data URIs) from metrics.json."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from cxr.files import write_text_atomic
from cxr.reports.robustness import robustness_rows
from cxr.thresholds import describe_rule

HEADLINE = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc", "balanced_accuracy",
            "mcc", "loss", "brier", "ece")
COMPARE = ("accuracy", "precision", "recall", "f1", "roc_auc")


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def _metric_rows(block: dict[str, Any]) -> list[list[str]]:
    return [[name, _fmt(block["metrics"][name]),
             f"{_fmt(block['ci95'][name][0])} - {_fmt(block['ci95'][name][1])}"] for name in HEADLINE]


def _comparison_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, result in report["models"].items():
        m = result["at_0.5"]["metrics"]
        ci = result["at_0.5"]["ci95"]
        rows.append([f"{name} (this run, threshold 0.5)", "these predictions"]
                    + [f"{_fmt(m[k])} ({_fmt(ci[k][0])}-{_fmt(ci[k][1])})" for k in COMPARE])
    for pub in report["published"]:
        rows.append([f"{pub['name']} (published)", pub["split"]] + [_fmt(pub[k]) for k in COMPARE])
    return rows


def _sections(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(title, header, rows, figure files) for every table of the report."""
    sections = [("Comparison (published figures come from other splits and are not directly comparable)",
                 ["model", "data / split"] + list(COMPARE), _comparison_rows(report), [])]
    val = report.get("val_threshold")
    for name, result in report["models"].items():
        counts = (f"{result['n_rows']} files, {result['n_scored']} scored, {result['n_errors']} errors, "
                  f"{result['n_labelled']} labelled, {result['n_patients']} patients")
        sections.append((f"{name}: metrics at threshold 0.5 ({counts}; 95% CI: patient bootstrap, "
                         f"n={result['bootstrap']['n']})", ["metric", "value", "95% CI"],
                         _metric_rows(result["at_0.5"]), []))
        model_t = result["at_model_threshold"]["threshold"]
        rule = (result.get("settings") or {}).get("threshold_rule")
        rule_note = f"; rule: {describe_rule({'threshold': model_t, **rule})}" if rule and "rule" in rule else ""
        if model_t != 0.5:
            sections.append((f"{name}: metrics at the model's own threshold {model_t:.4f} (from its metadata"
                             f"{rule_note})", ["metric", "value", "95% CI"], _metric_rows(result["at_model_threshold"]),
                             []))
        if "at_val_threshold" in result:
            sections.append((f"{name}: metrics at the validation threshold {val['threshold']:.4f} "
                             f"(target recall {val['target_recall']})", ["metric", "value", "95% CI"],
                             _metric_rows(result["at_val_threshold"]), []))
        table = result["threshold_table"]
        sections.append((f"{name}: threshold trade-off", list(table[0].keys()),
                         [[_fmt(v) if isinstance(v, float) else str(v) for v in row.values()] for row in table],
                         list(result.get("figures", {}).values())))
    for name, section in (report.get("robustness") or {}).items():
        header, rows = robustness_rows(section)
        sections.append((f"{name}: robustness suite ({section['n_images']} images, threshold "
                         f"{section['threshold']:.4g}; flips: share of labels that change against the clean image; "
                         "seeded, see cxr.perturb)", header, rows, [section["figure"]] if section.get("figure") else []))
    for check in report.get("shortcut") or []:
        sections.append(_shortcut_section(check))
    if report["figures"]:
        sections.append(("Training curves", [], [], list(report["figures"].values())))
    return sections


def _shortcut_section(check: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]]:
    """The shortcut check of the data: can trivial image statistics alone separate the classes?"""
    negative, positive = check["classes"]
    rows = []
    for name, group in check["groups"].items():
        if group.get("cv_auc") is None:
            rows.append([name, "-", group.get("note", "")])
            continue
        medians = "; ".join(f"{c}: {group['median_negative'][c]:.3g} vs {group['median_positive'][c]:.3g}"
                            for c in group["features"])
        rows.append([name, _fmt(group["cv_auc"]), f"medians {negative} vs {positive}: {medians}"])
    rows.append(["verdict", "", check["verdict"]])
    rows += [["finding", "", line] for line in check.get("findings", [])]
    if check.get("cause"):
        rows.append(["cause", "", check["cause"]])
    title = (f"Shortcut check of {check.get('source', 'the data')} ({check['n_images']} images; "
             f"cross-validated ROC AUC of trivial statistics, {check['method']})")
    return title, ["statistics", "CV ROC AUC", "detail"], rows, []


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# cxr evaluation report", "", f"Generated {report['generated']}.", ""]
    for title, header, rows, figs in _sections(report):
        lines += [f"## {title}", ""]
        if header:
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        lines += [f"![{Path(f).stem}]({f})" for f in figs] + [""]
    return "\n".join(lines)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(report: dict[str, Any], folder: Path) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>cxr evaluation report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child{text-align:left}th{background:#f0f0f0}"
             "img{max-width:100%;margin:0.5em 0.5em 0.5em 0;display:inline-block;vertical-align:top}</style>",
             "</head><body><h1>cxr evaluation report</h1>", f"<p>Generated {html.escape(report['generated'])}.</p>"]
    for title, header, rows, figs in _sections(report):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if header:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        parts += [f"<img alt='{html.escape(Path(f).stem)}' src='{_data_uri(folder / f)}'>" for f in figs]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(report: dict[str, Any], folder: Path) -> None:
    write_text_atomic(folder / "report.md", to_markdown(report))
    write_text_atomic(folder / "report.html", to_html(report, folder))


def readme_table(report: dict[str, Any], split_note: str) -> str:
    """The README results table: published rows, then each model in metrics.json (at threshold 0.5,
    with 95% patient-bootstrap CIs). Regenerate with ``python -m cxr.reports.render results/metrics.json``."""
    header = "| model | data / split | " + " | ".join(COMPARE) + " |"
    lines = [header, "|" + "---|" * (len(COMPARE) + 2)]
    for pub in report["published"]:
        lines.append(f"| {pub['name']} (published) | {pub['split']} | "
                     + " | ".join(_fmt(pub[k]) for k in COMPARE) + " |")
    for name, result in report["models"].items():
        m, ci = result["at_0.5"]["metrics"], result["at_0.5"]["ci95"]
        cells = [f"{_fmt(m[k])} ({_fmt(ci[k][0])}–{_fmt(ci[k][1])})" for k in COMPARE]
        lines.append(f"| {name} | {split_note} ({result['n_labelled']} images) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


README_SPLIT_NOTE = "this repo's patient-grouped test split"


if __name__ == "__main__":
    import json
    import sys

    print(readme_table(json.loads(Path(sys.argv[1]).read_text()), README_SPLIT_NOTE), end="")
