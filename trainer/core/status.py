"""The states of a run, one definition for every module that writes or reads them."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """A run's state. Members are strings ('complete', ...), so records and messages hold the plain word."""

    COMPLETE = "complete"  # trained to the end
    DIVERGED = "diverged"  # the loss became NaN or infinite
    PRUNED = "pruned"  # stopped by its search's pruner: its trial was behind the others at that step
    FAILED = "failed"  # raised, or its worker died
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C or a fault of the machine; runs again
    UNFINISHED = "unfinished"  # a folder without a record (killed mid-run)
    RUNNING = "running"  # claimed by a live sweep
    MISSING = "missing"  # never run
    DAMAGED = "damaged"  # finished, but its files no longer match its record (see trainer.verify)
    LOST = "lost"  # another sweep took its claim over; its result was discarded

    __str__ = str.__str__
    __format__ = str.__format__


FINISHED = (Status.COMPLETE, Status.DIVERGED, Status.PRUNED)  # results worth keeping
