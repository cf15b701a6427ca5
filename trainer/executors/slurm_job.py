"""What runs inside a Slurm job: one unit of a sweep, straight into the shared log folder.

The unit trains in a thread, so that the job's main thread stays free for Slurm's signals. On
SIGUSR1 (a preemption, the time limit coming, or the driver's stop), submitit calls `checkpoint`:
the run stops at its next chunk of steps and records itself as interrupted with its checkpoint,
and, unless the driver asked the sweep to stop, the job is requeued and goes on from there. The
job's word to the driver is a JSON file of its runs' summaries (nothing the driver unpickles).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from trainer.run import rundir
from trainer.run.claims import Claim
from trainer.run.job import Summary, execute_unit
from trainer.spec.units import Unit

# The driver's folder in the log folder: the jobs' ledger, their summaries, questions of pruning.
SLURM = ".slurm"
STOPPING = "stopping"  # a file the driver writes before it signals its jobs to stop: no requeue
# Its folders: the ledger, the jobs' summaries, questions of pruning and their answers, submitit's logs.
FOLDERS = ("jobs", "endings", "asks", "answers", "logs")


def folder_of(logdir: Path, *parts: str) -> Path:
    return logdir / SLURM / Path(*parts)


class UnitJob:
    """A unit of the sweep as the callable that submitit runs in a job, and checkpoints on SIGUSR1."""

    def __init__(self, unit: Unit, logdir: str, claims: dict[str, Claim], judging: bool):
        self.unit, self.logdir, self.claims, self.judging = unit, logdir, claims, judging
        self.stop = threading.Event()
        self.summaries: list[Summary] | None = None
        self.thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("unit", "logdir", "claims", "judging")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __call__(self) -> None:
        import torch

        torch.set_num_threads(1)  # the same arithmetic as the local pool's workers
        self.thread = threading.Thread(target=self._train, daemon=True)
        self.thread.start()
        while self.thread.is_alive():
            self.thread.join(0.2)  # the main thread waits where Slurm's signals reach it
        self._tell()

    def _train(self) -> None:
        logdir = Path(self.logdir)
        judge = Asking(logdir, self.stop).verdict if self.judging else None
        self.summaries = execute_unit(self.unit, logdir, self.stop.is_set, claims=self.claims, judge=judge)

    def _tell(self) -> None:
        summaries = [dataclasses.asdict(s) for s in self.summaries or []]
        path = folder_of(Path(self.logdir), "endings", f"{job_id()}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_atomic(path, json.dumps(summaries).encode())

    def checkpoint(self) -> Any:
        """submitit's hook on SIGUSR1: stop the runs (they record themselves, with a checkpoint to go
        on from), then either end the job (the driver stops the sweep) or requeue it."""
        from submitit.helpers import DelayedSubmission

        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if folder_of(Path(self.logdir), STOPPING).exists():
            self._tell()
            return None
        rundir.write_atomic(folder_of(Path(self.logdir), "endings", f"{job_id()}.requeued"), b"")
        return DelayedSubmission(UnitJob(self.unit, self.logdir, self.claims, self.judging))


def job_id() -> str:
    import submitit

    env = submitit.JobEnvironment()
    return str(env.job_id)


class Asking:
    """A run's questions of pruning, asked of the driver through files in the log folder."""

    def __init__(self, logdir: Path, stop: threading.Event):
        self.asks, self.answers, self.stop = folder_of(logdir, "asks"), folder_of(logdir, "answers"), stop

    def verdict(self, folder: str, step: int, value: float) -> bool:
        number = uuid.uuid4().hex
        self.asks.mkdir(parents=True, exist_ok=True)
        question = {"folder": folder, "step": step, "value": value}
        rundir.write_atomic(self.asks / f"{number}.json", json.dumps(question).encode())
        answer = self.answers / f"{number}.json"
        while not answer.exists():
            if self.stop.is_set():
                return False
            time.sleep(0.05)
        verdict = json.loads(answer.read_text()) is True
        answer.unlink(missing_ok=True)
        return verdict
