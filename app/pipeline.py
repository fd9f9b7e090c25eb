"""The composition behind ``cxr-infer``, ``cxr evaluate`` and ``cxr robustness``: each takes a request
record and returns a result record. The commands parse their options into a request, call one of
``run_inference``, ``run_evaluation`` and ``run_robustness``, print what came back and exit.

The steps they share live here once: load the model, find the ground truth, take the output folder,
score with the chosen engine, say what the domain guard found, and write the report when labels
exist. Errors are the stages' own ``InputError``/``Unavailable``; the command line maps them to exit
codes in one place (``cxr.app.errors``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr.app.events import Events
from cxr.artifacts import MetricsReport, RobustnessReport
from cxr.artifacts.report_sections import RobustnessGate
from cxr.artifacts.robustness_report import LeftOutFile
from cxr.artifacts.scoring_settings import ScoringRecord
from cxr.errors import InputError
from cxr.infer.engine import EngineChoice, GroundTruth, ScoreResult, ScoringOptions
from cxr.infer.model import OnnxClassifier
from cxr.shift import ShiftVerdict

if TYPE_CHECKING:
    from cxr.app.prometheus import PrometheusFacts
    from cxr.artifacts.metrics_report import Baseline
    from cxr.reports.evaluate import GateResult
    from cxr.reports.summary import ReportInputs, ReportOptions

LOCK_NAME = ".cxr.lock"
OUTSIDE_DOMAIN = "outside training domain"


class PipelineInputError(InputError, ValueError):
    """A request that cannot run: a missing folder, an output folder that cannot be used, options
    that do not go together, too few labelled images. One-line message."""


# -- requests ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """The model file and how to run it."""

    path: str
    device: str = "auto"
    precision: str = "fp32"


@dataclass(frozen=True)
class LabelChoice:
    """Where the ground truth comes from: a labels CSV, a split manifest's split, or (neither) the
    class-named folders."""

    labels_csv: Path | None = None
    manifest: Path | None = None
    split: str = "test"


@dataclass(frozen=True)
class InferenceRequest:
    """``cxr-infer``: score ``source`` into ``out_dir``; with labels, the report (``full``: figures and
    HTML, else metrics.json alone)."""

    source: str
    model: ModelChoice
    out_dir: Path
    labels: LabelChoice = field(default_factory=LabelChoice)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    engine: EngineChoice = field(default_factory=EngineChoice)
    full_report: bool = True
    n_boot: int = 1000


@dataclass(frozen=True)
class RobustnessRequest:
    """``cxr robustness``: the perturbation suite on the labelled images under ``folder``, gated by
    ``max_flip`` (``NAME=RATE,...``); robustness.json, .md and .png in ``out_dir``."""

    folder: Path
    model: ModelChoice
    out_dir: Path
    labels: LabelChoice = field(default_factory=LabelChoice)
    max_flip: str = ""
    seed: int = 0
    batch_size: int | None = None
    workers: int | None = None


@dataclass(frozen=True)
class GateChoice:
    """What ``cxr evaluate`` gates on: allowed drops against a baseline (of one of its models), the
    robustness suite's flip limits, and the largest data shift."""

    max_drop: str = "roc_auc=0.01,recall=0.02"
    baseline: Path | None = None
    baseline_model: str | None = None
    allow_new_data: bool = False
    max_flip: str = ""
    max_shift: float | None = None


@dataclass(frozen=True)
class EvaluationRequest:
    """``cxr evaluate``: score the labelled ``folder``, report, optionally run the robustness suite,
    gate, append to the history, and write the optional baseline and Prometheus files."""

    folder: Path
    model: ModelChoice
    out_dir: Path
    history_path: Path
    labels: LabelChoice = field(default_factory=LabelChoice)
    gate: GateChoice = field(default_factory=GateChoice)
    with_robustness: bool = False
    robustness_seed: int = 0
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    engine: EngineChoice = field(default_factory=EngineChoice)
    workers: int | None = None  # the robustness suite's decode workers (and the local engine's)
    metrics_file: Path | None = None
    write_baseline: Path | None = None
    n_boot: int = 1000


# -- results -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceResult:
    """A scored source: the model, the engine's result, the sidecar's counts and shift test, and the
    report stage's metrics.json (None without labels or when no report could be made)."""

    model: OnnxClassifier
    scored: ScoreResult
    shift: ShiftVerdict | None
    metrics: MetricsReport | None

    @property
    def n_unscored_foreign(self) -> int:
        """Files left unscored as outside the training domain (``--foreign skip``)."""
        predictions = self.scored.predictions
        probability = predictions[f"p_{self.model.info.positive_class}"]
        return int(((predictions["error"] == "") & (probability == "")).sum())


@dataclass(frozen=True)
class RobustnessResult:
    """The suite's report (with its gate) and the limits it broke."""

    report: RobustnessReport
    failures: tuple[str, ...]


@dataclass(frozen=True)
class EvaluationResult:
    """An evaluation: what was scored, the report with the gate's verdict, the robustness suite's
    result where it ran, and the gate."""

    scored: ScoreResult
    metrics: MetricsReport
    verdict: str
    gate_messages: tuple[str, ...]
    regressions: tuple[str, ...]
    robustness: RobustnessReport | None = None


# -- the shared steps ----------------------------------------------------------------------------------------


def load_model(choice: ModelChoice) -> OnnxClassifier:
    return OnnxClassifier(choice.path, device=choice.device, precision=choice.precision)


def ground_truth(model: OnnxClassifier, labels: LabelChoice) -> tuple[list[str] | None, GroundTruth]:
    """(escaped relative paths to score, or None for the whole folder; GroundTruth)."""
    from cxr.data import manifest_split
    from cxr.infer.engine import read_labels_csv

    if labels.labels_csv is not None and labels.manifest is not None:
        raise PipelineInputError("give --labels or --manifest, not both")
    if labels.manifest is not None:
        split = manifest_split(labels.manifest, labels.split, model.info.classes)
        return split.paths, GroundTruth(
            split.labels, split.patient_ids, f"manifest {labels.manifest.name} split {labels.split}"
        )
    if labels.labels_csv is not None:
        return None, read_labels_csv(labels.labels_csv, model.info.classes)
    return None, GroundTruth()


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it is writable, before any work is done."""
    import tempfile

    from cxr.imaging import OUTPUT_MARKERS

    if out_dir.exists() and not out_dir.is_dir():
        raise PipelineInputError(f"--out {out_dir} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
        (out_dir / OUTPUT_MARKERS[0]).touch()  # later runs over a folder that holds this one skip it
    except OSError as exc:
        raise PipelineInputError(f"--out {out_dir} is not writable: {exc.strerror or exc}") from None


@contextlib.contextmanager
def out_dir_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``OUT/.cxr.lock`` (filelock: an OS lock, released if the process dies) for the run."""
    from filelock import FileLock, Timeout

    prepare_out_dir(out_dir)
    lock = FileLock(str(out_dir / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise PipelineInputError(
            f"another cxr run is writing to {out_dir} (it holds {out_dir / LOCK_NAME}); "
            "wait for it to finish or choose another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise PipelineInputError(f"folder not found: {folder}")


def check_source(source: str, engine: str) -> None:
    """The local engine scores a folder; the ray engine also a CSV list of paths or a URI."""
    from cxr.infer.ray_engine import is_path_list, is_uri  # no Ray import: the engine imports Ray lazily

    if engine == "ray" and (is_uri(source) or is_path_list(source)):
        return
    if not Path(source).is_dir():
        hint = "" if engine == "ray" else " (a CSV list of paths or a URI needs --engine ray)"
        raise PipelineInputError(f"folder not found: {source}{hint}")


def check_out_dir(out_dir: Path, folder: Path) -> None:
    """The output folder may sit inside the scored folder (it is skipped), but not be that folder."""
    if folder.is_dir() and out_dir.resolve() == folder.resolve():
        raise PipelineInputError(
            f"--out {out_dir} is the scored folder itself: its figures would be scored by the next "
            f"run; choose a folder inside or beside it (e.g. --out {out_dir}/cxr_out)"
        )


def inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def excluded(out_dir: Path, folder: Path) -> Path | None:
    """The output folder, where it lies inside the scored folder (its files are not data)."""
    return out_dir if inside(out_dir, folder) else None


def run_options(
    scoring: ScoringOptions,
    model: OnnxClassifier,
    labels: LabelChoice,
    choice: ModelChoice,
    out_dir: Path,
    folder: Path,
) -> ScoringOptions:
    """The command's scoring options with what the run adds: the ground truth and the files it
    names, the model's device, and the output folder left out where it lies inside ``folder``."""
    only, truth = ground_truth(model, labels)
    return replace(scoring, truth=truth, only=only, device=choice.device, exclude=excluded(out_dir, folder))


def check_labels(folder: Path, options: ScoringOptions, model: OnnxClassifier, events: Events) -> None:
    """Before scoring: a labels file that labels none of the files is a usage error; one that labels
    only some of them is said."""
    from cxr.infer.engine import check_labels_match, list_targets

    truth = options.truth
    if truth.labels is None or not folder.is_dir():
        return
    rels, _ = list_targets(folder, options.only, options.exclude)
    matched = check_labels_match(truth, rels, model.info.classes, str(folder))
    if matched < len(rels):
        events.emit(
            "labels",
            f"the {truth.source} labels {matched} of the {len(rels)} files; "
            "the others are scored without a label",
            err=True,
            labelled=matched,
            files=len(rels),
        )


def say_model(model: OnnxClassifier, events: Events) -> None:
    events.emit(
        "model",
        f"provider: {model.provider} ({model.precision}) | model {model.path.name} "
        f"({model.info.sha256[:12]}), threshold {model.info.threshold:g}, classes {model.info.classes}",
        model=model.path.name,
        model_sha256=model.info.sha256,
        **model.execution.to_json(),
    )


def score(
    source: str,
    model: OnnxClassifier,
    out_dir: Path,
    options: ScoringOptions,
    engine: EngineChoice,
    events: Events,
) -> ScoreResult:
    """Score with the chosen engine (an option it does not take is refused, never dropped); the same
    predictions contract either way."""
    try:
        chosen = engine.make()
        if chosen.native_logs:
            events.native_stderr_as_json(chosen.name)
        return chosen.score(source, model, out_dir / "predictions.csv", options, events.progress)
    finally:
        events.close()


def recorded_shift(result: ScoreResult) -> ShiftVerdict | None:
    """The set-level shift test the run recorded in its sidecar (None without a guard, or too few images)."""
    record = ScoringRecord.read(result.csv_path)
    return record.counts.shift if record and record.counts else None


def outside_domain(result: ScoreResult) -> int:
    return int(result.predictions["qc"].str.contains(OUTSIDE_DOMAIN, regex=False).sum())


def say_domain(result: ScoreResult, model: OnnxClassifier, events: Events) -> ShiftVerdict | None:
    """Say how many images the domain guard flagged and the set-level shift verdict; return the verdict."""
    from cxr.shift import NOT_TESTED

    if model.guard is None:
        events.emit(
            "domain",
            "domain guard: this model has none (re-export it with `cxr export` to add one); "
            "images unlike the training data are not flagged",
            err=True,
        )
        return None
    flagged, scored = outside_domain(result), int((result.predictions["domain_score"] != "").sum())
    events.emit(
        "domain",
        f"domain guard: {flagged} of {scored} images outside the training domain "
        f"(threshold {model.guard.threshold:.2f}; see the 'qc' column)",
        always=True,
        flagged=flagged,
        scored=scored,
    )
    shift = recorded_shift(result)
    if shift is None:
        events.emit("shift", NOT_TESTED, always=True)
        return None
    events.emit(
        "shift",
        shift.line(),
        always=True,
        err=shift.shifted,
        p_value=shift.p_value,
        statistic=shift.statistic,
        n_images=shift.n_images,
        shifted=shift.shifted,
    )
    return shift


def no_labels_reason(model: OnnxClassifier, folder: Path) -> str:
    """Why a run found no ground truth, in one clause."""
    return (
        f"no folder under {folder} is named after a class ({', '.join(model.info.classes)}, "
        "in any case) and no --labels or --manifest was given"
    )


def report_inputs(
    result: ScoreResult,
    folder: Path,
    model: OnnxClassifier,
    robustness: RobustnessReport | None,
    options: ReportOptions,
    *,
    labelled: bool,
) -> ReportInputs:
    """What the report stage reads: the predictions, the image folder (a CSV list or a URI has none),
    the robustness section, and the Grad-CAM of the images it will show where the model has a 'cam'
    output (computed here: the report stage loads no model)."""
    from cxr.app.report import grad_cams
    from cxr.reports.summary import ReportInputs, images_shown, images_to_review

    images_root = folder if folder.is_dir() else None
    inputs = ReportInputs(
        prediction_files=(result.csv_path,),
        images_root=images_root,
        robustness={model.path.stem: robustness.as_section()} if robustness else {},
    )
    if not model.has_cam or images_root is None:
        return inputs
    shown = images_shown(inputs, options) if labelled else images_to_review(result.csv_path)
    return replace(inputs, cams=grad_cams(model, images_root, shown))


def write_report(
    result: ScoreResult,
    folder: Path,
    out_dir: Path,
    model: OnnxClassifier,
    events: Events,
    *,
    full: bool,
    n_boot: int = 1000,
    robustness: RobustnessReport | None = None,
) -> MetricsReport | None:
    """The report stage on these predictions, when they carry ground truth: its metrics.json."""
    from cxr.reports.summary import ReportInputError, ReportOptions, summarize, summarize_unlabelled

    options = ReportOptions(n_boot=n_boot, with_figures=full)
    if not (result.predictions["true_label"] != "").any():
        events.emit(
            "labels",
            f"no labels: {no_labels_reason(model, folder)}; the report shows the scores only",
            err=True,
        )
        if full:
            summarize_unlabelled(
                report_inputs(result, folder, model, None, options, labelled=False), out_dir, options
            )
        return None
    try:
        inputs = report_inputs(result, folder, model, robustness, options, labelled=True)
        return summarize(inputs, out_dir, options, progress=lambda line: events.emit("report", line))
    except ReportInputError as exc:
        events.emit("no_report", f"no report: {exc}", err=True)
        return None


# -- cxr-infer -----------------------------------------------------------------------------------------------


def run_inference(request: InferenceRequest, events: Events) -> InferenceResult:
    """Score the source with the chosen engine and, with labels, write the report."""
    check_source(request.source, request.engine.name)
    folder = Path(request.source)
    check_out_dir(request.out_dir, folder)
    model = load_model(request.model)
    say_model(model, events)
    options = run_options(request.scoring, model, request.labels, request.model, request.out_dir, folder)
    check_labels(folder, options, model, events)
    with out_dir_lock(request.out_dir):
        scored = score(request.source, model, request.out_dir, options, request.engine, events)
        metrics = write_report(
            scored, folder, request.out_dir, model, events, full=request.full_report, n_boot=request.n_boot
        )
    return InferenceResult(model, scored, recorded_shift(scored), metrics)


# -- cxr robustness ------------------------------------------------------------------------------------------


def labelled_images(
    folder: Path, model: OnnxClassifier, only: list[str] | None, truth: GroundTruth, workers: int | None
) -> tuple[np.ndarray, np.ndarray, list[LeftOutFile]]:
    """(decoded model inputs, label indices, the files left out) of the labelled images; files that
    do not decode or carry no label are left out."""
    from cxr.imaging import decoded_stream
    from cxr.infer.engine import list_targets
    from cxr.infer.score import effective_workers

    classes, size = model.info.classes, model.info.input_size
    rels, paths = list_targets(folder, only, None)
    labelled = [(rel, path, truth.label_for(rel, classes)) for rel, path in zip(rels, paths)]
    left_out = [LeftOutFile(rel, "no label") for rel, _, label in labelled if label not in classes]
    labelled = [item for item in labelled if item[2] in classes]
    images, labels = [], []
    stream = decoded_stream([path for _, path, _ in labelled], size, effective_workers(workers))
    for (rel, _, label), (image, message) in zip(labelled, stream):
        if image is None:
            left_out.append(LeftOutFile(rel, message))
            continue
        images.append(image)
        labels.append(classes.index(label))
    array = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return array, np.array(labels, dtype=int), left_out


def robustness_suite(
    model: OnnxClassifier,
    folder: Path,
    only: list[str] | None,
    truth: GroundTruth,
    events: Events,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    workers: int | None = None,
) -> RobustnessReport:
    """One model on one labelled set under the perturbation suite."""
    from cxr.infer.robustness import score_perturbed
    from cxr.perturb import SUITE
    from cxr.reports.robustness import robustness_metrics

    images, y, left_out = labelled_images(folder, model, only, truth, workers)
    if len(np.unique(y)) < 2:
        raise PipelineInputError(f"the robustness suite needs labelled images of both classes under {folder}")

    def progress(name: str) -> None:
        events.emit("perturbation", f"robustness: {name}", perturbation=name)

    scores = score_perturbed(model, images, seed=seed, batch_size=batch_size or 64, progress=progress)
    section = robustness_metrics(
        y, scores, model.info.threshold, model.info.classes, {item.name: item.description for item in SUITE}
    )
    return RobustnessReport(
        section=section,
        model=model.path.stem,
        model_sha256=model.info.sha256,
        seed=seed,
        left_out=tuple(left_out),
        skipped_files=len(left_out),
        execution=model.execution,
    )


def flip_limits(spec: str) -> dict[str, float]:
    """``--max-flip``: the flip rate allowed per perturbation of the suite."""
    from cxr.perturb import SUITE_NAMES
    from cxr.reports.robustness import parse_max_flip

    return parse_max_flip(spec, SUITE_NAMES)


def flips_checked(report: RobustnessReport, limits: dict[str, float]) -> tuple[list[str], list[str]]:
    """(messages, failures) of the worst class's flip rate of each gated perturbation."""
    from cxr.reports.robustness import check_flips

    return check_flips(report.section, limits)


def write_robustness(report: RobustnessReport, out_dir: Path) -> None:
    """robustness.png, robustness.md and robustness.json in ``out_dir``."""
    from cxr.files import write_text_atomic
    from cxr.reports.robustness import plot_robustness, robustness_markdown

    plot_robustness(report.section, out_dir / "robustness.png", title=f"{report.model}: robustness")
    write_text_atomic(out_dir / "robustness.md", robustness_markdown(report.section))
    report.save(out_dir / RobustnessReport.FILE)


def run_robustness(request: RobustnessRequest, events: Events) -> RobustnessResult:
    """The perturbation suite on the labelled set, gated by ``--max-flip``, written to the output folder."""
    check_folder(request.folder)
    limits = flip_limits(request.max_flip)
    model = load_model(request.model)
    only, truth = ground_truth(model, request.labels)
    with out_dir_lock(request.out_dir):
        report = robustness_suite(
            model,
            request.folder,
            only,
            truth,
            events,
            seed=request.seed,
            batch_size=request.batch_size,
            workers=request.workers,
        )
        messages, failures = flips_checked(report, limits)
        report = report.with_gate(RobustnessGate(limits, tuple(messages), not failures))
        write_robustness(report, request.out_dir)
    return RobustnessResult(report, tuple(failures))


# -- cxr evaluate --------------------------------------------------------------------------------------------


DEFAULT_HISTORY = Path("evaluations/history.csv")


@dataclass(frozen=True)
class Preflight:
    """What ``cxr evaluate`` checks before the model is loaded: the gate's limits."""

    max_drop: dict[str, float]
    max_flip: dict[str, float]


def preflight(request: EvaluationRequest) -> Preflight:
    """Everything that can be checked before the model is loaded: the folder, the gate specs and
    the output files (their folders must exist and be writable)."""
    from cxr.reports.evaluate import check_history_file, check_writable_file, parse_max_drop

    check_folder(request.folder)
    if request.history_path == DEFAULT_HISTORY:
        DEFAULT_HISTORY.parent.mkdir(parents=True, exist_ok=True)
    limits = Preflight(parse_max_drop(request.gate.max_drop), flip_limits(request.gate.max_flip))
    check_history_file(request.history_path)
    if request.metrics_file is not None:
        check_writable_file(request.metrics_file, "--metrics-file")
    if request.write_baseline is not None:
        check_writable_file(request.write_baseline, "--write-baseline")
    return limits


def baseline_values(gate: GateChoice, limits: dict[str, float], model: OnnxClassifier) -> Baseline | None:
    """The baseline's values for this model (chosen by --baseline-model or the model file's sha256)."""
    from cxr.reports.evaluate import load_baseline

    if gate.baseline is None:
        if gate.baseline_model is not None:
            raise PipelineInputError("--baseline-model needs --baseline")
        return None
    return load_baseline(gate.baseline, limits, model.info.sha256, gate.baseline_model)


def save_baseline(path: Path | None, metrics: MetricsReport, verdict: str, events: Events) -> None:
    """``--write-baseline``: this run's metrics.json, for later runs' --baseline; never from a run
    whose gate failed or that lost files."""
    if path is None:
        return
    if verdict not in ("pass", "not_compared"):
        events.emit(
            "baseline", f"baseline not written to {path}: this evaluation's verdict is {verdict}", err=True
        )
        return
    try:
        metrics.write(path)
    except OSError as exc:
        raise PipelineInputError(
            f"--write-baseline {path}: cannot write it ({exc.strerror or exc})"
        ) from None
    events.emit("baseline", f"baseline written: {path} (gate later runs with --baseline {path})", always=True)


@dataclass(frozen=True)
class EvaluationSetup:
    """What an evaluation settles before it scores: the gate's limits, the model, its baseline, the
    files and their ground truth, and how to score them."""

    limits: Preflight
    model: OnnxClassifier
    baseline: Baseline | None
    only: list[str] | None
    truth: GroundTruth
    options: ScoringOptions


@dataclass
class GateChecks:
    """The gate so far (the report stage's ``GateResult``), the robustness suite's report where it
    ran, and the recorded shift verdict."""

    gate: GateResult
    robustness: RobustnessReport | None = None
    shift: ShiftVerdict | None = None


def setup_evaluation(request: EvaluationRequest) -> EvaluationSetup:
    """Everything checked before anything is scored: the gate specs and files, the output folder,
    the model, the baseline, the shift limit's guard and the ground truth."""
    limits = preflight(request)
    folder, out_dir = request.folder, request.out_dir
    check_out_dir(out_dir, folder)
    model = load_model(request.model)
    baseline = baseline_values(request.gate, limits.max_drop, model)
    if request.gate.max_shift is not None and model.guard is None:
        raise PipelineInputError(
            f"--max-shift needs a model with a domain guard; {model.path.name} has none "
            "(re-export it with `cxr export --from-onnx`)"
        )
    options = run_options(request.scoring, model, request.labels, request.model, out_dir, folder)
    return EvaluationSetup(limits, model, baseline, options.only, options.truth, options)


def gate_checks(
    request: EvaluationRequest, setup: EvaluationSetup, scored: ScoreResult, events: Events
) -> GateChecks:
    """The robustness suite's flip limits and the shift limit, where asked for."""
    from cxr.reports.evaluate import GateResult, add_robustness_failures, check_shift

    checks = GateChecks(GateResult(), shift=recorded_shift(scored))
    max_flip = setup.limits.max_flip
    if request.with_robustness or max_flip:
        checks.robustness = robustness_suite(
            setup.model,
            request.folder,
            setup.only,
            setup.truth,
            events,
            seed=request.robustness_seed,
            batch_size=request.scoring.batch_size,
            workers=request.workers,
        )
        add_robustness_failures(checks.gate, *flips_checked(checks.robustness, max_flip))
        checks.gate.compared = checks.gate.compared or bool(max_flip)
    if request.gate.max_shift is not None:
        add_robustness_failures(checks.gate, *check_shift(checks.shift, request.gate.max_shift))
        checks.gate.compared = True
    return checks


def record_evaluation(
    request: EvaluationRequest,
    setup: EvaluationSetup,
    scored: ScoreResult,
    metrics: MetricsReport,
    gate: GateResult,
) -> tuple[MetricsReport, GateResult]:
    """Gate against the baseline, record the data hash, gate and execution in metrics.json, append
    the history, and render the report again with the verdict."""
    from cxr.reports.evaluate import EvaluationRun, finish_evaluation, folder_data_sha256
    from cxr.reports.render import write_reports

    folder, out_dir = request.folder, request.out_dir
    gate.compared = gate.compared or setup.baseline is not None
    run = EvaluationRun(
        model_sha256=setup.model.info.sha256,
        data_sha256=folder_data_sha256(folder, setup.only, exclude=excluded(out_dir, folder)),
        history_path=request.history_path,
        baseline_metrics=setup.baseline,
        baseline_path=request.gate.baseline,
        limits=setup.limits.max_drop,
        allow_new_data=request.gate.allow_new_data,
        execution=setup.model.execution,
        n_files=scored.n_files,
        n_errors=scored.n_errors,
    )
    metrics, gate = finish_evaluation(metrics, out_dir, run, gate)
    write_reports(metrics, out_dir)  # again, now that metrics.json holds the gate's verdict
    return metrics, gate


def prometheus_facts(
    setup: EvaluationSetup, scored: ScoreResult, metrics: MetricsReport, checks: GateChecks, seconds: float
) -> PrometheusFacts:
    from cxr.app.prometheus import PrometheusFacts

    model, robustness = setup.model, checks.robustness
    return PrometheusFacts(
        verdict=checks.gate.verdict,
        headline=metrics.headline(),
        limits=setup.limits.max_drop,
        baseline=dict(setup.baseline.metrics) if setup.baseline is not None else None,
        scored=scored.n_files - scored.n_errors,
        failed=scored.n_errors,
        seconds=seconds,
        model_sha256=model.info.sha256,
        execution=model.execution,
        flip_rates={name: row.max_flip_rate for name, row in robustness.section.perturbations.items()}
        if robustness
        else None,
        shift=checks.shift,
        outside_domain=None if model.guard is None else outside_domain(scored),
    )


def run_evaluation(request: EvaluationRequest, events: Events) -> EvaluationResult:
    """Score, report, run the robustness suite where asked, gate, append to the history, and write
    the baseline and the Prometheus file where asked."""
    from cxr.app.prometheus import write_prometheus

    started = time.time()
    setup = setup_evaluation(request)
    folder, out_dir, model = request.folder, request.out_dir, setup.model
    with out_dir_lock(out_dir):
        scored = score(str(folder), model, out_dir, setup.options, request.engine, events)
        say_domain(scored, model, events)
        checks = gate_checks(request, setup, scored, events)
        metrics = write_report(
            scored,
            folder,
            out_dir,
            model,
            events,
            full=True,
            n_boot=request.n_boot,
            robustness=checks.robustness,
        )
        if metrics is None:
            raise PipelineInputError(
                f"no labelled images of both classes under {folder}; nothing to evaluate"
            )
        metrics, checks.gate = record_evaluation(request, setup, scored, metrics, checks.gate)
    save_baseline(request.write_baseline, metrics, checks.gate.verdict, events)
    if request.metrics_file is not None:
        write_prometheus(
            request.metrics_file, prometheus_facts(setup, scored, metrics, checks, time.time() - started)
        )
    gate = checks.gate
    return EvaluationResult(
        scored, metrics, gate.verdict, tuple(gate.messages), tuple(gate.regressions), checks.robustness
    )
