"""Errors a user can cause, printed as sentences rather than tracebacks."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in a spec, a command line or a log folder; exit status 2."""

    exit_status = 2

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class SpecError(UserError):
    """One or more problems found while validating specs."""


class LogDirError(UserError):
    """A log folder that cannot be used as asked."""


class StopRun(Exception):
    """Raised by user code (a log.hook) to end its run there, as complete: `raise
    trainer.StopRun("val/loss stopped improving")`. The run keeps that step's evaluation as its
    final one; the reason goes into its record."""
