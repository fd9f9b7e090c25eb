"""robustness.json: what ``cxr robustness`` (and ``cxr evaluate --with-robustness``) measured, and the
report and the model card read.

    {"threshold", "classes", "n_images", "perturbations": {NAME: {"roc_auc", "max_flip_rate",
     "classes": {CLASS: {...}}, ...}}, "model", "model_sha256", "seed", "skipped_files", "left_out",
     "n_files", "execution", "gate": {"limits", "messages", "passed"}?, "figure"?}

``RobustnessReport`` is the record a run makes: the suite's figures (a ``RobustnessSection``, the
report stage's layout) and the run's facts, typed (``save`` / ``load``). ``read`` / ``write`` are
the raw JSON object, checked at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from cxr.artifacts.report_sections import RobustnessGate, RobustnessSection
from cxr.artifacts.scoring_settings import Execution
from cxr.errors import InputError
from cxr.files import read_json_file, write_json_atomic

REQUIRED = ("perturbations", "threshold", "classes", "n_images")
LEFT_OUT_LISTED = 100  # the file names this many of the files left out; ``skipped_files`` counts them all


class RobustnessReportError(InputError, ValueError):
    """A file that is not a robustness.json, or cannot be read. One-line message."""


@dataclass(frozen=True)
class LeftOutFile:
    """A file the suite left out (missing, unreadable or unlabelled), and why."""

    path: str
    why: str


@dataclass(frozen=True)
class RobustnessReport:
    """One model on one labelled set under the perturbation suite: the figures (``section``, with
    the gate where one was asked for), which model, the noise seed, the files left out and how the
    model ran."""

    section: RobustnessSection
    model: str
    model_sha256: str
    seed: int
    left_out: tuple[LeftOutFile, ...] = ()
    skipped_files: int = 0
    execution: Execution | None = None

    FILE: ClassVar[str] = "robustness.json"

    @property
    def n_files(self) -> int:
        return self.section.n_images + self.skipped_files

    @property
    def gate(self) -> RobustnessGate | None:
        return self.section.gate

    def with_gate(self, gate: RobustnessGate) -> RobustnessReport:
        return replace(self, section=replace(self.section, gate=gate))

    def as_section(self) -> RobustnessSection:
        """The report stage's view: the figures, with the run's facts in the file's order."""
        facts = {
            "model": self.model,
            "model_sha256": self.model_sha256,
            "seed": self.seed,
            "skipped_files": self.skipped_files,
            "left_out": [{"path": item.path, "why": item.why} for item in self.left_out[:LEFT_OUT_LISTED]],
            "n_files": self.n_files,
            "execution": self.execution.to_json() if self.execution else {},
        }
        return replace(self.section, facts=facts)

    def to_json(self) -> dict[str, Any]:
        return self.as_section().to_dict()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RobustnessReport:
        section = RobustnessSection.from_dict(data)
        facts, execution = section.facts, section.facts.get("execution")
        return cls(
            section=replace(section, facts={}),
            model=str(facts.get("model", "")),
            model_sha256=str(facts.get("model_sha256", "")),
            seed=int(facts.get("seed", 0)),
            left_out=tuple(LeftOutFile(str(i["path"]), str(i["why"])) for i in facts.get("left_out") or []),
            skipped_files=int(facts.get("skipped_files", 0)),
            execution=Execution(**execution) if isinstance(execution, dict) and execution else None,
        )

    def save(self, path: str | Path) -> Path:
        return self.write(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> RobustnessReport:
        return cls.from_json(cls.read(path))

    @staticmethod
    def write(path: str | Path, result: dict[str, Any]) -> Path:
        return write_json_atomic(path, result)

    @staticmethod
    def read(path: str | Path) -> dict[str, Any]:
        data = read_json_file(path, RobustnessReportError)
        missing = [key for key in REQUIRED if not isinstance(data, dict) or key not in data]
        if missing:
            raise RobustnessReportError(
                f"{path} is not a robustness.json from `cxr robustness` "
                f"(no {', '.join(repr(k) for k in missing)})"
            )
        if "clean" not in data["perturbations"]:
            raise RobustnessReportError(f"{path} has no 'clean' row to compare the perturbations with")
        return data
