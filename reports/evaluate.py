"""Scheduled evaluation: score a folder, write the report, append to a history, gate on regressions."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.files import atomic_path, sha256_file, write_json_atomic
from cxr.imaging import list_images

ALIASES = {"auc": "roc_auc", "ap": "pr_auc", "sensitivity": "recall", "acc": "accuracy"}
LOWER_IS_BETTER = {"loss", "brier", "ece"}


class GateSpecError(ValueError):
    """A bad --max-drop specification or baseline file. One-line message."""


@dataclass
class GateResult:
    regressions: list[str] = field(default_factory=list)
    data_changed: bool = False
    messages: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.regressions and not self.data_changed


def parse_max_drop(spec: str) -> dict[str, float]:
    """``auc=0.01,recall=0.02`` -> {'roc_auc': 0.01, 'recall': 0.02}."""
    from cxr.reports.metrics import METRIC_NAMES

    limits = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        name = ALIASES.get(name.strip().lower(), name.strip().lower())
        if not sep or name not in METRIC_NAMES:
            raise GateSpecError(f"bad --max-drop item {item!r}; use NAME=VALUE with NAME in {', '.join(METRIC_NAMES)}")
        try:
            limits[name] = float(value)
        except ValueError:
            raise GateSpecError(f"bad --max-drop value in {item!r}") from None
    return limits


def folder_data_sha256(folder: str | Path, only: list[str] | None = None) -> str:
    """Hash of the evaluation data: every image's relative path and content hash, sorted
    (``only``: just these relative paths; a missing one hashes as 'missing')."""
    digest = hashlib.sha256()
    root = Path(folder)
    rels = sorted(only) if only is not None else [p.relative_to(root).as_posix() for p in list_images(root)]
    for rel in rels:
        content = sha256_file(root / rel) if (root / rel).is_file() else "missing"
        digest.update(f"{rel}\t{content}\n".encode())
    return digest.hexdigest()


def headline_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The gated metrics of a report: its first model, at the model's own threshold."""
    result = next(iter(report["models"].values()))
    return dict(result["at_model_threshold"]["metrics"])


def load_baseline(path: str | Path) -> dict[str, Any]:
    try:
        baseline = json.loads(Path(path).read_text())
        headline_metrics(baseline)
    except (OSError, json.JSONDecodeError, KeyError, StopIteration, TypeError) as exc:
        raise GateSpecError(f"baseline {path} is not a cxr metrics.json ({type(exc).__name__})") from None
    return baseline


def check_gate(current: dict[str, float], baseline: dict[str, float], limits: dict[str, float],
               data_sha: str, baseline_data_sha: str | None, allow_new_data: bool) -> GateResult:
    gate = GateResult()
    for name, allowed in limits.items():
        before, now = baseline[name], current[name]
        drop = (now - before) if name in LOWER_IS_BETTER else (before - now)
        line = f"{name}: baseline {before:.4f}, now {now:.4f}, drop {drop:+.4f} (allowed {allowed})"
        gate.messages.append(line)
        if drop > allowed:
            gate.regressions.append(line)
    if baseline_data_sha and baseline_data_sha != data_sha and not allow_new_data:
        gate.data_changed = True
        gate.messages.append(f"data changed: baseline data {baseline_data_sha[:12]}, now {data_sha[:12]} "
                             "(pass --allow-new-data if intended)")
    return gate


def append_history(history_path: str | Path, row: dict[str, Any]) -> None:
    """Append one row to the evaluation history CSV (rewritten atomically)."""
    history_path = Path(history_path)
    frame = pd.read_csv(history_path, dtype=str, keep_default_na=False) if history_path.is_file() else pd.DataFrame()
    frame = pd.concat([frame, pd.DataFrame([{k: str(v) for k, v in row.items()}])], ignore_index=True)
    with atomic_path(history_path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def history_row(report: dict[str, Any], model_sha: str, data_sha: str, gate: GateResult) -> dict[str, Any]:
    metrics = headline_metrics(report)
    verdict = "pass" if gate.passed else ("data_changed" if gate.data_changed else "regression")
    return {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model_sha256": model_sha,
            "data_sha256": data_sha, **{k: round(v, 6) for k, v in metrics.items()}, "verdict": verdict}


def finish_evaluation(report: dict[str, Any], out_dir: Path, model_sha: str, data_sha: str,
                      baseline_path: str | Path | None, limits: dict[str, float], allow_new_data: bool,
                      history_path: str | Path) -> GateResult:
    """Gate the report against the baseline, record data hash and gate in metrics.json, append history."""
    gate = GateResult()
    if baseline_path:
        baseline = load_baseline(baseline_path)
        gate = check_gate(headline_metrics(report), headline_metrics(baseline), limits, data_sha,
                          baseline.get("data_sha256"), allow_new_data)
    report.update({"data_sha256": data_sha, "gate": {"passed": gate.passed, "messages": gate.messages,
                                                     "baseline": str(baseline_path) if baseline_path else None}})
    write_json_atomic(out_dir / "metrics.json", report)
    append_history(history_path, history_row(report, model_sha, data_sha, gate))
    return gate
