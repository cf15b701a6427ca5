"""Stopping a sweep: Ctrl-C, SIGTERM and SIGHUP as a flag, and the one stop -> grace -> kill sequence that
every executor follows."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainer.executors.workers import STOP_SIGNALS

if TYPE_CHECKING:
    from trainer.executors.progress import Progress

# After Ctrl-C, the runs in progress get this long to record themselves as interrupted before
# they are killed.
STOP_GRACE = 10.0


class StopRequest:
    """Ctrl-C, SIGTERM and SIGHUP as a flag that the driver and the executors read between their own steps.

    The handlers raise nothing: an exception raised at an arbitrary line could lose a summary a
    worker had already sent, or leave a claim unreleased. They count the signal and wake the
    executor's wait through a pipe; a second signal cuts the grace period short.
    """

    def __init__(self) -> None:
        self.count = 0
        self.wake_fd, self._write_fd = os.pipe()
        for fd in (self.wake_fd, self._write_fd):
            os.set_blocking(fd, False)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def listen(self) -> None:
        """Take the stop signals back from a library that set its own handlers meanwhile (Ray)."""
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self.wake_fd)
        os.close(self._write_fd)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        try:
            os.write(self._write_fd, b"!")
        except OSError:
            pass  # the pipe is full: the driver is awake anyway

    def is_set(self) -> bool:
        return self.count > 0

    def clear_wakeups(self) -> None:
        try:
            while os.read(self.wake_fd, 512):
                pass
        except OSError:
            pass


class Grace:
    """Once a stop is requested: ask the runs in progress to stop (once), give them STOP_GRACE
    seconds to record themselves as interrupted, then say that the rest must be killed."""

    def __init__(self, stop: StopRequest, progress: Progress, ask: Callable[[], None]):
        self.stop, self.progress, self.ask = stop, progress, ask
        self.deadline: float | None = None

    def stopping(self) -> bool:
        """Whether the sweep is stopping; the first time it is, the runs in progress are asked to."""
        if self.deadline is None and self.stop.is_set():
            self.deadline = time.monotonic() + STOP_GRACE
            self.progress.note("Interrupted: stopping the runs in progress ...")
            self.ask()
        return self.deadline is not None

    @property
    def started(self) -> bool:
        """Whether the runs in progress have been asked to stop."""
        return self.deadline is not None

    def over(self) -> bool:
        """Whether the runs still in progress are to be killed: the grace period is over, or a
        second Ctrl-C cut it short."""
        return self.deadline is not None and (time.monotonic() >= self.deadline or self.stop.count > 1)

    def wait(self, idle: float) -> float:
        """How long to wait for the runs before looking again."""
        return idle if self.deadline is None else max(0.0, self.deadline - time.monotonic())


class StopFlag:
    """The workers' should_stop: the read end of a pipe, readable once the flag is set. (A
    multiprocessing Event would hold five named semaphores, which a sweep killed by SIGKILL leaves
    behind: the resource tracker then warns of them as leaked.)"""

    def __init__(self, ctx: Any):
        self.reader, self._writer = ctx.Pipe(duplex=False)

    def set(self) -> None:
        with contextlib.suppress(OSError):
            self._writer.send_bytes(b"stop")

    def close(self) -> None:
        self.reader.close()
        self._writer.close()
