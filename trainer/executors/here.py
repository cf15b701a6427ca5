"""The local executor with no workers: the runs train in this process, one after another, and the
process is left as they found it (the caller may be a notebook's kernel, which goes on with it)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

from trainer.executors.base import Ended
from trainer.executors.schedule import Sweep
from trainer.run.claims import Claim
from trainer.run.job import execute_unit
from trainer.spec.units import Unit


@contextlib.contextmanager
def as_found() -> Iterator[None]:
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


class Here:
    """The backend of a sweep with no workers: a unit submitted trains here when the driver waits."""

    parallel = slots = 1

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.next: tuple[int, Unit, dict[str, Claim]] | None = None
        self.handles = itertools.count()

    def submit(self, unit: Unit, claims: dict[str, Claim]) -> int:
        self.next = (next(self.handles), unit, claims)
        return self.next[0]

    def wait(self, timeout: float) -> list[Ended]:
        if self.next is None:
            return []
        (handle, unit, claims), self.next = self.next, None
        sweep = self.sweep
        sweep.progress.begin_steps(unit.runs[0])
        judge = sweep.judge if sweep.judging else None
        summaries = execute_unit(
            unit, sweep.logdir, sweep.stop.is_set, sweep.progress.steps, claims, judge=judge
        )
        return [Ended(handle, summaries)]

    def stop(self) -> None:
        """The run in progress reads the stop flag itself."""

    def kill(self) -> list[Ended]:
        return []  # nothing runs between waits
