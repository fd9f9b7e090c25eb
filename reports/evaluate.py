"""Scheduled evaluation: score a folder, write the report, append to a history, gate on regressions."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from cxr.artifacts import (
    METRIC_NAMES,
    MetricsReport,
    MetricsReportError,
    escape_path,
    unescape_path,
)
from cxr.artifacts.eval_history import EvalHistory, EvalHistoryError, EvalRecord
from cxr.artifacts.metrics_report import LOWER_IS_BETTER, Baseline
from cxr.artifacts.report_sections import GateSummary
from cxr.artifacts.scoring_settings import Execution
from cxr.errors import InputError
from cxr.files import sha256_file
from cxr.imaging import list_images
from cxr.shift import ShiftVerdict

ALIASES = {"auc": "roc_auc", "ap": "pr_auc", "sensitivity": "recall", "acc": "accuracy"}


class GateSpecError(InputError, ValueError):
    """A bad --max-drop specification or baseline file. One-line message."""


@dataclass
class GateResult:
    regressions: list[str] = field(default_factory=list)
    data_changed: bool = False
    messages: list[str] = field(default_factory=list)
    files_failed: int = 0
    compared: bool = False  # anything gated: a baseline, robustness limits or a shift limit

    @property
    def passed(self) -> bool:
        return not self.regressions and not self.data_changed

    @property
    def verdict(self) -> str:
        """pass, partial (passed, but some files could not be scored), data_changed, regression, or
        not_compared (nothing was gated: no baseline, no limits)."""
        if self.data_changed:
            return "data_changed"
        if self.regressions:
            return "regression"
        if self.files_failed:
            return "partial"
        return "pass" if self.compared else "not_compared"


def parse_max_drop(spec: str) -> dict[str, float]:
    """``roc_auc=0.01,recall=0.02`` -> {'roc_auc': 0.01, 'recall': 0.02} (``auc`` is read as
    ``roc_auc``). An empty spec, a NaN or a negative allowance, or a metric named twice is refused:
    a gate must never be switched off or overridden silently."""
    limits = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        name = ALIASES.get(name.strip().lower(), name.strip().lower())
        if not sep or name not in METRIC_NAMES:
            raise GateSpecError(
                f"bad --max-drop item {item!r}; use NAME=VALUE with NAME in {', '.join(METRIC_NAMES)}"
            )
        if name in limits:
            raise GateSpecError(f"--max-drop names {name} twice; give each metric once")
        try:
            limits[name] = float(value)
        except ValueError:
            raise GateSpecError(f"bad --max-drop value in {item!r}") from None
        if not math.isfinite(limits[name]) or limits[name] < 0:
            raise GateSpecError(f"--max-drop {name}: {value.strip()!r} is not a finite allowance >= 0")
    if not limits:
        raise GateSpecError(
            f"--max-drop {spec!r} gates nothing; give at least one NAME=VALUE (e.g. roc_auc=0.01)"
        )
    return limits


def folder_data_sha256(
    folder: str | Path, only: list[str] | None = None, exclude: str | Path | None = None
) -> str:
    """Hash of the evaluation data: every image's relative path and content hash, sorted
    (``only``: just these relative paths; a missing one hashes as 'missing'; ``exclude``: a folder
    inside, such as the evaluation's own output, that is not data)."""
    digest = hashlib.sha256()
    root = Path(folder)
    rels = (
        sorted(only)
        if only is not None
        else [escape_path(p.relative_to(root).as_posix()) for p in list_images(root, exclude=exclude)]
    )
    for rel in rels:
        path = root / unescape_path(rel)
        content = sha256_file(path) if path.is_file() else "missing"
        digest.update(f"{rel}\t{content}\n".encode())
    return digest.hexdigest()


def load_baseline(
    path: str | Path, limits: dict[str, float], model_sha256: str = "", model_name: str | None = None
) -> Baseline:
    """The baseline's gated metrics as finite numbers, from the entry of this model (by name, or by
    the sha256 of the model file, or the only entry); a one-line GateSpecError otherwise (checked
    before anything is scored)."""
    try:
        return Baseline.read(path, limits, model_sha256, model_name)
    except MetricsReportError as exc:
        raise GateSpecError(f"baseline {path}: {exc}") from None


def check_writable_file(path: str | Path, option: str) -> None:
    """Refuse, before scoring, an output file whose folder is missing or not writable."""
    import os
    import tempfile

    folder = Path(path).parent
    if not folder.is_dir():
        raise GateSpecError(f"{option} {path}: the folder {folder} does not exist")
    if Path(path).is_dir():
        raise GateSpecError(f"{option} {path} is a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise GateSpecError(
            f"{option} {path}: the folder {folder} is not writable ({exc.strerror or exc})"
        ) from None
    if Path(path).exists() and not os.access(path, os.W_OK):
        raise GateSpecError(f"{option} {path} is not writable")


def check_history_file(history_path: str | Path) -> None:
    """Refuse, before scoring, a history file that cannot be appended to: a folder that is missing
    or read-only, or a file that is not an evaluation history."""
    check_writable_file(history_path, "--history")
    try:
        EvalHistory.read(history_path)
    except EvalHistoryError as exc:
        raise GateSpecError(str(exc)) from None


def check_gate(
    current: dict[str, float],
    baseline: Baseline,
    limits: dict[str, float],
    data_sha: str,
    allow_new_data: bool,
) -> GateResult:
    gate = GateResult()
    for name, allowed in limits.items():
        before, now = baseline.metrics[name], current.get(name, float("nan"))
        drop = (now - before) if name in LOWER_IS_BETTER else (before - now)
        line = f"{name}: baseline {before:.4f}, now {now:.4f}, drop {drop:+.4f} (allowed {allowed})"
        gate.messages.append(line)
        if not drop <= allowed:  # a NaN metric now fails the gate
            gate.regressions.append(line)
    baseline_data_sha = baseline.data_sha256
    if baseline_data_sha and baseline_data_sha != data_sha and not allow_new_data:
        gate.data_changed = True
        gate.messages.append(
            f"data changed: baseline data {baseline_data_sha[:12]}, now {data_sha[:12]} "
            "(pass --allow-new-data if intended)"
        )
    return gate


def check_shift(shift: ShiftVerdict | None, max_shift: float) -> tuple[list[str], list[str]]:
    """(messages, failures) of the data shift gate: it fails when the set-level test finds a shift
    (p below its alpha) larger than ``max_shift`` (the KS distance, 0-1), or cannot run."""
    if not shift:
        from cxr.shift import NOT_TESTED

        return [NOT_TESTED], [f"{NOT_TESTED}; the shift gate cannot pass without a verdict"]
    line = f"{shift.line()}; KS distance {shift.statistic:.3f} (allowed {max_shift:g})"
    if shift.shifted and shift.statistic > max_shift:
        return [line], [
            f"data shift: KS distance {shift.statistic:.3f} > {max_shift:g} (p {shift.p_value:.2g})"
        ]
    return [line], []


def add_robustness_failures(gate: GateResult, messages: list[str], failures: list[str]) -> None:
    gate.messages += messages
    gate.regressions += failures


@dataclass(frozen=True)
class EvaluationRun:
    """What one ``cxr evaluate`` run compares and records, beside its report."""

    model_sha256: str
    data_sha256: str
    history_path: Path
    baseline_metrics: Baseline | None = None
    baseline_path: Path | None = None
    limits: dict[str, float] = field(default_factory=dict)
    allow_new_data: bool = False
    execution: Execution | None = None
    n_files: int = 0
    n_errors: int = 0


def history_record(report: MetricsReport, run: EvaluationRun, gate: GateResult) -> EvalRecord:
    execution = run.execution
    return EvalRecord(
        model_sha256=run.model_sha256,
        data_sha256=run.data_sha256,
        verdict=gate.verdict,
        metrics=report.headline(),
        n_files=run.n_files,
        n_errors=run.n_errors,
        provider=execution.provider if execution else "",
        execution_precision=execution.precision if execution else "",
    )


def finish_evaluation(
    report: MetricsReport, out_dir: Path, run: EvaluationRun, gate: GateResult | None = None
) -> tuple[MetricsReport, GateResult]:
    """Gate the report against the baseline, record data hash, gate and execution in metrics.json,
    append the history; the report as written, and the gate."""
    gate = gate or GateResult()
    gate.files_failed = run.n_errors
    if run.baseline_metrics is not None:
        metrics_gate = check_gate(
            report.headline(), run.baseline_metrics, run.limits, run.data_sha256, run.allow_new_data
        )
        gate.messages = metrics_gate.messages + gate.messages
        gate.regressions = metrics_gate.regressions + gate.regressions
        gate.data_changed = metrics_gate.data_changed
    verdict = GateSummary(
        passed=gate.passed,
        verdict=gate.verdict,
        messages=tuple(gate.messages),
        baseline=str(run.baseline_path) if run.baseline_path else None,
    )
    report = replace(report, data_sha256=run.data_sha256, execution=run.execution, gate=verdict)
    report.write(out_dir / MetricsReport.FILE)
    EvalHistory.append(run.history_path, history_record(report, run, gate))
    return report, gate
