"""report.md and a self-contained report.html (images embedded as data URIs) from the metrics report."""

from __future__ import annotations

import argparse
import base64
import html
from dataclasses import replace
from pathlib import Path

from cxr.artifacts import METRIC_NAMES
from cxr.artifacts.metric_records import MetricBlock, SubgroupRow, ThresholdRow
from cxr.artifacts.metrics_report import MetricsReport, MetricsReportError, ModelMetrics, UnlabelledMetrics
from cxr.artifacts.report_sections import PublishedResult, ShortcutCheck
from cxr.files import write_text_atomic
from cxr.reports.panel import SummaryPanel, ci_text, summary_panel
from cxr.reports.panel import fmt as _fmt
from cxr.reports.robustness import robustness_rows
from cxr.thresholds import describe_rule

HEADLINE = METRIC_NAMES
COMPARE = ("accuracy", "precision", "recall", "f1", "roc_auc")
INTERVALS_NOTE = (
    "95% intervals: Wilson for proportions, patient bootstrap for the rest; none from fewer than "
    "10 positives or negatives"
)
METRIC_HEADER = ["metric", "value", "95% interval", "interval method"]


def value_with_ci(block: MetricBlock | SubgroupRow, name: str) -> str:
    """ "0.950 (0.910–0.975)", or "0.950 (too few)"."""
    return f"{_fmt(block.metrics[name])} ({ci_text(block, name)})"


def _metric_rows(block: MetricBlock) -> list[list[str]]:
    return [
        [
            name,
            _fmt(block.metrics[name]),
            ci_text(block, name),
            block.ci_method.get(name, "patient bootstrap"),
        ]
        for name in HEADLINE
    ]


def _label(report: MetricsReport, name: str) -> str:
    return f"{name} (shipped)" if name in (report.shipped or ()) else name


def _labelled_models(report: MetricsReport) -> dict[str, ModelMetrics]:
    return {name: entry for name, entry in report.models.items() if isinstance(entry, ModelMetrics)}


def _comparison_rows(report: MetricsReport) -> list[list[str]]:
    rows = []
    for name, result in _labelled_models(report).items():
        block = result.at_model_threshold
        rows.append(
            [_label(report, name), f"{block.threshold:.3g}"] + [value_with_ci(block, k) for k in COMPARE]
        )
    return rows


def _published_cells(pub: PublishedResult) -> list[str]:
    return [_fmt(pub.metric(k)) for k in COMPARE]


def _published_rows(report: MetricsReport) -> list[list[str]]:
    rows = [[f"{pub.name} (published)", pub.split] + _published_cells(pub) for pub in report.published]
    for name, result in _labelled_models(report).items():
        rows.append(
            [f"{_label(report, name)} (these predictions, threshold 0.5)", "this run"]
            + [value_with_ci(result.at_half, k) for k in COMPARE]
        )
    return rows


Section = tuple[str, list[str], list[list[str]], list[str]]


def _sections(report: MetricsReport) -> list[Section]:
    """(title, header, rows, figure files) for every table of the report, published figures last."""
    sections = []
    if len(report.models) > 1:
        sections.append(
            (
                "Models compared, each at its own threshold",
                ["model", "threshold"] + list(COMPARE),
                _comparison_rows(report),
                [],
            )
        )
    for name, result in report.models.items():
        sections += (
            _model_sections(report, name, result)
            if isinstance(result, ModelMetrics)
            else _unlabelled_sections(name, result)
        )
    sections += _shared_sections(report)
    if _labelled_models(report):
        sections.append(
            (
                "Published figures (from other data splits: for context, not directly comparable)",
                ["model", "data / split"] + list(COMPARE),
                _published_rows(report),
                [],
            )
        )
    return sections


def _unlabelled_sections(name: str, result: UnlabelledMetrics) -> list[Section]:
    positive = result.classes[-1]
    figs = result.figures
    counts = [
        ["files", str(result.n_rows)],
        ["scored", str(result.n_scored)],
        ["could not be read", str(result.n_errors)],
        [f"called {positive} (P at or above {result.threshold:.3g})", str(result.n_called_positive)],
        [f"called {result.classes[0]}", str(result.n_called_negative)],
        ["flagged outside the training domain", str(result.n_outside_domain)],
        ["with any quality flag", str(result.n_qc_flagged)],
    ]
    spread = [[f"{float(k):.0%}", f"{v:.4f}"] for k, v in result.p_quantiles.items()]
    suspicious = [[item.path, f"{item.p:.4f}", item.qc] for item in result.suspicious]
    return [
        (f"{name}: what was called (no labels)", ["", ""], counts, []),
        (
            f"{name}: distribution of P({positive})",
            ["quantile", f"P({positive})"],
            spread,
            [figs["distribution"]] if "distribution" in figs else [],
        ),
        (
            f"{name}: images to review first (highest P({positive}))",
            ["path", f"P({positive})", "qc"],
            suspicious,
            [figs["suspicious"]] if "suspicious" in figs else [],
        ),
    ]


def _shared_sections(report: MetricsReport) -> list[Section]:
    sections = []
    for name, section in (report.robustness or {}).items():
        header, rows = robustness_rows(section)
        sections.append(
            (
                f"{name}: robustness suite ({section.n_images} images, threshold "
                f"{section.threshold:.4g}; flips: share of labels that change against the clean image; "
                "seeded, see cxr.perturb)",
                header,
                rows,
                [section.figure] if section.figure else [],
            )
        )
    for check in report.shortcut or ():
        sections.append(_shortcut_section(check))
    if report.checklist:
        sections.append(
            (
                "Reporting checklist (TRIPOD+AI 2024, CLAIM 2024): each item answered from this run's facts",
                ["item", "guideline", "answer"],
                [[row.item, row.guideline, row.answer] for row in report.checklist],
                [],
            )
        )
    if report.figures:
        sections.append(("Training curves", [], [], list(report.figures.values())))
    return sections


def _counts_note(result: ModelMetrics) -> str:
    return (
        f"{result.n_rows} files, {result.n_scored} scored, {result.n_errors} errors, "
        f"{result.n_labelled} labelled, {result.n_patients} patients; {INTERVALS_NOTE}, "
        f"bootstrap n={result.bootstrap.n}"
    )


def _threshold_sections(report: MetricsReport, name: str, result: ModelMetrics) -> list[Section]:
    """The model's metrics at its own threshold, then at 0.5 and at the validation threshold."""
    label = _label(report, name)
    model_t = result.at_model_threshold.threshold
    rule = result.settings.threshold_rule
    rule_note = f"; rule: {describe_rule({'threshold': model_t, **rule})}" if "rule" in rule else ""
    sections = [
        (
            f"{label}: metrics at its threshold {model_t:.4g} ({_counts_note(result)}{rule_note})",
            METRIC_HEADER,
            _metric_rows(result.at_model_threshold),
            [],
        )
    ]
    if model_t != 0.5:
        sections.append(
            (f"{label}: metrics at threshold 0.5", METRIC_HEADER, _metric_rows(result.at_half), [])
        )
    val = report.val_threshold
    if result.at_val_threshold is not None and val is not None:
        sections.append(
            (
                f"{label}: metrics at the validation threshold {val.threshold:.4f} "
                f"(target recall {val.target_recall})",
                METRIC_HEADER,
                _metric_rows(result.at_val_threshold),
                [],
            )
        )
    return sections


def _model_sections(report: MetricsReport, name: str, result: ModelMetrics) -> list[Section]:
    """One model's tables: its metrics at its own threshold first, then at 0.5 and at the validation
    threshold, the trade-off, the domain guard, subgroups and failures."""
    sections = _threshold_sections(report, name, result)
    figs = dict(result.figures or {})
    failure_figs = {k: figs.pop(k) for k in ("false_positives", "false_negatives", "error_p") if k in figs}
    figs.pop("domain_flagged", None)  # shown in the domain section
    sections.append(
        (
            f"{_label(report, name)}: threshold trade-off",
            list(ThresholdRow.COLUMNS),
            [
                [_fmt(v) if isinstance(v, float) else str(v) for v in row.values()]
                for row in result.threshold_table
            ],
            list(figs.values()),
        )
    )
    if result.domain:
        sections.extend(_domain_sections(name, result))
    if result.subgroups:
        sections.append(_subgroup_section(name, result))
    if result.failure_analysis:
        sections.append(_failure_section(name, result, list(failure_figs.values())))
    return sections


def _domain_rows(result: ModelMetrics) -> list[list[str]]:
    domain = result.domain
    guard, shift = domain.guard, domain.shift
    verdict = shift.line() if shift else "data shift: not tested (fewer than 10 images with a domain score)"
    return [
        ["images with a domain score", str(domain.n_with_score)],
        [
            "flagged outside the training domain",
            f"{domain.n_flagged} (threshold {guard.threshold:.3f}, "
            f"{guard.false_flag_rate:.0%} of validation images flagged)",
        ],
        ["flagged images", "scored and flagged" if domain.foreign == "flag" else "left unscored"],
        ["set-level shift test", verdict],
    ]


def _domain_sections(name: str, result: ModelMetrics) -> list[Section]:
    """The domain guard's verdicts: the shift test, the flagged images, the in-domain metrics."""
    domain = result.domain
    figs = [f for key, f in (result.figures or {}).items() if key == "domain_flagged"]
    sections = [(f"{name}: domain guard and data shift", ["", ""], _domain_rows(result), figs)]
    if domain.flagged:
        sections.append(
            (
                f"{name}: images outside the training domain (highest score first, at most 24)",
                ["path", "domain score", "P(positive)", "qc"],
                [
                    [f.path, f"{f.domain_score:.3f}", "-" if f.p is None else f"{f.p:.3f}", f.qc]
                    for f in domain.flagged
                ],
                [],
            )
        )
    if domain.in_domain:
        block = domain.in_domain
        compare = (
            "all scored labelled images above"
            if domain.foreign == "flag"
            else "the labelled images above, which already leave out the unscored flagged ones"
        )
        sections.append(
            (
                f"{name}: metrics on the {block.n} in-domain labelled images only (threshold "
                f"{block.threshold:.4g}; compare with {compare})",
                METRIC_HEADER,
                _metric_rows(block),
                [],
            )
        )
    return sections


def _with_ci(row: SubgroupRow, name: str) -> str:
    if name not in row.metrics:
        return "-"
    return value_with_ci(row, name)


def _subgroup_section(name: str, result: ModelMetrics) -> Section:
    threshold = result.at_model_threshold.threshold
    rows = [
        [
            f"{row.factor}: {row.group}",
            str(row.n_images),
            str(row.n_patients),
            _with_ci(row, "recall"),
            _with_ci(row, "specificity"),
            _with_ci(row, "accuracy"),
            _with_ci(row, "roc_auc"),
            row.flag,
        ]
        for row in result.subgroups
    ]
    return (
        f"{name}: subgroups at threshold {threshold:.4g} ({INTERVALS_NOTE})",
        ["subgroup", "images", "patients", "recall", "specificity", "accuracy", "ROC AUC", "flag"],
        rows,
        [],
    )


def _failure_section(name: str, result: ModelMetrics, figs: list[str]) -> Section:
    rows = []
    for part in result.failure_analysis.values():
        q = part.p_quantiles
        spread = f"{q['0']:.3f} / {q['0.5']:.3f} / {q['1']:.3f}" if q else "-"
        groups = "; ".join(
            f"{factor}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
            for factor, counts in part.subgroups.items()
            if counts
        )
        rows.append([part.description, str(part.n), spread, groups])
    return (
        f"{name}: failure analysis at threshold {result.at_model_threshold.threshold:.4g}",
        ["error", "count", "p min / median / max", "subgroups"],
        rows,
        figs,
    )


def _shortcut_section(check: ShortcutCheck) -> Section:
    """The shortcut check of the data: can trivial image statistics alone separate the classes?"""
    negative, positive = check.classes
    rows = []
    for name, group in check.groups.items():
        if group.cv_auc is None:
            rows.append([name, "-", group.note])
            continue
        medians = "; ".join(
            f"{c}: {group.median_negative[c]:.3g} vs {group.median_positive[c]:.3g}" for c in group.features
        )
        rows.append([name, _fmt(group.cv_auc), f"medians {negative} vs {positive}: {medians}"])
    rows.append(["verdict", "", check.verdict])
    rows += [["finding", "", line] for line in check.findings]
    if check.cause:
        rows.append(["cause", "", check.cause])
    title = (
        f"Shortcut check of {check.source or 'the data'} ({check.n_images} images; "
        f"cross-validated ROC AUC of trivial statistics, {check.method})"
    )
    return title, ["statistics", "CV ROC AUC", "detail"], rows, []


def _panel_markdown(panel: SummaryPanel) -> list[str]:
    lines = [f"**{panel.verdict}**", "", f"| {panel.model} | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in panel.identity + panel.data]
    lines += ["", "| at the operating threshold | value | 95% interval |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {interval} |" for name, value, interval in panel.headline]
    lines += [""] + ([f"- WARNING: {line}" for line in panel.warnings] or ["No warnings."]) + [""]
    return lines


def _gate_messages(report: MetricsReport) -> tuple[str, ...]:
    return report.gate.messages if report.gate else ()


def to_markdown(report: MetricsReport) -> str:
    """report.md: the summary (verdict first), then every section."""
    lines = ["# cxr evaluation report", ""] + _panel_markdown(summary_panel(report))
    lines += [f"Generated {report.generated}.", ""]
    if _gate_messages(report):
        lines += ["## What the gate compared", ""] + [f"- {line}" for line in _gate_messages(report)] + [""]
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


STYLE = (
    "body{font-family:sans-serif;max-width:1300px;margin:1em auto;padding:0 1em;font-size:14px}"
    "table{border-collapse:collapse;margin:0.5em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:first-child{text-align:left}th{background:#f0f0f0}"
    "img{max-width:100%;margin:0.5em 0.5em 0.5em 0;display:inline-block;vertical-align:top}"
    "#summary{border:2px solid #444;border-radius:6px;padding:0.6em 1em;margin-bottom:1em}"
    "#summary .verdict{font-size:17px;font-weight:bold;margin:0.2em 0 0.5em}"
    "#summary .columns{display:flex;gap:1.5em;align-items:flex-start}"
    "#summary td{font-size:13px;padding:2px 6px;max-width:520px;overflow-wrap:anywhere;text-align:left}"
    ".note{color:#444;font-size:13px;margin:0.2em 0}"
    "#summary img{width:280px;margin:0}#summary ul{margin:0.4em 0;padding-left:1.2em;font-size:13px}"
    ".warn{color:#a40000}details{margin:0.3em 0}summary{cursor:pointer}"
    "summary h2{display:inline;font-size:16px}"
    "nav ol{columns:2;font-size:13px}"
)


def _table_html(header: list[str], rows: list[list[str]], css: str = "") -> str:
    cls = f" class='{css}'" if css else ""
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{cls}>{head}{body}</table>"


def _img_html(name: str, folder: Path, embed_images: bool, css: str = "") -> str:
    cls = f" class='{css}'" if css else ""
    src = _data_uri(folder / name) if embed_images else html.escape(Path(name).name)
    return f"<img{cls} alt='{html.escape(Path(name).stem)}' src='{src}'>"


def _panel_html(panel: SummaryPanel, folder: Path, embed_images: bool) -> str:
    """The first screen: verdict, model and data, headline figures, ROC, warnings."""
    facts = _table_html([panel.model, ""], [list(row) for row in panel.identity + panel.data], "facts")
    headline = _table_html(
        ["at the operating threshold", "value", "95% interval"], [list(r) for r in panel.headline], "headline"
    )
    others = (
        _table_html(
            ["other models", "sensitivity", "specificity", "ROC AUC"],
            [list(r) for r in panel.others],
            "others",
        )
        if panel.others
        else ""
    )
    roc = (
        _img_html(panel.roc_figure, folder, embed_images, "roc")
        if panel.roc_figure and (folder / panel.roc_figure).is_file()
        else ""
    )
    warnings = (
        "<ul class='warn'>" + "".join(f"<li>{html.escape(w)}</li>" for w in panel.warnings) + "</ul>"
        if panel.warnings
        else "<p>No warnings.</p>"
    )
    return (
        f"<section id='summary'><p class='verdict'>{html.escape(panel.verdict)}</p><div class='columns'>"
        f"<div>{facts}</div><div>{headline}{others}</div><div>{roc}</div></div>{warnings}</section>"
    )


def _split_title(title: str) -> tuple[str, str]:
    """("model1 (shipped): threshold trade-off", "its note") from "model1 (shipped): threshold
    trade-off (its note)": the note is the bracket after the section's name."""
    head, colon, rest = title.partition(": ")
    if not colon:
        head, rest = "", title
    short, sep, note = rest.partition(" (")
    short = f"{head}{colon}{short}"
    return (short, note[:-1] if note.endswith(")") else note) if sep else (title, "")


def _anchor(index: int) -> str:
    return f"section-{index + 1}"


def to_html(report: MetricsReport, folder: Path, embed_images: bool = True) -> str:
    """report.html: the summary panel, a table of contents, then every section collapsed."""
    sections = _sections(report)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cxr evaluation report</title>",
        f"<style>{STYLE}</style></head><body><h1>cxr evaluation report</h1>",
        _panel_html(summary_panel(report), folder, embed_images),
        f"<p>Generated {html.escape(report.generated)}.</p><nav id='contents'><h2>Contents</h2><ol>",
    ]
    parts += [
        f"<li><a href='#{_anchor(i)}'>{html.escape(_split_title(title)[0])}</a></li>"
        for i, (title, *_) in enumerate(sections)
    ]
    parts.append("</ol></nav>")
    if _gate_messages(report):
        parts.append(
            "<h2>What the gate compared</h2><ul>"
            + "".join(f"<li>{html.escape(m)}</li>" for m in _gate_messages(report))
            + "</ul>"
        )
    for i, (title, header, rows, figs) in enumerate(sections):
        short, note = _split_title(title)
        parts.append(
            f"<details id='{_anchor(i)}'><summary><h2>{html.escape(short)}</h2></summary>"
            + (f"<p class='note'>{html.escape(note)}</p>" if note else "")
        )
        if header:
            parts.append(_table_html(header, rows))
        parts += [_img_html(f, folder, embed_images) for f in figs]
        parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(report: MetricsReport, folder: Path, embed_images: bool = True) -> None:
    write_text_atomic(folder / "report.md", to_markdown(report))
    write_text_atomic(folder / "report.html", to_html(report, folder, embed_images))


def readme_table(report: MetricsReport, split_note: str) -> str:
    """The README results table: published rows, then each model in metrics.json (at threshold 0.5,
    with 95% patient-bootstrap CIs). Regenerate with ``python -m cxr.reports.render results/metrics.json``."""
    header = "| model | data / split | " + " | ".join(COMPARE) + " |"
    lines = [header, "|" + "---|" * (len(COMPARE) + 2)]
    for pub in report.published:
        lines.append(f"| {pub.name} (published) | {pub.split} | " + " | ".join(_published_cells(pub)) + " |")
    for name, result in _labelled_models(report).items():
        cells = [value_with_ci(result.at_half, k) for k in COMPARE]
        lines.append(f"| {name} | {split_note} ({result.n_labelled} images) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


README_SPLIT_NOTE = "this repo's patient-grouped test split"
REPORTED_NOT_GATED = ("noise5", "jpeg30")  # reported; the acceptance bar is on the rest of the suite


def _recall_at_threshold(report: MetricsReport, name: str) -> str:
    entry = report.models.get(name)
    return value_with_ci(entry.at_model_threshold, "recall") if isinstance(entry, ModelMetrics) else "-"


def readme_robustness_table(report: MetricsReport) -> str:
    """The README robustness table: per model with a robustness section, the clean ROC AUC, the
    lowest ROC AUC over the suite without noise5 and jpeg30 (reported beside it), NORMAL called
    PNEUMONIA clean vs under noise sd 2, the worst flip rate, and recall at the model's own
    threshold with its 95% patient-bootstrap CI."""
    header = (
        "| model | threshold | recall at threshold (95% CI) | clean ROC AUC | lowest ROC AUC in the suite* "
        "| noise5 / jpeg30 ROC AUC | NORMAL called PNEUMONIA: clean → noise2 | most flips (perturbation) |"
    )
    lines = [header, "|" + "---|" * 8]
    for name, section in (report.robustness or {}).items():
        rows = section.perturbations
        negative = section.classes[0]
        gated = {k: v for k, v in rows.items() if k != "clean" and k not in REPORTED_NOT_GATED}
        lowest = min(gated, key=lambda k: gated[k].roc_auc)
        worst = max((k for k in rows if k != "clean"), key=lambda k: rows[k].max_flip_rate)
        fp = [rows[k].classes[negative].called_other for k in ("clean", "noise2")]
        lines.append(
            f"| {name} | {section.threshold:.3f} | {_recall_at_threshold(report, name)} | "
            f"{_fmt(rows['clean'].roc_auc)} | {_fmt(rows[lowest].roc_auc)} ({lowest}) | "
            f"{_fmt(rows['noise5'].roc_auc)} / {_fmt(rows['jpeg30'].roc_auc)} | {fp[0]:.1%} → {fp[1]:.1%} | "
            f"{rows[worst].max_flip_rate:.1%} ({worst}) |"
        )
    return "\n".join(lines) + "\n"


def _plain(text: str) -> str:
    """The published rows' names as readers know them ("original notebook")."""
    return text.replace("seed report", "original notebook").replace("seed's", "original notebook's")


def _readme_tables(report: MetricsReport) -> dict[str, str]:
    """The generated blocks by tag: the shipped models (those metrics.json marks as shipped, else
    model1 and model2), every model, and robustness."""
    readable = replace(
        report,
        published=tuple(
            replace(pub, name=_plain(pub.name), split=_plain(pub.split)) for pub in report.published
        ),
    )
    names = report.shipped or ("model1", "model2")
    shipped = replace(readable, models={k: v for k, v in readable.models.items() if k in names})
    return {
        "results": readme_table(shipped, README_SPLIT_NOTE),
        "results-all": readme_table(readable, README_SPLIT_NOTE),
        "robustness": readme_robustness_table(readable),
    }


def update_readme(report: MetricsReport, *files: Path, write: bool = True) -> dict[Path, str]:
    """Rewrite the generated tables of README.md and docs/ from metrics.json, and return the texts.

    Blocks: ``<!-- results:start -->`` (README: the published rows and the shipped models),
    ``<!-- results-all:start -->`` (docs/results.md: every model) and ``<!-- robustness:start -->``
    (docs/robustness.md). Each block is rewritten in whichever of ``files`` holds it; a block that
    none of them holds is an error (ValueError), so that a moved block is never left stale. With
    ``write=False`` nothing is written (tests compare the returned texts with the files)."""
    import re

    texts = {Path(f): Path(f).read_text(encoding="utf-8") for f in files}
    for tag, table in _readme_tables(report).items():
        block = re.compile(rf"<!-- {tag}:start -->\n.*?<!-- {tag}:end -->", flags=re.S)
        holders = [f for f, text in texts.items() if block.search(text)]
        if not holders:
            raise ValueError(
                f"no <!-- {tag}:start --> ... <!-- {tag}:end --> block in "
                + (", ".join(str(f) for f in files) or "no file given")
            )
        for f in holders:
            replacement = f"<!-- {tag}:start -->\n{table}<!-- {tag}:end -->"
            texts[f] = block.sub(lambda _, text=replacement: text, texts[f])
    if write:
        for f, text in texts.items():
            write_text_atomic(f, text)
    return texts


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cxr.reports.render",
        description="Print the README results table of a metrics.json, or rewrite the generated blocks of "
        "README.md and docs/ from it.",
    )
    parser.add_argument("metrics", type=Path, help="metrics.json (results/metrics.json)")
    parser.add_argument("--robustness", action="store_true", help="print the robustness table instead")
    parser.add_argument(
        "--update-readme",
        dest="update",
        nargs="*",
        type=Path,
        default=None,
        metavar="FILE",
        help="rewrite the generated blocks of these files (README.md docs/results.md docs/robustness.md)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """python -m cxr.reports.render results/metrics.json [--robustness]: print a table;
    python -m cxr.reports.render results/metrics.json --update-readme README.md docs/results.md
    docs/robustness.md"""
    import sys

    args = _arguments(argv)
    try:
        report = MetricsReport.read(args.metrics)
    except MetricsReportError as exc:
        sys.exit(str(exc))
    if args.update is None:
        print(
            readme_robustness_table(report) if args.robustness else readme_table(report, README_SPLIT_NOTE),
            end="",
        )
        return
    if not args.update:
        sys.exit("--update-readme needs the files that hold the generated blocks")
    try:
        update_readme(report, *args.update)
    except ValueError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
