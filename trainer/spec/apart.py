"""User code that planning must call (a data function, a model's first forward), run in a child
process of its own, forked from the workers' fork server where there is one. It runs the user code by
the import path its spec names, never the caller's main script (trainer.core.children).

User code that crashes or exits (a segfault, os._exit, the out-of-memory killer) ends that child, not
the sweep: the sweep says so in one sentence naming the spec and the code, and writes nothing. One
child serves a whole plan, so a sweep of many runs pays for one process."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from typing import Any

from trainer.core.children import start_without_main
from trainer.core.errors import SpecError
from trainer.core.output import unbroken_output
from trainer.core.strict import Invalid

# (spec file, the user code it names) of what the child is trying, for the sentence if it dies.
Trying = tuple[str, str]


class Apart:
    """A child process that runs planning's calls of user code, one at a time."""

    def __init__(self) -> None:
        self._conn: Any = None
        self._child: Any = None
        self.cache: dict[Any, Any] = {}  # what its calls found, for callers that ask again

    def __enter__(self) -> Apart:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, work: Callable[..., Any], *args: Any, trying: Trying) -> Any:
        """work(*args, said=...) in the child, its value returned here: Invalid and other errors
        are raised here as they were there. `said(trying)` from the work names what it tries next."""
        if self._child is None:
            self._start()
        try:
            self._conn.send((work, args))
        except OSError:
            pass  # the child is gone; recv says how
        while True:
            try:
                message, value = self._conn.recv()
            except (EOFError, OSError):
                raise self._died(trying) from None
            if message == "trying":
                trying = value
            elif message == "done":
                return value
            elif message == "invalid":
                raise Invalid(value)
            else:  # "raised": what the checks did not turn into a problem of a key
                spec, what = trying
                raise SpecError(f"{spec}: trying {what} raised {value}; nothing was run or written")

    def close(self) -> None:
        if self._child is None:
            return
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._child.join()
        self._conn.close()
        self._child = self._conn = None

    def _start(self) -> None:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload(["torch", __name__])  # kept as it is where the server runs already
        self._conn, there = ctx.Pipe()
        self._child = ctx.Process(target=_serve, args=(there,), daemon=True)
        start_without_main(self._child)  # the caller's script is not run again there
        there.close()

    def _died(self, trying: Trying) -> SpecError:
        self._child.join()
        code = self._child.exitcode
        self._conn.close()
        self._child = self._conn = None
        how = (
            f"was killed by signal {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exited with status {code}"
        )
        spec, what = trying
        return SpecError(
            f"{spec}: trying {what}, its process {how}: the user code crashed or ended it; "
            f"nothing was run or written"
        )


def _serve(conn: Any) -> None:
    unbroken_output()

    def said(trying: Trying) -> None:
        conn.send(("trying", trying))

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        work, args = task
        try:
            conn.send(("done", work(*args, said=said)))
        except Invalid as invalid:
            conn.send(("invalid", invalid.problems))
        except BaseException as exc:
            conn.send(("raised", f"{type(exc).__name__}: {exc}"))
