"""A run's wall-time limit (train.timeout) where the run is: an alarm that ends what the run is doing,
in user code too, with `TimedOut`.

The alarm is the process's own SIGALRM, so it works in the main thread only (a worker process, the
command line's own process with --workers 0, a Ray task); elsewhere the limit is the executor's,
which kills what does not end by itself (trainer.executors.local)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class TimedOut(BaseException):
    """The run took longer than train.timeout. A BaseException, like KeyboardInterrupt, so that user
    code catching Exception does not swallow it."""

    def __init__(self, seconds: float):
        super().__init__(f"timed out: ran longer than train.timeout ({seconds:g} s)")
        self.seconds = seconds


def limit_of(runs: list) -> float | None:
    """The wall-time limit of runs trained together: the largest of theirs; None if one has none."""
    limits = [run.config.train.timeout for run in runs]
    return None if not limits or None in limits else max(limits)


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise TimedOut in this thread once `seconds` have passed (no limit for None, or off the main
    thread)."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum: int, frame: object) -> None:
        raise TimedOut(seconds)

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
