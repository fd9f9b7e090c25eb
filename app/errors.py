"""Exit codes and the usage error of every command, and the one mapping of the stages' errors to them.

A usage error (bad argument, missing or foreign file, a model whose metadata does not
hold) is a ``click.ClickException`` subclass: click prints ``Error: <one line>`` and
exits with the class's ``exit_code``. The stages raise the core's ``InputError`` (a user's
mistake, exit 2) and ``Unavailable`` (a worker or cluster failed, exit 69); ``click_error`` maps
them, here alone, and ``Command``/``Group`` (every cxr command's class) and ``cxr.app.cli.run_guarded``
apply it. A bug is never reported as a user's mistake, and never as a regression: ``run_guarded``
turns an unexpected exception into one line and exit 70.
"""

from __future__ import annotations

import click

from cxr.errors import InputError, Unavailable
from cxr.messages import first_line

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


def click_error(exc: InputError | Unavailable) -> click.ClickException:
    """The exit of a stage's one-line error: a usage error (2), or a failed service (69)."""
    if isinstance(exc, Unavailable):
        return ServiceUnavailable(first_line(exc))
    return UsageError(first_line(exc))


class Command(click.Command):
    """A cxr command: the stages' ``InputError`` and ``Unavailable`` leave it as their exit codes."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except (InputError, Unavailable) as exc:
            raise click_error(exc) from None


class Group(click.Group):
    """A cxr command group, mapping errors as ``Command``; its subcommands are ``Command``s."""

    command_class = Command
    group_class = type  # its subgroups are Groups too

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except (InputError, Unavailable) as exc:
            raise click_error(exc) from None
