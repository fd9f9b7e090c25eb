"""Errors of the training stage. Each message is one line."""

from cxr.errors import InputError


class WeightsUnavailableError(InputError, RuntimeError):
    """Pretrained weights cannot be had."""


class RunStateError(InputError, RuntimeError):
    """The run folder is in a state that needs a decision (e.g. --resume)."""


class RunAlreadyFinished(RunStateError):
    """--resume on a run that finished: there is nothing to continue (retraining would append
    a second run to its history)."""
