"""The ``cxr`` command group and the ``cxr-infer`` entry point.

Every command is a thin click layer over a stage's core function (pip-tools style: the
shared options live in ``cxr.app.options``, the exit codes and usage error in
``cxr.app.errors``). A user's mistake is one line and exit 2; a bug is one line and exit
70 (``CXR_DEBUG=1`` shows its traceback), so no cron job mistakes a crash for a verdict.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

import click

from cxr import __version__
from cxr.app.errors import EXIT_INTERNAL, EXIT_USAGE, Group, UsageError, click_error
from cxr.app.options import seed_option
from cxr.errors import InputError, Unavailable
from cxr.messages import first_line

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


@click.group(cls=Group, context_settings=HELP_OPTIONS)
@click.version_option(__version__, prog_name="cxr")
def cxr() -> None:
    """Pneumonia on pediatric chest X-rays: data -> train -> export -> infer -> report/evaluate."""


@cxr.group()
def data() -> None:
    """Data preparation: merge, dedupe, split by patient, and check for shortcuts."""


@data.command("prepare")
@click.option(
    "--source",
    type=click.Path(path_type=Path),
    default=None,
    help="Kaggle-layout folder or folder of class subfolders [default: ../shared/data/chest_xray].",
)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("data/splits"), show_default=True
)
@click.option(
    "--split-by",
    type=click.Choice(["patient", "image"]),
    default="patient",
    show_default=True,
    help="'image' reproduces the original notebook's leaky image-level split.",
)
@click.option(
    "--classes", default="NORMAL,PNEUMONIA", show_default=True, help="Class folder names, negative first."
)
@click.option(
    "--shortcut-check/--no-shortcut-check",
    default=True,
    show_default=True,
    help="Cross-validated AUC of trivial image statistics (noise, intensity, size) per class.",
)
@seed_option
def data_prepare(
    source: Path | None, out_dir: Path, split_by: str, classes: str, shortcut_check: bool, seed: int | None
) -> None:
    """Write data/splits/manifest.csv and summary.json (images are not copied)."""
    from cxr.data import DEFAULT_SOURCE, prepare_splits
    from cxr.shortcut import describe

    names = tuple(c.strip() for c in classes.split(",") if c.strip())
    if len(names) != 2 or len(set(names)) != 2:
        raise UsageError(f"--classes needs two different names, negative first, not {classes!r}")
    result = prepare_splits(
        source or DEFAULT_SOURCE,
        out_dir,
        classes=names,
        split_by=split_by,
        seed=42 if seed is None else seed,
        shortcut=shortcut_check,
    )
    s = result.summary
    for warning in result.warnings:
        click.echo(warning, err=True)
    click.echo(
        f"found {s.files_found} files: kept {s.images_kept} images, dropped {s.duplicates_dropped} "
        f"duplicates, skipped {s.skipped}, hidden {s.hidden_files_ignored}"
    )
    for split in ("train", "val", "test"):
        counts = ", ".join(f"{c} {n}" for c, n in s.counts[split].items())
        click.echo(f"  {split:5s}: {counts}; {s.patients[split]} patients")
    for item in s.skipped_files:
        click.echo(f"  skipped {item.path}: {item.reason}")
    click.echo(f"patients on several splits: {s.patients_on_several_splits}")
    if s.shortcut_check is not None:
        for line in describe(s.shortcut_check):
            click.echo(line)
    click.echo(f"wrote {result.manifest_path} and {result.summary_path}")


def _register_commands() -> None:
    from cxr.app.evaluate import evaluate
    from cxr.app.explain import explain
    from cxr.app.export import export
    from cxr.app.infer import infer
    from cxr.app.quantize import quantize
    from cxr.app.report import card, report
    from cxr.app.robustness import robustness
    from cxr.app.train import recalibrate_bn, train, weights

    for command in (
        train,
        recalibrate_bn,
        export,
        quantize,
        infer,
        report,
        evaluate,
        robustness,
        explain,
        card,
        weights,
    ):
        # -h too when a command runs alone (cxr-infer); click keeps the first help option it makes
        command.context_settings = {**HELP_OPTIONS, **command.context_settings}
        cxr.add_command(command)


_register_commands()


def json_logs_requested(argv: list[str]) -> bool:
    """``--log-format json`` on the command line (read before click parses it, so that even a usage
    error of the command line is reported as JSON)."""
    return "--log-format=json" in argv or any(
        a == "--log-format" and b == "json" for a, b in zip(argv, argv[1:])
    )


def _say(message: str, exit_code: int, as_json: bool, prog_name: str) -> None:
    """One error line on stderr: text, or one JSON object with the event, message and exit code."""
    if as_json:
        record = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "command": prog_name,
            "event": "error",
            "message": " ".join(message.split()),
            "exit_code": exit_code,
        }
        click.echo(json.dumps(record), err=True)
    else:
        click.echo(message, err=True)


def _warnings_as_json(prog_name: str) -> None:
    """Python warnings become JSON events too, so that stderr stays one JSON object a line."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        record = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "command": prog_name,
            "event": "warning",
            "message": f"{category.__name__}: {first_line(message)}",
        }
        click.echo(json.dumps(record), err=True)

    warnings.showwarning = show


QUIET_RESOURCE_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"


def run_guarded(command: click.Command, prog_name: str) -> None:
    """Run a click command; a stage's ``InputError`` or ``Unavailable`` has the exit code of
    ``cxr.app.errors.click_error``, an environment failure (disk full, read-only folder) is a one-line
    error with exit 2, and a bug a one-line error with exit 70. With ``--log-format json`` every
    one of them is a JSON object on stderr."""
    # A run killed with -9 leaves its worker pool's semaphores to multiprocessing's resource tracker,
    # which cleans them up and warns in a Python warning; the tracker is a child process that reads
    # its warning filters from the environment.
    os.environ["PYTHONWARNINGS"] = ",".join(
        filter(None, (os.environ.get("PYTHONWARNINGS"), QUIET_RESOURCE_TRACKER))
    )
    as_json = json_logs_requested(sys.argv[1:])
    if as_json:
        _warnings_as_json(prog_name)
    try:
        command.main(prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        _say("Aborted!", 130, as_json, prog_name)
        sys.exit(130)
    except click.ClickException as exc:
        if as_json:
            _say(f"Error: {exc.format_message()}", exc.exit_code, True, prog_name)
        else:
            exc.show()
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except (InputError, Unavailable) as exc:  # raised outside a cxr command (whose class maps them itself)
        error = click_error(exc)
        _say(f"Error: {error.format_message()}", error.exit_code, as_json, prog_name)
        sys.exit(error.exit_code)
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _say(f"Error: {exc.strerror or first_line(exc)}{where}", EXIT_USAGE, as_json, prog_name)
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, never with a verdict's exit code
        if os.environ.get("CXR_DEBUG"):
            raise
        _say(
            f"internal error (a bug in cxr, not in your input): {type(exc).__name__}: {first_line(exc)}; "
            "rerun with CXR_DEBUG=1 for the traceback",
            EXIT_INTERNAL,
            as_json,
            prog_name,
        )
        sys.exit(EXIT_INTERNAL)
    sys.exit(0)


def main() -> None:
    """Entry point of ``cxr``."""
    run_guarded(cxr, "cxr")


def infer_main() -> None:
    """Entry point of ``cxr-infer``."""
    from cxr.app.infer import infer

    run_guarded(infer, "cxr-infer")


if __name__ == "__main__":  # python -m cxr.app.cli (a machine with the package but no console scripts)
    main()
