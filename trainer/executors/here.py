"""The local executor with no workers: the runs train in this process, one after another, and the
process is left as they found it (the caller may be a notebook's kernel, which goes on with it)."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

from trainer.executors.base import Sweep
from trainer.run.job import execute_unit
from trainer.spec.units import Unit


def run_here(todo: list[Unit], sweep: Sweep) -> None:
    """Train the units here, claiming each as it starts, until none is left or the sweep stops."""
    with _as_found():
        _run_each(todo, sweep)


@contextlib.contextmanager
def _as_found() -> Iterator[None]:
    """What the runs change of this process, set back as it was when they end or raise: torch's
    threads (one, as in a sweep's workers, while they train) and the random states each run seeds
    (Python's, NumPy's, torch's, and CUDA's where CUDA had started)."""
    import random

    import numpy as np
    import torch

    threads = torch.get_num_threads()
    python, numpy = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.set_num_threads(1)
            yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(python)
        np.random.set_state(numpy)


def _run_each(todo: list[Unit], sweep: Sweep) -> None:
    pending = collections.deque(todo)
    judge = sweep.judge if sweep.judging else None
    while True:
        if not pending:
            pending.extend(sweep.more())  # a TPE search's next trial, drawn from the results so far
        if not pending or sweep.stop.is_set() or sweep.report.logdir_fault:
            break
        claimed, held = sweep.claim(pending.popleft())
        if claimed is None:
            continue
        sweep.progress.begin_steps(claimed.runs[0])
        summaries = execute_unit(
            claimed, sweep.logdir, sweep.stop.is_set, sweep.progress.steps, held, judge=judge
        )
        sweep.finish(held, summaries)
