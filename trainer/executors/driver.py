"""The sweep runner: which runs need running, a pool of reused worker processes, and interruptions.

The parent process never imports torch: it plans, claims runs, hands them to workers one at a time
(longest first, so both cores stay busy to the end), keeps one summary per finished run, and keeps
its claims fresh. A worker that dies is replaced and its run recorded as failed; a worker whose
parent dies is killed by the kernel (Linux) or exits within half a second. Ctrl-C and SIGTERM only
set a flag: the workers stop at their next chunk of steps and record their runs as interrupted.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gc
import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.core import guards
from trainer.core.errors import LogDirError
from trainer.core.status import FINISHED, Status
from trainer.executors.progress import Progress
from trainer.executors.workers import STOP_SIGNALS, kill_with_parent, worker_context
from trainer.runs import rundir, verify
from trainer.runs.job import LOST, Summary, execute_unit
from trainer.spec.sweep import RunPlan
from trainer.spec.units import Unit, units_of

# After Ctrl-C, workers get this long to record their runs as interrupted before they are killed.
STOP_GRACE = 10.0
# Workers that die while starting (killed, out of memory) are replaced this many times per worker
# before the sweep stops; one that exits by itself before any worker was ready stops it at once.
START_RETRIES = 2


@dataclass
class Options:
    logdir: Path
    workers: int = 1  # 0: run in this process
    force: bool = False  # rerun complete runs too
    rerun_failed: bool = False  # rerun runs that failed before
    progress: Progress | None = None
    executor: str = "local"  # where runs run: "local" or "ray" (see executor())
    address: str | None = None  # the Ray cluster's head, for the ray executor


@dataclass
class Report:
    """What a sweep did: one summary per run it ran, and the names of runs it left alone."""

    ran: list[Summary] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # complete with the same configuration
    kept_failed: list[str] = field(default_factory=list)  # failed before; --rerun-failed retries
    elsewhere: list[str] = field(default_factory=list)  # run, or being run, by another sweep
    damaged: dict[str, str] = field(default_factory=dict)  # finished, files no longer match: why
    set_aside: dict[str, str] = field(default_factory=dict)  # damaged run folder -> where it was moved
    lost: list[str] = field(default_factory=list)  # claimed by another sweep mid-run; discarded
    start_notes: list[str] = field(default_factory=list)  # workers that died while starting
    interrupted: bool = False
    logdir_fault: str | None = None
    startup_fault: str | None = None  # worker processes could not start

    @property
    def failed(self) -> list[Summary]:
        return [s for s in self.ran if s.status == Status.FAILED]


def check_writable(logdir: Path) -> None:
    """Fail early, with one sentence, when the log folder cannot be written."""
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        probe = logdir / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise LogDirError(f"cannot write to the log folder {logdir}: {reason}")


def check_inside(runs: list[RunPlan], logdir: Path) -> None:
    """Refuse, before writing anything, a run whose folder or claims folder would be written through
    a symlink (which could lead outside the log folder) or where a file stands in the way."""
    problems: list[str] = []
    looked: set[str] = set()
    for run in runs:
        if run.experiment not in looked:
            looked.add(run.experiment)
            problem = guards.escape_problem(logdir, logdir / run.experiment / rundir.CLAIMS)
            if problem is not None:
                problems.append(problem)
                continue
        problem = guards.escape_problem(logdir / run.experiment, logdir / run.folder)
        if problem is not None:
            problems.append(problem)
    if problems:
        more = [f"... and {len(problems) - 10} more"] if len(problems) > 10 else []
        raise LogDirError(problems[:10] + more + ["nothing was run"])


def select(runs: list[RunPlan], opts: Options, report: Report) -> tuple[list[RunPlan], dict[str, Any]]:
    """The runs that need running, longest first, and the record each had when looked at.

    A finished run whose configuration changed stops everything: nothing is run, nothing written.
    """
    todo, changed, seen = [], [], {}
    for run in runs:
        state = rundir.state_of(opts.logdir, run.experiment, run.name)
        verdict = _verdict(state, run, opts)
        if state.state in verify.CHECKED and verdict != "changed":
            damage = verify.quick(opts.logdir / run.folder, state.record)
            if damage is not None:
                report.damaged[run.folder] = damage
                verdict = "run"
        if verdict == "run":
            todo.append(run)
            seen[run.folder] = rundir.record_stamp(opts.logdir / run.folder)
        elif verdict == "changed":
            changed.append((run, state.record))
        else:
            getattr(report, verdict).append(run.folder)
    if changed:
        raise ChangedConfig(opts.logdir, changed)
    return sorted(todo, key=lambda r: -r.cost()), seen


class ChangedConfig(LogDirError):
    """Finished runs that the spec now configures differently; nothing was run. The CLI words it
    with the commands that continue; this message is for other callers."""

    def __init__(self, logdir: Path, changed: list[tuple[RunPlan, dict[str, Any]]]):
        self.changed = changed
        lines = [
            f"{logdir / run.folder}: logged with a different configuration "
            f"({describe_changes(record.get('config', {}), run)})"
            for run, record in changed[:10]
        ]
        if len(changed) > 10:
            lines.append(f"... and {len(changed) - 10} more")
        lines.append(
            f"{len(changed)} finished run{'s' if len(changed) > 1 else ''} would be replaced; nothing "
            f"was run. Pass --force to rerun them with the new configuration, or give another --logdir "
            f"to keep both."
        )
        super().__init__(lines)

    def by_experiment(self) -> dict[tuple[str, str], list[tuple[RunPlan, dict[str, Any]]]]:
        """The changed runs by (experiment, spec file)."""
        groups: dict[tuple[str, str], list[tuple[RunPlan, dict[str, Any]]]] = {}
        for run, record in self.changed:
            groups.setdefault((run.experiment, run.spec_path), []).append((run, record))
        return groups

    @staticmethod
    def first_difference(group: list[tuple[RunPlan, dict[str, Any]]]) -> tuple[str, int]:
        """'key: old -> new' for the first setting that differs in the group's first run, and how many more do."""
        run, record = group[0]
        diffs = changes(record.get("config", {}), run)
        return (diffs[0], len(diffs) - 1) if diffs else ("the code's version", 0)


def _verdict(state: rundir.RunState, run: RunPlan, opts: Options) -> str:
    """'run', 'kept' (a result with this configuration), 'kept_failed' or 'changed' (a result of another)."""
    same = state.record is not None and state.record.get("config_digest") == rundir.data_digest(
        run.config_data
    )
    if opts.force or state.state in (Status.MISSING, Status.UNFINISHED, Status.INTERRUPTED, Status.RUNNING):
        return "run"
    if state.state in FINISHED:
        return "kept" if same else "changed"
    return "kept_failed" if same and not opts.rerun_failed else "run"


def changes(old: dict[str, Any], run: RunPlan) -> list[str]:
    """'key: old -> new' for every setting a run's recorded configuration has otherwise."""
    new = run.config_data
    return [f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in _diff(old, new, "") if k != "description"]


def describe_changes(old: dict[str, Any], run: RunPlan) -> str:
    diffs = changes(old, run)
    return "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "") or "code version"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _diff(old: Any, new: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def run_all(runs: list[RunPlan], opts: Options) -> Report:
    """Run what needs running; returns the report (the caller prints it)."""
    report = Report()
    with StopRequest() as stop:
        todo, seen = select(runs, opts, report)
        progress = opts.progress or Progress(enabled=False)
        progress.start(len(runs), len(runs) - len(todo))
        if todo:
            check_inside(todo, opts.logdir)
            check_writable(opts.logdir)  # after select: a refused sweep leaves the folder untouched
            units = units_of(todo, opts.workers)
            if opts.workers == 0:
                _run_here(units, seen, opts, report, progress, stop)
            else:
                executor(opts.executor)(units, seen, opts, report, progress, stop)
        progress.close()
        report.interrupted = stop.is_set()
    return report


def executor(name: str) -> Any:
    """The function that runs a sweep's runs somewhere: the local pool, or Ray (trainer.cluster)."""
    if name == "ray":
        from trainer.executors.cluster import run_on_ray

        return run_on_ray
    return _run_pool


class StopRequest:
    """Ctrl-C and SIGTERM as a flag that the runner reads between its own steps.

    The handlers raise nothing: an exception raised at an arbitrary line could lose a summary a
    worker had already sent, or leave a claim unreleased. They count the signal and wake the
    runner's wait through a pipe; a second signal cuts the grace period short.
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
            pass  # the pipe is full: the runner is awake anyway

    def is_set(self) -> bool:
        return self.count > 0

    def clear_wakeups(self) -> None:
        try:
            while os.read(self.wake_fd, 512):
                pass
        except OSError:
            pass


# --- claims -----------------------------------------------------------------------------------


class Claims:
    """The claims this process holds, kept fresh by a heartbeat thread."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.held: set[rundir.Claim] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def take(self, run: RunPlan) -> rundir.Claim | None:
        """The run's claim, or None if another sweep holds it; OSError if it cannot be written."""
        claim = rundir.try_claim(rundir.claim_path(self.logdir, run.experiment, run.name))
        if claim is not None:
            with self.lock:
                self.held.add(claim)
        return claim

    def release(self, claim: rundir.Claim) -> None:
        with self.lock:
            self.held.discard(claim)
        rundir.release_claim(claim)

    def _beat(self) -> None:
        while not self.done.wait(rundir.HEARTBEAT_EVERY):
            with self.lock:
                rundir.touch_claims(list(self.held))

    def close(self) -> None:
        self.done.set()
        with self.lock:
            for claim in self.held:
                rundir.release_claim(claim)
            self.held.clear()


def claim_for_running(
    run: RunPlan, opts: Options, seen: dict[str, Any], claims: Claims, report: Report, progress: Progress
) -> rundir.Claim | None:
    """Claim a run just before it starts, and look again: another sweep may have run it meanwhile.

    A damaged run's folder is moved aside, under the claim, before the run starts again."""
    try:
        path = claims.take(run)
    except OSError as exc:
        report.logdir_fault = (
            report.logdir_fault or f"cannot claim {run.folder} in {opts.logdir}: {exc.strerror or exc}"
        )
        return None
    if path is None:
        report.elsewhere.append(run.folder)
        progress.left_alone(run.folder, "running elsewhere")
        return None
    if rundir.record_stamp(opts.logdir / run.folder) != seen.get(run.folder):
        # Recorded by another sweep since this one looked: its result stands (two sweeps started
        # with --force or --rerun-failed would otherwise each run it), unless it was interrupted.
        state = rundir.state_of(opts.logdir, run.experiment, run.name)
        if state.record is not None and state.state != Status.INTERRUPTED:
            claims.release(path)
            report.elsewhere.append(run.folder)
            progress.left_alone(run.folder, f"{state.state} in another sweep")
            return None
    if run.folder in report.damaged:
        try:
            report.set_aside[run.folder] = set_aside(opts.logdir, run, report.damaged[run.folder])
        except OSError as exc:
            claims.release(path)
            report.logdir_fault = (
                report.logdir_fault
                or f"cannot move the damaged run {run.folder} aside: {exc.strerror or exc}"
            )
            return None
    return path


DAMAGED_FOLDER = ".damaged"


def set_aside(logdir: Path, run: RunPlan, reason: str) -> str:
    """Move a damaged run's folder to <experiment>/.damaged/<run>.<n>/ with a note saying why;
    its event files are renamed (tfevents -> tf-events) so that TensorBoard does not list them."""
    folder = logdir / run.folder
    aside = logdir / run.experiment / DAMAGED_FOLDER
    aside.mkdir(exist_ok=True)
    for n in itertools.count(1):
        target = aside / f"{run.name}.{n}"
        if not os.path.lexists(target):
            break
    folder.rename(target)
    for item in target.iterdir():
        if item.name.startswith(verify.EVENTS_PREFIX):
            item.rename(target / item.name.replace("tfevents", "tf-events", 1))
    (target / "DAMAGED.txt").write_text(
        f"{run.folder}: moved aside by a sweep on {time.ctime()} before running it again: {reason}\n",
        encoding="utf-8",
    )
    return str(target.relative_to(logdir))


def record_summary(report: Report, progress: Progress, summary: Summary) -> None:
    if summary.status == LOST:
        report.lost.append(summary.folder)
        report.elsewhere.append(summary.folder)
        progress.left_alone(
            summary.folder,
            "taken over by another sweep while this one was paused; its result here was discarded",
        )
        return
    report.ran.append(summary)
    progress.finished(summary)
    if summary.logdir_fault and report.logdir_fault is None:
        report.logdir_fault = summary.error


# --- in this process --------------------------------------------------------------------------


def claim_unit(
    unit: Unit, opts: Options, seen: dict[str, Any], claims: Claims, report: Report, progress: Progress
) -> tuple[Unit | None, dict[str, rundir.Claim]]:
    """Claim every run of a unit; the unit of the runs claimed (None if none was), and their claims."""
    held: dict[str, rundir.Claim] = {}
    for run in unit.runs:
        if report.logdir_fault is not None:
            break
        claim = claim_for_running(run, opts, seen, claims, report, progress)
        if claim is not None:
            held[run.folder] = claim
    runs = tuple(run for run in unit.runs if run.folder in held)
    return (dataclasses.replace(unit, runs=runs) if runs else None), held


def _run_here(
    todo: list[Unit],
    seen: dict[str, Any],
    opts: Options,
    report: Report,
    progress: Progress,
    stop: StopRequest,
) -> None:
    import torch

    torch.set_num_threads(1)  # the same arithmetic as in a sweep's workers
    claims = Claims(opts.logdir)
    try:
        for unit in todo:
            if stop.is_set() or report.logdir_fault:
                break
            claimed, held = claim_unit(unit, opts, seen, claims, report, progress)
            if claimed is None:
                continue
            progress.begin_steps(claimed.runs[0])
            summaries = execute_unit(claimed, opts.logdir, stop.is_set, progress.steps, held)
            finish_unit(held, summaries, claims, report, progress)
    finally:
        claims.close()


# --- worker processes -------------------------------------------------------------------------


def _worker_main(conn: multiprocessing.connection.Connection, stop: Any, parent: int) -> None:
    """A worker: one torch thread, deaf to Ctrl-C and SIGTERM (the parent decides), gone when the parent is."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent until now
    _die_with_parent(parent)
    import torch

    torch.set_num_threads(1)
    from trainer.training import loop as train  # noqa: F401  (what execute() imports on first use)

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
        unit, logdir, held = task
        if unit.engine == "loop":
            _make_an_optimizer()
        try:
            summaries = execute_unit(unit, Path(logdir), stop.is_set, claims=held)
        except Exception as exc:  # execute_unit records a run's own faults; this is a last resort
            summaries = [
                Summary(run.folder, Status.FAILED, {}, 0.0, f"{type(exc).__name__}: {exc}")
                for run in unit.runs
            ]
        conn.send(summaries)


@functools.cache
def _make_an_optimizer() -> None:
    """torch imports its compiler (seconds) when the first optimizer is made: paid before a loop
    run starts, so that its duration is its own. The batched engine makes none."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _die_with_parent(parent: int) -> None:
    """A worker whose sweep was killed must not go on writing into a run that a rerun may take over.

    The kernel kills the worker when its parent process dies: the sweep itself, or the fork server,
    which the kernel kills the moment the sweep is gone (trainer.forkserver)."""
    if not kill_with_parent():
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if not rundir.pid_alive(parent):  # the sweep died before this worker could ask
        os._exit(1)


def _exit_with_parent(parent: int) -> None:
    while rundir.pid_alive(parent):
        time.sleep(0.5)
    os._exit(1)


READY = "ready"


class WorkerStartError(Exception):
    """A worker process died before it could take a run: nothing will run until that is fixed."""


class Worker:
    def __init__(self, ctx: Any, stop: Any):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, stop, os.getpid()), daemon=True)
        # Started with the stop signals blocked (the mask is inherited), so a Ctrl-C that comes while
        # the worker is still importing cannot kill it with a KeyboardInterrupt traceback.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()
        self.ready = False
        self.unit: Unit | None = None
        self.claims: dict[str, rundir.Claim] = {}

    def give(self, unit: Unit, claims: dict[str, rundir.Claim], logdir: Path) -> None:
        self.unit, self.claims = unit, claims
        try:
            self.conn.send((unit, str(logdir), claims))
        except OSError:
            pass  # the process is gone; its sentinel is ready and the run is recorded as failed

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


def _run_pool(
    todo: list[Unit],
    seen: dict[str, Any],
    opts: Options,
    report: Report,
    progress: Progress,
    stop: StopRequest,
) -> None:
    """Hand runs to workers until none is left; on a stop request, give the runs in progress a grace
    period to record themselves as interrupted, then kill what is left."""
    ctx = worker_context()
    stopping = ctx.Event()  # the workers' should_stop
    claims = Claims(opts.logdir)
    workers = min(opts.workers, len(todo))
    queue = Ahead(todo, workers, opts, seen, claims, report, progress)
    pool: list[Worker] = []
    deadline: float | None = None
    start_deaths = 0
    try:
        queue.fill()  # while the fork server is still importing torch
        pool += [Worker(ctx, stopping) for _ in range(workers)]
        while True:
            if stop.is_set() and deadline is None:
                stopping.set()
                deadline = time.monotonic() + STOP_GRACE
                progress.note("Interrupted: stopping the runs in progress ...")
            if deadline is None and report.logdir_fault is None:
                _hand_out(pool, queue, ctx, stopping)
            busy = [w for w in pool if w.unit is not None]
            if not busy:
                return
            if deadline is not None and (time.monotonic() >= deadline or stop.count > 1):
                for worker in busy:
                    worker.process.kill()
                    _finish_unit(worker, _died(worker, opts, Status.INTERRUPTED), claims, report, progress)
                return
            timeout = rundir.HEARTBEAT_EVERY if deadline is None else deadline - time.monotonic()
            ready = multiprocessing.connection.wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy] + [stop.wake_fd],
                timeout=max(0.0, timeout),
            )
            stop.clear_wakeups()
            for worker in busy:
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                # Looked at before collecting: a worker seen dead here has sent all it ever will.
                alive = worker.process.is_alive()
                try:
                    summary = _collect(worker, any(w.ready for w in pool), alive)
                except WorkerDiedStarting as died:
                    # Its run never began: the run and its claim go to a new worker.
                    start_deaths += 1
                    if start_deaths > START_RETRIES * max(1, opts.workers):
                        raise WorkerStartError(
                            f"worker processes died {start_deaths} times while starting, the "
                            f"last one {died}; no run was lost (free memory, or use fewer "
                            f"--workers)"
                        )
                    report.start_notes.append(f"a worker process {died} while starting; another took its run")
                    progress.note(f"A worker process {died} while starting; starting another.")
                    replacement = Worker(ctx, stopping)
                    pool[pool.index(worker)] = replacement
                    worker.stop()
                    if deadline is None:
                        replacement.give(worker.unit, worker.claims, opts.logdir)
                    else:
                        for claim in worker.claims.values():
                            claims.release(claim)
                    continue
                if summary is None and alive:
                    continue  # it only said it is ready
                if summary is None:  # the process died: record it, start another
                    summary = _died(worker, opts, Status.FAILED if deadline is None else Status.INTERRUPTED)
                    pool.remove(worker)
                    if queue and deadline is None and report.logdir_fault is None:
                        pool.append(Worker(ctx, stopping))
                    _finish_unit(worker, summary, claims, report, progress)
                    continue
                held, worker.unit, worker.claims = worker.claims, None, {}
                if (
                    deadline is None
                    and not stop.is_set()
                    and report.logdir_fault is None
                    and not any(s.logdir_fault for s in summary)
                ):
                    queue.give_next(worker)  # its next unit first: releasing this one's claims takes a while
                finish_unit(held, summary, claims, report, progress)
    except WorkerStartError as exc:
        # Not the runs' fault: they are left as they were, to run once workers can start.
        report.startup_fault = str(exc)
        for worker in pool:
            for claim in worker.claims.values():
                claims.release(claim)
            worker.unit, worker.claims = None, {}
    finally:
        for worker in pool:  # all at once: each takes a moment to exit
            worker.ask_to_stop()
        for worker in pool:
            worker.stop()
        claims.close()


def _hand_out(pool: list[Worker], queue: Ahead, ctx: Any, stopping: Any) -> None:
    """Give each idle worker the next unit claimed for it, then claim the units that come next."""
    for i, worker in enumerate(pool):
        if worker.unit is None and queue and not worker.process.is_alive():
            worker.stop()
            pool[i] = worker = Worker(ctx, stopping)  # died while idle
        if worker.unit is None:
            queue.give_next(worker)
    queue.fill()


class Ahead:
    """The units still to run, the next groups among them claimed ahead of their turn: claiming a
    group writes a file per run (tenths of a second for hundreds of runs), which the parent does
    while the workers train, so that a worker that finishes starts its next group at once. At most
    as many units are claimed ahead as there are workers; a single run is claimed when it starts."""

    def __init__(
        self,
        todo: list[Unit],
        ahead: int,
        opts: Options,
        seen: dict[str, Any],
        claims: Claims,
        report: Report,
        progress: Progress,
    ):
        self.pending = collections.deque(todo)
        self.ready: collections.deque[tuple[Unit, dict[str, rundir.Claim]]] = collections.deque()
        self.ahead = ahead
        self.opts, self.seen, self.claims, self.report, self.progress = opts, seen, claims, report, progress

    def __bool__(self) -> bool:
        return bool(self.ready or self.pending)

    def _claim_one(self) -> None:
        unit = self.pending.popleft()
        claimed, held = claim_unit(unit, self.opts, self.seen, self.claims, self.report, self.progress)
        if claimed is not None:
            self.ready.append((claimed, held))

    def fill(self) -> None:
        while (
            len(self.ready) < self.ahead
            and self.pending
            and len(self.pending[0].runs) > 1
            and self.report.logdir_fault is None
        ):
            self._claim_one()

    def give_next(self, worker: Worker) -> None:
        """Give the worker the next claimed unit (claiming it now if none is ready); nothing when no
        unit is left, or the log folder cannot be written."""
        while not self.ready and self.pending and self.report.logdir_fault is None:
            self._claim_one()
        if self.ready and self.report.logdir_fault is None:
            worker.give(*self.ready.popleft(), self.opts.logdir)


def _finish_unit(
    worker: Worker, summaries: list[Summary], claims: Claims, report: Report, progress: Progress
) -> None:
    held, worker.unit, worker.claims = worker.claims, None, {}
    finish_unit(held, summaries, claims, report, progress)


def finish_unit(
    held: dict[str, rundir.Claim],
    summaries: list[Summary],
    claims: Claims,
    report: Report,
    progress: Progress,
) -> None:
    """A unit has ended, wherever it ran: release its runs' claims and report what became of them."""
    for claim in held.values():
        claims.release(claim)
    for summary in summaries:
        record_summary(report, progress, summary)


class WorkerDiedStarting(Exception):
    """A worker died before it was ready, in a way that says nothing against the others (killed by a
    signal, or exited while another worker of the sweep started fine); it can be replaced."""


def _how(code: int | None) -> str:
    return (
        f"was killed by signal {signal.Signals(-code).name}"
        if code is not None and code < 0
        else f"exited with status {code}"
    )


def _collect(worker: Worker, others_ready: bool = False, alive: bool = True) -> list[Summary] | None:
    """The worker's summaries of its unit's runs; None if it has none to give (it died)."""
    try:
        while worker.conn.poll():
            message = worker.conn.recv()
            if message != READY:
                return message
            worker.ready = True
    except (EOFError, OSError):
        pass
    if not worker.ready and not alive:
        worker.process.join(timeout=1)
        code = worker.process.exitcode
        if code is None or code < 0 or others_ready:
            raise WorkerDiedStarting(_how(code))
        raise WorkerStartError(
            f"a worker process exited with status {worker.process.exitcode} before it was ready, so no run was "
            f"started. Check that `{Path(sys.executable).name} -c 'import torch'` works, and that a script "
            f'starting a sweep does so under `if __name__ == "__main__":`'
        )
    return None


def _died(worker: Worker, opts: Options, status: Status = Status.FAILED) -> list[Summary]:
    """Record the runs of a unit whose worker is gone; their event files get a session end so
    TensorBoard agrees."""
    worker.process.join(timeout=1)
    how = _how(worker.process.exitcode).replace("was killed", "killed")
    error = f"the worker process running it {how}" if status == Status.FAILED else "interrupted"
    return [
        mark_ended(opts.logdir, run, status, error, worker.claims.get(run.folder)) for run in worker.unit.runs
    ]


def mark_ended(
    logdir: Path, run: RunPlan, status: str, error: str, claim: rundir.Claim | None = None
) -> Summary:
    """Write the record (and a session end) of a run that could not write its own."""
    from trainer.runs.job import base_record

    folder = logdir / run.folder
    record = base_record(run, status, error)
    if claim is not None and not rundir.owns(claim):
        return Summary(run.folder, LOST, {}, 0.0, "taken over by another sweep")
    try:  # the session end, so TensorBoard agrees
        folder.mkdir(parents=True, exist_ok=True)
        end_event_file(folder, record["hparams"], status)
    except OSError:
        pass
    try:
        rundir.commit_record(folder, record, claim)
    except rundir.ClaimLost:
        return Summary(run.folder, LOST, {}, 0.0, "taken over by another sweep")
    except OSError as exc:
        error = f"{error}; and its record could not be written: {exc.strerror}"
    return Summary(run.folder, status, {}, 0.0, error)


def end_event_file(folder: Path, hparams: dict[str, Any], status: str) -> None:
    """Close a killed worker's event file with a session end, keeping one event file per run: the
    file is cut back to its last whole record (the worker may have died mid-write), then appended
    to. A run killed before its event file began gets one."""
    from tensorboard.compat.proto import event_pb2

    from trainer.tensorboard.events import frame
    from trainer.tensorboard.hparams import SESSION_START_INFO_TAG, session_end_pb, session_start_pb

    names = verify.event_files(folder)
    now = time.time()
    if len(names) != 1:
        from trainer.runs.job import end_session

        end_session(folder, hparams, status)
        return
    path = folder / names[0]
    length, _ = verify.valid_length(path)
    with open(path, "r+b") as f:
        started = SESSION_START_INFO_TAG.encode() in f.read(length)
        f.truncate(length)
        f.seek(length)
        records = [] if started else [session_start_pb(hparams, now)]
        records.append(session_end_pb(status, now))
        f.write(
            b"".join(
                frame(event_pb2.Event(summary=s, step=0, wall_time=now).SerializeToString()) for s in records
            )
        )
