"""Robustness metrics: how a model's outputs move under the perturbation suite.

Input: labels, the clean P(positive) and P(positive) under each perturbation (from the
inference stage). Per perturbation: ROC AUC, mean and 95th percentile of |dp|, and per
true class the share of labels that flip at the model's threshold and the share called
the other class (so "NORMAL called PNEUMONIA under noise2" can be set beside the clean
rate). ``--max-flip noise2=0.02`` gates on the worst class's flip rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from cxr.artifacts.report_sections import ClassRates, PerturbationRow, RobustnessSection
from cxr.errors import InputError

CLEAN = "clean"


class RobustnessSpecError(InputError, ValueError):
    """A bad --max-flip specification. One-line message."""


def _class_rates(
    y: np.ndarray, pred_clean: np.ndarray, pred: np.ndarray, classes: list[str]
) -> dict[str, ClassRates]:
    rates = {}
    for index, name in enumerate(classes):
        members = y == index
        n = int(members.sum())
        rates[name] = ClassRates(
            n=n,
            flip_rate=float((pred[members] != pred_clean[members]).mean()) if n else float("nan"),
            called_other=float((pred[members] != index).mean()) if n else float("nan"),
        )
    return rates


def robustness_metrics(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    threshold: float,
    classes: list[str],
    descriptions: dict[str, str] | None = None,
) -> RobustnessSection:
    """Per perturbation (and clean): roc_auc, mean/p95 |dp|, per-class flip and called-other rates."""
    y = np.asarray(y).astype(int)
    clean = np.asarray(scores[CLEAN], dtype=np.float64)
    pred_clean = (clean >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    rows = {}
    for name, p in scores.items():
        p = np.asarray(p, dtype=np.float64)
        dp = np.abs(p - clean)
        per_class = _class_rates(y, pred_clean, (p >= threshold).astype(int), classes)
        rows[name] = PerturbationRow(
            description=(descriptions or {}).get(name, "no perturbation" if name == CLEAN else name),
            roc_auc=float(roc_auc_score(y, p)) if both else float("nan"),
            mean_abs_dp=float(dp.mean()) if len(dp) else float("nan"),
            p95_abs_dp=float(np.percentile(dp, 95)) if len(dp) else float("nan"),
            max_flip_rate=max(c.flip_rate for c in per_class.values()),
            classes=per_class,
        )
    return RobustnessSection(float(threshold), tuple(classes), int(len(y)), rows)


def parse_max_flip(spec: str, known: tuple[str, ...]) -> dict[str, float]:
    """``noise2=0.02,jpeg50=0.05`` -> {'noise2': 0.02, 'jpeg50': 0.05}; names from the suite."""
    limits = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise RobustnessSpecError(
                f"bad --max-flip item {item!r}; use NAME=VALUE with NAME in {', '.join(known)}"
            )
        try:
            limit = float(value)
        except ValueError:
            raise RobustnessSpecError(f"bad --max-flip value in {item!r}") from None
        if not 0.0 <= limit <= 1.0:
            raise RobustnessSpecError(f"--max-flip {name}: {value!r} is not a rate in [0, 1]")
        limits[name] = limit
    return limits


def check_flips(section: RobustnessSection, limits: dict[str, float]) -> tuple[list[str], list[str]]:
    """(messages, failures): the worst class's flip rate of each gated perturbation."""
    messages, failures = [], []
    for name, allowed in limits.items():
        row = section.perturbations[name]
        worst = max(row.classes, key=lambda c: row.classes[c].flip_rate)
        rate = row.classes[worst].flip_rate
        line = f"robustness {name}: {rate:.4f} of {worst} labels flip (allowed {allowed})"
        messages.append(line)
        if not rate <= allowed:  # a NaN rate fails too
            failures.append(line)
    return messages, failures


def robustness_rows(section: RobustnessSection) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the robustness table."""
    classes = section.classes
    header = (
        ["perturbation", "ROC AUC", "mean |dp|", "p95 |dp|"]
        + [f"{c} flips" for c in classes]
        + [f"{c} called {classes[1 - i]}" for i, c in enumerate(classes)]
    )
    rows = []
    for name, row in section.perturbations.items():
        per = row.classes
        rows.append(
            [
                f"{name} ({row.description})",
                f"{row.roc_auc:.3f}",
                f"{row.mean_abs_dp:.4f}",
                f"{row.p95_abs_dp:.4f}",
            ]
            + [f"{per[c].flip_rate:.1%}" for c in classes]
            + [f"{per[c].called_other:.1%}" for c in classes]
        )
    return header, rows


def plot_robustness(section: RobustnessSection, out: str | Path, title: str = "") -> Path:
    """Flip rate per true class (bars) and ROC AUC (line) per perturbation."""
    from cxr.reports.figures import _save, _subplots

    rows = section.perturbations
    names = [n for n in rows if n != CLEAN]
    x = np.arange(len(names))
    fig, (top, bottom) = _subplots(2, 1, figsize=(11, 6.5), sharex=True)
    width = 0.8 / max(1, len(section.classes))
    for i, cls in enumerate(section.classes):
        rates = [rows[n].classes[cls].flip_rate for n in names]
        top.bar(x + (i - (len(section.classes) - 1) / 2) * width, rates, width, label=f"true {cls}")
    top.set_ylabel("share of labels that flip")
    top.legend()
    top.grid(alpha=0.3, axis="y")
    bottom.plot(x, [rows[n].roc_auc for n in names], marker="o", label="perturbed")
    bottom.axhline(rows[CLEAN].roc_auc, color="grey", linestyle="--", label="clean")
    bottom.set_ylabel("ROC AUC")
    bottom.legend()
    bottom.grid(alpha=0.3)
    bottom.set_xticks(x, names, rotation=45, ha="right")
    fig.suptitle(title or f"robustness at threshold {section.threshold:.3g} ({section.n_images} images)")
    return _save(fig, out)


def robustness_markdown(section: RobustnessSection) -> str:
    """robustness.md: the suite's table."""
    header, rows = robustness_rows(section)
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(table + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
