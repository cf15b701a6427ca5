"""What the sweep records of a run that ended without a word from its worker (killed once a stop's
grace was over, or the worker died): the step of its last checkpoint, where a rerun goes on from,
and its time, its earlier attempts' included. The worker tells the sweep of each checkpoint; the
earlier attempts' steps and time are read from the run's record before it begins."""

from __future__ import annotations

import multiprocessing.connection
from pathlib import Path

from trainer.run import rundir
from trainer.spec.units import Unit

CHECKPOINT = "checkpoint"  # a worker's run took a checkpoint: (CHECKPOINT, the step it holds)


class Checkpointed:
    """Tells the sweep the step of each checkpoint a worker's run takes: what its record says should
    the worker be killed before the run records itself."""

    def __init__(self, conn: multiprocessing.connection.Connection):
        self.conn, self.steps = conn, 0

    def progress(self, steps: int) -> None:  # a checkpoint follows the progress of its chunk
        self.steps = steps

    def checkpoint(self, folder: Path) -> None:
        self.conn.send((CHECKPOINT, self.steps))


def earlier(unit: Unit, logdir: Path) -> tuple[int, float]:
    """The steps and seconds of a run's earlier attempts, as its record says, where its folder holds
    the checkpoint it will go on from (a run of the loop engine, the only one that resumes)."""
    if unit.engine == "batched":
        return 0, 0.0
    (run,) = unit.runs
    folder = logdir / run.folder
    if not (folder / rundir.RESUME).is_file():
        return 0, 0.0
    record = rundir.read_record(folder)
    if record is None or record.get("config_digest") != rundir.data_digest(run.config_data):
        return 0, 0.0
    steps, seconds = record.get("steps_done"), record.get("duration_s")
    if not isinstance(steps, int) or not 0 < steps < run.steps or not isinstance(seconds, (int, float)):
        return 0, 0.0
    return steps, float(seconds)
