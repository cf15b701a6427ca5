"""The local executor: a pool of reused worker processes on this machine (or, with no workers, this
process itself: trainer.executors.here).

The parent process never imports torch: it hands units to workers one at a time (longest first, so
both cores stay busy to the end) and keeps the claims fresh. A worker runs trainer code and user
code by its import path, never the caller's main script (trainer.core.children). A worker that dies
is replaced and its runs recorded as failed; a worker whose parent dies is killed by the kernel
(Linux) or exits within half a second. Ctrl-C, SIGTERM and SIGHUP only set a flag: the workers stop
at their next chunk of steps and record their runs as interrupted; a run killed once the grace
period is over is recorded at the step of its last checkpoint (trainer.executors.reached).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.core.children import start_without_main
from trainer.core.deadline import limit_of
from trainer.core.output import unbroken_output
from trainer.core.status import Status
from trainer.executors.base import BackendFailed, Ended
from trainer.executors.here import Here, as_found
from trainer.executors.reached import CHECKPOINT, Checkpointed, earlier
from trainer.executors.schedule import Sweep
from trainer.executors.stopping import StopFlag
from trainer.executors.workers import (
    STOP_SIGNALS,
    die_with_parent,
    how_it_ended,
    make_an_optimizer,
    worker_context,
)
from trainer.run.claims import Claim
from trainer.run.job import Summary, execute_unit
from trainer.spec.units import Unit

# Workers that die while starting (killed, out of memory) are replaced this many times per worker
# before the sweep stops; one that exits by itself before any worker was ready stops it at once.
START_RETRIES = 2
READY = "ready"
JUDGE = "judge"  # a worker asks whether to prune a run: (JUDGE, run folder, step, value)
# What a worker killed by SIGKILL most often means.
OUT_OF_MEMORY = (
    "the signal the kernel's out-of-memory killer sends: if memory ran out, "
    "use fewer --workers or a smaller train.batch_size"
)
# A run past its train.timeout ends itself (trainer.core.deadline); a worker that has not sent its
# results this many seconds later (stuck where no signal reaches, or writing nothing) is killed.
KILL_AFTER = 30.0


@dataclass(frozen=True)
class Options:
    """The local pool has no options of its own: --workers says how many processes it starts."""


class Local:
    """Runs units in worker processes of this machine, or in this process with no workers."""

    Options = Options

    @contextlib.contextmanager
    def start(self, sweep: Sweep, options: Options) -> Iterator[Any]:
        if sweep.workers == 0:
            with as_found():
                yield Here(sweep)
            return
        pool = Pool(sweep)
        try:
            yield pool
        finally:
            pool.close()


EXECUTOR = Local()


# --- worker processes -------------------------------------------------------------------------


def _worker_main(
    conn: multiprocessing.connection.Connection, stop: multiprocessing.connection.Connection, parent: int
) -> None:
    """A worker: one torch thread, deaf to the stop signals (the parent decides), gone when the parent is."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent until now
    die_with_parent(parent)
    # What user code prints into a pipe its reader closed (`sweep ... | head`) fails no run.
    unbroken_output()
    import torch

    torch.set_num_threads(1)
    from trainer.tensorboard import sink  # noqa: F401  (what execute() imports on first use)
    from trainer.training import loop  # noqa: F401

    # What is imported lives as long as the worker: the garbage collector need not look at it again
    # (hundreds of thousands of objects, whose every full collection cost tenths of a second).
    gc.freeze()
    conn.send(READY)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            # Every file is closed: skip tearing down torch, which takes longer than the exit itself.
            os._exit(0)
        unit, logdir, held, judging = task
        if unit.engine == "loop":
            make_an_optimizer()
        judge = functools.partial(_ask, conn) if judging else None
        told = Checkpointed(conn)
        try:
            summaries = execute_unit(
                unit, Path(logdir), stop.poll, told.progress, held, told.checkpoint, judge=judge
            )
        except Exception as exc:  # execute_unit records a run's own faults; this is a last resort
            summaries = [
                Summary(run.folder, Status.FAILED, {}, 0.0, f"{type(exc).__name__}: {exc}")
                for run in unit.runs
            ]
        conn.send(summaries)


def _ask(conn: multiprocessing.connection.Connection, folder: str, step: int, value: float) -> bool:
    """A search's verdict on a run's evaluation, from the sweep's process: prune the run or not."""
    conn.send((JUDGE, folder, step, value))
    return bool(conn.recv())


class WorkerStartError(Exception):
    """A worker process died before it could take a run: nothing will run until that is fixed."""


class WorkerDiedStarting(Exception):
    """A worker died before it was ready, in a way that says nothing against the others (killed by a
    signal, or exited while another worker of the sweep started fine); it can be replaced."""


class Worker:
    def __init__(self, ctx: Any, stop: StopFlag):
        self.conn, child = ctx.Pipe()
        # Not a daemon, so that user code may start processes of its own (a DataLoader's workers).
        # It still never outlives the sweep: the pool stops every worker at its end, and a worker
        # dies with its parent (die_with_parent).
        self.process = ctx.Process(target=_worker_main, args=(child, stop.reader, os.getpid()), daemon=False)
        # Started with the stop signals blocked (the mask is inherited), so a Ctrl-C that comes while
        # the worker is still importing cannot kill it with a KeyboardInterrupt traceback.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            start_without_main(self.process)  # it runs trainer code, never the caller's script again
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()
        self.ready = False
        self.handle = -1
        self.ready_at = 0.0
        self.unit: Unit | None = None
        self.claims: dict[str, Claim] = {}
        self.given_at = 0.0
        self.earlier = (0, 0.0)  # the steps and seconds its unit's run had before this attempt
        self.checkpoint_step: int | None = None  # the step of the last checkpoint its run took

    def give(self, unit: Unit, claims: dict[str, Claim], logdir: Path, judging: bool = False) -> None:
        self.unit, self.claims, self.given_at = unit, claims, time.monotonic()
        self.earlier, self.checkpoint_step = earlier(unit, logdir), None  # read before the run begins
        try:
            self.conn.send((unit, str(logdir), claims, judging))
        except OSError:
            pass  # the process is gone; its sentinel is ready and the run is recorded as failed

    def overdue_in(self) -> float | None:
        """Seconds until the unit it runs is past its time limit and the grace after it (negative
        once it is); None without a limit, or while the worker is still starting."""
        limit = limit_of(list(self.unit.runs)) if self.unit is not None else None
        if limit is None or not self.ready:
            return None
        return max(self.given_at, self.ready_at) + limit + KILL_AFTER - time.monotonic()

    def reached(self) -> tuple[int, float]:
        """The steps and seconds to record for its unit's runs should they end without a word from
        it (killed, or the worker died): the step of the last checkpoint, the one a rerun goes on
        from, and the run's time, its earlier attempts' included."""
        steps = self.checkpoint_step if self.checkpoint_step is not None else self.earlier[0]
        began = max(self.given_at, self.ready_at)
        return steps, self.earlier[1] + (time.monotonic() - began if self.ready else 0.0)

    def take_back(self) -> dict[str, Claim]:
        """The claims of the unit it ran, which it no longer holds."""
        held, self.unit, self.claims = self.claims, None, {}
        return held

    def ask_to_stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass

    def stop(self) -> None:
        self.ask_to_stop()
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class Pool:
    """The sweep's worker processes, as a backend: one unit per worker, a dead worker replaced."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.ctx = worker_context()
        self.stopping = StopFlag(self.ctx)
        self.parallel = self.slots = sweep.workers
        self.workers: list[Worker] = []
        self.start_deaths = 0
        self.stopped = False
        self.handles = itertools.count()

    def submit(self, unit: Unit, claims: dict[str, Claim]) -> int:
        worker = next((w for w in self.workers if w.unit is None), None)
        if worker is not None and not worker.process.is_alive():  # died while idle
            worker.stop()
            self.workers.remove(worker)
            worker = None
        if worker is None:
            worker = Worker(self.ctx, self.stopping)
            self.workers.append(worker)
        worker.handle = next(self.handles)
        worker.give(unit, claims, self.sweep.logdir, self.sweep.judging)
        return worker.handle

    def wait(self, timeout: float) -> list[Ended]:
        busy = [w for w in self.workers if w.unit is not None]
        overdue = [t for t in (w.overdue_in() for w in busy) if t is not None]
        ready = multiprocessing.connection.wait(
            [w.conn for w in busy] + [w.process.sentinel for w in busy] + [self.sweep.stop.wake_fd],
            timeout=max(0.0, min([timeout, *overdue])),
        )
        ended: list[Ended] = []
        try:
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    ended += self._heard_from(worker)
                elif (worker.overdue_in() or 0.0) < 0:
                    ended.append(self._timed_out(worker))
        except WorkerStartError as exc:
            raise BackendFailed(str(exc)) from None
        return ended

    def stop(self) -> None:
        self.stopped = True
        self.stopping.set()

    def kill(self) -> list[Ended]:
        ended = []
        for worker in [w for w in self.workers if w.unit is not None]:
            worker.process.kill()
            ended.append(self._gone(worker, Status.INTERRUPTED))
        return ended

    def _heard_from(self, worker: Worker) -> list[Ended]:
        # Looked at before collecting: a worker seen dead here has sent all it ever will.
        alive = worker.process.is_alive()
        try:
            summaries = _collect(worker, any(w.ready for w in self.workers), alive, self.sweep.judge)
        except WorkerDiedStarting as died:
            return self._replace_starting(worker, died)
        if summaries is None and alive:
            return []  # it only said it is ready
        if summaries is None:  # the process died: its runs are recorded; another takes its place
            return [self._gone(worker, Status.INTERRUPTED if self.stopped else Status.FAILED)]
        handle = worker.handle
        worker.take_back()
        return [Ended(handle, summaries)]

    def _timed_out(self, worker: Worker) -> Ended:
        """A worker that did not end its runs by their time limit: killed, its runs recorded as timed
        out, another worker started in its place."""
        limit = limit_of(list(worker.unit.runs))
        worker.process.kill()
        error = (
            f"timed out: ran longer than train.timeout ({limit:g} s), and its worker process, which "
            f"did not stop it within {KILL_AFTER:g} s more, was killed"
        )
        return self._gone(worker, Status.FAILED, error)

    def _gone(self, worker: Worker, status: Status, error: str | None = None) -> Ended:
        """A worker gone with its unit: its runs recorded, the worker left out of the pool."""
        summaries = self._died(worker, status, error)
        self.workers.remove(worker)
        handle = worker.handle
        worker.take_back()
        return Ended(handle, summaries)

    def _replace_starting(self, worker: Worker, died: WorkerDiedStarting) -> list[Ended]:
        """A worker died before its run began: the run and its claim go to a new worker."""
        sweep = self.sweep
        self.start_deaths += 1
        if self.start_deaths > START_RETRIES * max(1, sweep.workers):
            raise BackendFailed(
                f"worker processes died {self.start_deaths} times while starting, the "
                f"last one {died}; no run was lost (free memory, or use fewer --workers)"
            )
        sweep.report.start_notes.append(f"a worker process {died} while starting; another took its run")
        sweep.progress.note(f"A worker process {died} while starting; starting another.")
        replacement = Worker(self.ctx, self.stopping)
        self.workers[self.workers.index(worker)] = replacement
        worker.stop()
        if self.stopped:  # not begun, so nothing to record: its claims are released
            return [Ended(worker.handle, [])]
        replacement.handle = worker.handle
        replacement.give(worker.unit, worker.claims, sweep.logdir, sweep.judging)
        return []

    def _died(self, worker: Worker, status: Status, error: str | None = None) -> list[Summary]:
        """Record the runs of a unit whose worker is gone; their event files get a session end so
        TensorBoard agrees."""
        worker.process.join(timeout=1)
        _collect_checkpoints(worker)
        if error is None:
            code = worker.process.exitcode
            how = how_it_ended(code).replace("was killed", "killed")
            if code == -signal.SIGKILL:
                how += f" ({OUT_OF_MEMORY})"
            error = f"the worker process running it {how}" if status == Status.FAILED else "interrupted"
        steps, seconds = worker.reached()
        return [
            self.sweep.ended(run, status, error, worker.claims.get(run.folder), steps, seconds)
            for run in worker.unit.runs
        ]

    def close(self) -> None:
        for worker in self.workers:  # all at once: each takes a moment to exit
            worker.ask_to_stop()
        for worker in self.workers:
            worker.stop()
        self.stopping.close()


def _collect(
    worker: Worker, others_ready: bool = False, alive: bool = True, judge: Any = None
) -> list[Summary] | None:
    """The worker's summaries of its unit's runs; None if it has none to give yet (or it died).
    A run's question to its search (whether to prune it) is answered at once."""
    try:
        while worker.conn.poll():
            message = worker.conn.recv()
            if isinstance(message, tuple) and message and message[0] == JUDGE:
                worker.conn.send(judge(*message[1:]) if judge is not None else False)
                continue
            if isinstance(message, tuple) and message and message[0] == CHECKPOINT:
                worker.checkpoint_step = message[1]
                continue
            if message != READY:
                return message
            worker.ready, worker.ready_at = True, time.monotonic()
    except (EOFError, OSError):
        pass
    if not worker.ready and not alive:
        worker.process.join(timeout=1)
        code = worker.process.exitcode
        if code is None or code < 0 or others_ready:
            raise WorkerDiedStarting(how_it_ended(code))
        raise WorkerStartError(
            f"a worker process exited with status {worker.process.exitcode} before it was ready, so no run was "
            f"started. Check that `{Path(sys.executable).name} -c 'import torch'` works"
        )
    return None


def _collect_checkpoints(worker: Worker) -> None:
    """The checkpoints a dead worker's run took that were not read yet."""
    try:
        while worker.conn.poll():
            message = worker.conn.recv()
            if isinstance(message, tuple) and message and message[0] == CHECKPOINT:
                worker.checkpoint_step = message[1]
    except (EOFError, OSError):
        pass
