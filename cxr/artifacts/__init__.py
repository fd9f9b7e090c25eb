"""Every format that crosses a stage boundary, each with one owner that writes and reads it.

- ``RunFolder``      what ``cxr train`` writes and export / recalibrate-bn / resume read;
- ``ModelContract``  the exported ONNX model's interface and metadata (one schema);
- ``Predictions``    the predictions CSV, its settings sidecar and the resumable partial file;
- ``MetricsReport``  metrics.json.

A stage learns about another stage only through these.
"""

from cxr.artifacts.metrics_report import METRIC_NAMES, MetricsReport, MetricsReportError
from cxr.artifacts.model_contract import ModelContract, ModelContractError
from cxr.artifacts.predictions import Predictions, PredictionsError, escape_path, unescape_path
from cxr.artifacts.run_folder import RunFolder, RunFolderError

__all__ = ["METRIC_NAMES", "MetricsReport", "MetricsReportError", "ModelContract", "ModelContractError",
           "Predictions", "PredictionsError", "RunFolder", "RunFolderError", "escape_path", "unescape_path"]
