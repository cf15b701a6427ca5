"""What runs on a Ray node: a unit of the sweep, trained into a scratch folder, its files returned
through Ray's object store; and the two actors on the sweep's machine that tasks talk to, the store
of the runs' checkpoints (Snapshots) and the mailbox of their questions of pruning (Verdicts)."""

from __future__ import annotations

import dataclasses
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

from trainer.kinds import registry as kinds
from trainer.run import job, rundir
from trainer.run.job import Summary
from trainer.spec.units import Unit


def execute_unit(
    payload: bytes, spec_folder: str, copy: str, snapshots: Any = None, judge: Any = None
) -> list[tuple[Summary, dict[str, bytes]]]:
    """Ray's task: run a unit into a scratch folder on this node and return, for each of its runs,
    its summary and what it wrote, by path. A run with a checkpoint in `snapshots` (the sweep's
    store) goes on from it; each checkpoint the run takes is sent there.

    The spec folders travel as the sweep's working directory (Ray's runtime_env), `copy` naming this
    unit's; its user code and data are read from there, never from the sweep machine's paths."""
    import ray
    import torch

    torch.set_num_threads(1)  # the same arithmetic as the local pool's workers
    here = str(Path(copy).resolve())
    kinds.relocate(spec_folder, here)
    unit: Unit = pickle.loads(payload)
    unit = dataclasses.replace(unit, runs=tuple(dataclasses.replace(r, data_folder=here) for r in unit.runs))
    with tempfile.TemporaryDirectory(prefix="trainer-run-") as scratch:
        on_checkpoint = None
        if snapshots is not None and unit.engine != "batched":
            (run,) = unit.runs
            unpack(Path(scratch) / run.folder, ray.get(snapshots.latest.remote(run.folder)) or {})

            def on_checkpoint(folder: Path) -> None:
                ray.get(snapshots.put.remote(run.folder, files_of(folder, hidden=False)))

        verdict = _verdict(ray, judge) if judge is not None else None  # the sweep's studies say
        stop = Stopping(ray, snapshots) if snapshots is not None else (lambda: False)
        summaries = job.execute_unit(unit, Path(scratch), stop, on_checkpoint=on_checkpoint, judge=verdict)
        return [(summary, files_of(Path(scratch) / run.folder)) for run, summary in zip(unit.runs, summaries)]


class Stopping:
    """A task's should_stop: whether the sweep asked its tasks to stop, asked of the store between
    chunks of steps (a chunk is 100 to 1,000 steps: one call to an actor on the sweep's machine
    each is little)."""

    def __init__(self, ray: Any, store: Any):
        self.ray, self.store, self.stopped = ray, store, False

    def __call__(self) -> bool:
        self.stopped = self.stopped or bool(self.ray.get(self.store.stopping.remote()))
        return self.stopped


class Snapshots:
    """The latest checkpoint of each run, as its folder's files by name: a Ray actor on the sweep's
    machine. Tasks put and get; the sweep takes what is new, to write into the log folder."""

    def __init__(self) -> None:
        self.by_run: dict[str, dict[str, bytes]] = {}
        self.new: dict[str, dict[str, bytes]] = {}
        self.stopped = False

    def stop(self) -> None:
        """The sweep is stopping: every task stops its runs at their next chunk of steps."""
        self.stopped = True

    def stopping(self) -> bool:
        return self.stopped

    def put(self, run: str, files: dict[str, bytes]) -> None:
        self.by_run[run] = self.new[run] = files

    def latest(self, run: str) -> dict[str, bytes] | None:
        return self.by_run.get(run)

    def take_new(self) -> dict[str, dict[str, bytes]]:
        new, self.new = self.new, {}
        return new

    def forget(self, run: str) -> None:
        self.by_run.pop(run, None)
        self.new.pop(run, None)


class Verdicts:
    """Questions of pruning, from tasks to the sweep's studies: a Ray actor on the sweep's machine
    that tasks post their evaluations to and read the verdicts from, and that the driver answers
    each time it waits. The studies stay in the driver, as with every executor."""

    def __init__(self) -> None:
        self.asked: dict[int, tuple[str, int, float]] = {}
        self.answered: dict[int, bool] = {}
        self.count = 0

    def ask(self, folder: str, step: int, value: float) -> int:
        self.count += 1
        self.asked[self.count] = (folder, step, value)
        return self.count

    def answer(self, number: int) -> bool | None:
        return self.answered.pop(number, None)

    def questions(self) -> dict[int, tuple[str, int, float]]:
        asked, self.asked = self.asked, {}
        return asked

    def tell(self, verdicts: dict[int, bool]) -> None:
        self.answered.update(verdicts)


def _verdict(ray: Any, verdicts: Any) -> Any:
    """A task's judge: ask the sweep through the Verdicts actor, and wait for its answer."""

    def verdict(folder: str, step: int, value: float) -> bool:
        number = ray.get(verdicts.ask.remote(folder, step, value))
        while (answer := ray.get(verdicts.answer.remote(number))) is None:
            time.sleep(0.02)
        return answer

    return verdict


def unpack(folder: Path, files: dict[str, bytes]) -> None:
    """A run folder holding these files (and no others but hidden ones), each written atomically."""
    if not files:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        rundir.write_atomic(folder / name, data, durable=False)
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.name not in files:
            path.unlink()


def files_of(folder: Path, hidden: bool = True) -> dict[str, bytes]:
    """Every file under a folder, by its path in it (without hidden ones, temporary files among
    them, unless `hidden`)."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and (hidden or not path.name.startswith("."))
    }
