"""Exit codes and the usage error of every command, defined once.

A usage error (bad argument, missing or foreign file, a model whose metadata does not
hold) is a ``click.ClickException`` subclass: click prints ``Error: <one line>`` and
exits with the class's ``exit_code``. A bug is never reported as a user's mistake, and
never as a regression: ``cxr.app.cli`` turns an unexpected exception into one line
and exit 70.
"""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_PARTIAL = 1  # cxr-infer: finished, but some files got error rows
EXIT_USAGE = 2
EXIT_REGRESSED = 1  # cxr evaluate: a gated metric dropped more than allowed
EXIT_DATA_CHANGED = 3  # cxr evaluate: the data differs from the baseline's
EXIT_EVAL_PARTIAL = 4  # cxr evaluate: gate passed, but some files could not be scored
EXIT_UNAVAILABLE = 69  # a worker or the Ray cluster failed mid-run; finished work is kept (EX_UNAVAILABLE)
EXIT_INTERNAL = 70  # a bug in cxr (sysexits EX_SOFTWARE)


class UsageError(click.ClickException):
    """A user's mistake: one line, exit 2."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()) or "usage error")


class ServiceUnavailable(click.ClickException):
    """A worker process or service the run depends on failed (killed by the system, the Ray cluster): one
    line, exit 69; rerun with --resume."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()) or "service unavailable")


class ParityFailed(click.ClickException):
    """cxr export: the ONNX model disagrees with Keras; no file is written. Exit 1."""

    exit_code = 1
