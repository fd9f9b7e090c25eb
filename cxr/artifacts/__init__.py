"""Every format that crosses a stage boundary, each with one owner that writes and reads it.

- ``RunFolder``      what ``cxr train`` writes and export / recalibrate-bn / resume read;
- ``ModelContract``  the exported ONNX model's interface and metadata (one schema);
- ``Predictions``    the predictions CSV, its settings sidecar and the resumable partial file;
- ``MetricsReport``  metrics.json;
- ``RobustnessReport`` robustness.json (``cxr robustness``), read by the report and the card;
- ``Parity``         <model>.parity.json, the export's parity gate, read by the model card;
- ``EvalHistory``    evaluations/history.csv, one ``EvalRecord`` per ``cxr evaluate`` run;
- ``ScoringSettings`` what a scoring run records and a resume checks (with ``ScoringCounts``, the
                     ``ScoringRecord`` of predictions.meta.json), and the model's ``Execution``;
- ``TrainingConfig`` a run's config.json, the one record of the training settings and their defaults;
- ``RunFacts``       a run's run.json, the training facts export and resume read;
- ``Manifest``       manifest.csv (``cxr data prepare``), with ``SplitSummary``, its summary.json.

A stage learns about another stage only through these.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each name and its owner module, imported on first use (PEP 562): a scoring worker process that
# needs only the model contract does not pay for pandas, which the predictions owner imports.
_OWNERS = {
    "METRIC_NAMES": "metrics_report",
    "MetricsReport": "metrics_report",
    "MetricsReportError": "metrics_report",
    "ModelContract": "model_contract",
    "ModelContractError": "model_contract",
    "Predictions": "predictions",
    "PredictionsError": "predictions",
    "escape_path": "predictions",
    "unescape_path": "predictions",
    "RunFolder": "run_folder",
    "RunFolderError": "run_folder",
    "augment_policy_of": "run_folder",
    "RobustnessReport": "robustness_report",
    "RobustnessReportError": "robustness_report",
    "Parity": "parity",
    "EvalHistory": "eval_history",
    "EvalRecord": "eval_history",
    "EvalHistoryError": "eval_history",
    "ScoringSettings": "scoring_settings",
    "ScoringCounts": "scoring_settings",
    "ScoringRecord": "scoring_settings",
    "Execution": "scoring_settings",
    "TrainingConfig": "training_config",
    "TrainingConfigError": "training_config",
    "RunFacts": "run_facts",
    "RunFactsError": "run_facts",
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "SplitSummary": "manifest",
}

__all__ = sorted(_OWNERS)


def __getattr__(name: str) -> Any:
    if name not in _OWNERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_OWNERS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_OWNERS))
