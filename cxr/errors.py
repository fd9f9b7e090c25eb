"""The two bases of every error cxr reports in one line rather than as a bug.

``InputError``: the user's mistake or environment (a bad argument, a missing or foreign file, a
model whose metadata does not hold, a provider that is not installed). ``Unavailable``: a worker
process or a cluster the run depends on failed; the finished work is kept for ``--resume``. The
command line maps them to exit codes in one place (``cxr.app.cli.run_guarded``); any other
exception is a bug in cxr (exit 70).
"""

from __future__ import annotations


class InputError(Exception):
    """A user's mistake: one line, exit 2."""


class Unavailable(Exception):
    """A worker or service the run depends on failed: one line, exit 69."""
