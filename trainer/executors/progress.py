"""Progress output: tqdm bars on a terminal (and in a notebook), one plain line per finished run
everywhere else."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import IO, Any

from tqdm import tqdm

from trainer.core.status import Status
from trainer.core.visible import visible


class Progress:
    """Runs done, failures and time left for a sweep; steps for a run trained in this process."""

    def __init__(
        self,
        enabled: bool = True,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        bars: Any = tqdm,
    ):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.bars = bars  # the bar class: tqdm's, or tqdm.auto's in a notebook
        self.bar: tqdm | None = None
        self.step_bar: tqdm | None = None
        self.total = self.done = self.failures = 0

    @contextlib.contextmanager
    def _output(self) -> Iterator[None]:
        """Writing progress: if its reader has gone (`sweep ... 2>&1 | head`), the sweep goes on without it."""
        try:
            yield
        except BrokenPipeError:
            self.enabled = False
            self.bar = self.step_bar = None

    def _print(self, text: str) -> None:
        text = visible(text)  # names and errors come from specs, folders and user code
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def start(self, total: int, already: int) -> None:
        self.total, self.done = total, already
        if not self.enabled:
            return
        with self._output():
            if already:
                self._print(f"{already} of {total} runs already done; running the other {total - already}")
            if self.terminal:
                self.bar = self.bars(
                    total=total,
                    initial=already,
                    unit="run",
                    desc="sweep",
                    file=self.stream,
                    dynamic_ncols=True,
                )

    def finished(self, summary: Any) -> None:
        self.done += 1
        self.failures += summary.status == Status.FAILED
        self._close_steps()
        if not self.enabled:
            return
        line = f"[{self.done}/{self.total}] {summary.status:<11} {summary.folder}  {_detail(summary)} ({summary.duration:.1f} s)"
        with self._output():
            if self.bar is not None:
                if summary.status != Status.COMPLETE:
                    self.bar.write(visible(line), file=self.stream)
                self.bar.set_postfix(failed=self.failures, refresh=False)
                self.bar.update(1)
            else:
                self._print(line)

    def left_alone(self, folder: str, why: str) -> None:
        self.done += 1
        if self.enabled:
            with self._output():
                if self.bar is not None:
                    self.bar.update(1)
                else:
                    self._print(f"[{self.done}/{self.total}] skipped     {folder}  ({why})")

    def note(self, text: str) -> None:
        if self.enabled:
            with self._output():
                self._print(text)

    def begin_steps(self, run: Any) -> None:
        self._steps_shown = 0
        if self.enabled and self.terminal:
            with self._output():
                self.step_bar = self.bars(
                    total=run.steps,
                    unit="step",
                    desc=run.name[:40],
                    leave=False,
                    file=self.stream,
                    dynamic_ncols=True,
                )

    def steps(self, done: int) -> None:
        if self.step_bar is not None:
            with self._output():
                self.step_bar.update(done - self._steps_shown)
                self._steps_shown = done

    def _close_steps(self) -> None:
        if self.step_bar is not None:
            with self._output():
                self.step_bar.close()
            self.step_bar = None

    def close(self) -> None:
        self._close_steps()
        if self.bar is not None:
            with self._output():
                self.bar.close()
            self.bar = None


def _detail(summary: Any) -> str:
    """What a run's progress line says besides its state and time: its final loss, where it
    stopped, or its error."""
    loss = summary.metrics.get("eval_loss") if summary.metrics else None
    if loss is not None:
        return f"final loss {loss:.4g}"
    if summary.status == Status.INTERRUPTED and summary.error in (None, "interrupted"):
        steps = getattr(summary, "steps_done", None)
        return f"at step {steps:,}" if steps is not None else ""
    return summary.error or ""
