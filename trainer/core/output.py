"""Output that survives its reader: what user code prints in a worker or in the pre-flight
check's process, into a pipe whose reader has gone (`sweep ... | head`), fails no run."""

from __future__ import annotations

import os
import sys
from typing import Any


def unbroken_output() -> None:
    """Make this process's stdout and stderr Unbroken (for processes that run user code)."""
    sys.stdout, sys.stderr = Unbroken(sys.stdout), Unbroken(sys.stderr)


class Unbroken:
    """A stdout or stderr whose output goes nowhere once its reader has gone (a closed pipe),
    instead of raising BrokenPipeError in the user code that printed."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        self._stream = open(os.devnull, "w")  # for the rest of the process's life

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
