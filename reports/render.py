"""report.md and a self-contained report.html (images embedded as data URIs) from metrics.json."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from cxr.artifacts import METRIC_NAMES
from cxr.files import write_text_atomic
from cxr.reports.robustness import robustness_rows
from cxr.thresholds import describe_rule

HEADLINE = METRIC_NAMES
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
        figs = dict(result.get("figures", {}))
        failure_figs = {k: figs.pop(k) for k in ("false_positives", "false_negatives", "error_p") if k in figs}
        figs.pop("domain_flagged", None)  # shown in the domain section
        sections.append((f"{name}: threshold trade-off", list(table[0].keys()),
                         [[_fmt(v) if isinstance(v, float) else str(v) for v in row.values()] for row in table],
                         list(figs.values())))
        if result.get("domain"):
            sections.extend(_domain_sections(name, result))
        if result.get("subgroups"):
            sections.append(_subgroup_section(name, result))
        if result.get("failure_analysis"):
            sections.append(_failure_section(name, result, list(failure_figs.values())))
    for name, section in (report.get("robustness") or {}).items():
        header, rows = robustness_rows(section)
        sections.append((f"{name}: robustness suite ({section['n_images']} images, threshold "
                         f"{section['threshold']:.4g}; flips: share of labels that change against the clean image; "
                         "seeded, see cxr.perturb)", header, rows, [section["figure"]] if section.get("figure") else []))
    for check in report.get("shortcut") or []:
        sections.append(_shortcut_section(check))
    if report.get("checklist"):
        sections.append(("Reporting checklist (TRIPOD+AI 2024, CLAIM 2024): each item answered from this run's facts",
                         ["item", "guideline", "answer"],
                         [[row["item"], row["guideline"], row["answer"]] for row in report["checklist"]], []))
    if report["figures"]:
        sections.append(("Training curves", [], [], list(report["figures"].values())))
    return sections


def _domain_sections(name: str, result: dict[str, Any]) -> list[tuple]:
    """The domain guard's verdicts: the shift test, the flagged images, the in-domain metrics."""
    domain = result["domain"]
    guard, shift = domain["guard"], domain.get("shift")
    verdict = shift["verdict"] if shift else "data shift: not tested (fewer than 10 images with a domain score)"
    rows = [["images with a domain score", str(domain["n_with_score"])],
            ["flagged outside the training domain", f"{domain['n_flagged']} (threshold {guard['threshold']:.3f}, "
             f"{guard.get('false_flag_rate', 0):.0%} of validation images flagged)"],
            ["flagged images", "scored and flagged" if domain.get("foreign") == "flag" else "left unscored"],
            ["set-level shift test", verdict]]
    figs = [f for key, f in (result.get("figures") or {}).items() if key == "domain_flagged"]
    sections = [(f"{name}: domain guard and data shift", ["", ""], rows, figs)]
    if domain.get("flagged"):
        sections.append((f"{name}: images outside the training domain (highest score first, at most 24)",
                         ["path", "domain score", "P(positive)", "qc"],
                         [[f["path"], f"{f['domain_score']:.3f}", "-" if f["p"] is None else f"{f['p']:.3f}", f["qc"]]
                          for f in domain["flagged"]],
                         []))
    if domain.get("in_domain"):
        block = domain["in_domain"]
        compare = ("all scored labelled images above" if domain.get("foreign") == "flag" else
                   "the labelled images above, which already leave out the unscored flagged ones")
        sections.append((f"{name}: metrics on the {block['n']} in-domain labelled images only (threshold "
                         f"{block['threshold']:.4g}; compare with {compare})",
                         ["metric", "value", "95% CI"], _metric_rows(block), []))
    return sections


def _with_ci(row: dict[str, Any], name: str) -> str:
    if name not in row["metrics"]:
        return "-"
    ci = row["ci95"].get(name)
    return f"{_fmt(row['metrics'][name])}" + (f" ({_fmt(ci[0])}-{_fmt(ci[1])})" if ci else "")


def _subgroup_section(name: str, result: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]]:
    threshold = result["at_model_threshold"]["threshold"]
    rows = [[f"{row['factor']}: {row['group']}", str(row["n_images"]), str(row["n_patients"]),
             _with_ci(row, "recall"), _with_ci(row, "specificity"), _with_ci(row, "accuracy"),
             _with_ci(row, "roc_auc"), row["flag"]] for row in result["subgroups"]]
    return (f"{name}: subgroups at threshold {threshold:.4g} (95% CI: patient bootstrap)",
            ["subgroup", "images", "patients", "recall", "specificity", "accuracy", "ROC AUC", "flag"], rows, [])


def _failure_section(name: str, result: dict[str, Any], figs: list[str]) -> tuple:
    rows = []
    for part in result["failure_analysis"].values():
        q = part["p_quantiles"]
        spread = f"{q['0']:.3f} / {q['0.5']:.3f} / {q['1']:.3f}" if q else "-"
        groups = "; ".join(f"{factor}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                           for factor, counts in part["subgroups"].items() if counts)
        rows.append([part["description"], str(part["n"]), spread, groups])
    return (f"{name}: failure analysis at threshold {result['at_model_threshold']['threshold']:.4g}",
            ["error", "count", "p min / median / max", "subgroups"], rows, figs)


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


def to_html(report: dict[str, Any], folder: Path, embed_images: bool = True) -> str:
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
        parts += [f"<img alt='{html.escape(Path(f).stem)}' "
                  f"src='{_data_uri(folder / f) if embed_images else html.escape(Path(f).name)}'>" for f in figs]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(report: dict[str, Any], folder: Path, embed_images: bool = True) -> None:
    write_text_atomic(folder / "report.md", to_markdown(report))
    write_text_atomic(folder / "report.html", to_html(report, folder, embed_images))


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
REPORTED_NOT_GATED = ("noise5", "jpeg30")  # reported; the acceptance bar is on the rest of the suite


def readme_robustness_table(report: dict[str, Any]) -> str:
    """The README robustness table: per model with a robustness section, the clean ROC AUC, the
    lowest ROC AUC over the suite without noise5 and jpeg30 (reported beside it), NORMAL called
    PNEUMONIA clean vs under noise sd 2, the worst flip rate, and recall at the model's own
    threshold with its 95% patient-bootstrap CI."""
    sections = report.get("robustness") or {}
    header = ("| model | threshold | recall at threshold (95% CI) | clean ROC AUC | lowest ROC AUC in the suite* "
              "| noise5 / jpeg30 ROC AUC | NORMAL called PNEUMONIA: clean → noise2 | most flips (perturbation) |")
    lines = [header, "|" + "---|" * 8]
    for name, section in sections.items():
        rows = section["perturbations"]
        negative, positive = section["classes"]
        gated = {k: v for k, v in rows.items() if k != "clean" and k not in REPORTED_NOT_GATED}
        lowest = min(gated, key=lambda k: gated[k]["roc_auc"])
        worst = max((k for k in rows if k != "clean"), key=lambda k: rows[k]["max_flip_rate"])
        block = report["models"].get(name, {}).get("at_model_threshold")
        recall = (f"{_fmt(block['metrics']['recall'])} ({_fmt(block['ci95']['recall'][0])}–"
                  f"{_fmt(block['ci95']['recall'][1])})" if block else "-")
        fp = [rows[k]["classes"][negative]["called_other"] for k in ("clean", "noise2")]
        lines.append(f"| {name} | {section['threshold']:.3f} | {recall} | {_fmt(rows['clean']['roc_auc'])} | "
                     f"{_fmt(rows[lowest]['roc_auc'])} ({lowest}) | {_fmt(rows['noise5']['roc_auc'])} / "
                     f"{_fmt(rows['jpeg30']['roc_auc'])} | {fp[0]:.1%} → {fp[1]:.1%} | "
                     f"{rows[worst]['max_flip_rate']:.1%} ({worst}) |")
    return "\n".join(lines) + "\n"


def update_readme(report: dict[str, Any], readme: Path) -> None:
    """Rewrite README's generated blocks (``<!-- results:start -->``, ``<!-- robustness:start -->``)."""
    import re

    text = readme.read_text(encoding="utf-8")
    for tag, table in (("results", readme_table(report, README_SPLIT_NOTE)),
                       ("robustness", readme_robustness_table(report))):
        text = re.sub(rf"<!-- {tag}:start -->\n.*?<!-- {tag}:end -->",
                      lambda _: f"<!-- {tag}:start -->\n{table}<!-- {tag}:end -->", text, flags=re.S)
    write_text_atomic(readme, text)


if __name__ == "__main__":  # python -m cxr.reports.render results/metrics.json [--robustness | --update-readme README.md]
    import json
    import sys

    loaded = json.loads(Path(sys.argv[1]).read_text())
    if "--update-readme" in sys.argv:
        update_readme(loaded, Path(sys.argv[sys.argv.index("--update-readme") + 1]))
    else:
        print(readme_robustness_table(loaded) if "--robustness" in sys.argv[2:] else
              readme_table(loaded, README_SPLIT_NOTE), end="")
