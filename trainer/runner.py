"""The sweep runner: which runs need running, a pool of reused worker processes, and interruptions.

The parent process never imports torch: it plans, claims runs, hands them to workers one at a time
(longest first, so both cores stay busy to the end), keeps one summary per finished run, and keeps
its claims fresh. A worker that dies is replaced; Ctrl-C stops the workers at their next chunk of steps.
"""
from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import rundir
from trainer.errors import LogDirError
from trainer.job import Summary, execute
from trainer.progress import Progress
from trainer.sweep import RunPlan

# After Ctrl-C, workers get this long to record their runs as interrupted before they are killed.
STOP_GRACE = 10.0


@dataclass
class Options:
    logdir: Path
    workers: int = 1                   # 0: run in this process
    force: bool = False                # rerun complete runs too
    rerun_failed: bool = False         # rerun runs that failed before
    progress: Progress | None = None


@dataclass
class Report:
    """What a sweep did: one summary per run it ran, and the names of runs it left alone."""

    ran: list[Summary] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)            # complete with the same configuration
    kept_failed: list[str] = field(default_factory=list)     # failed before; --rerun-failed retries
    elsewhere: list[str] = field(default_factory=list)       # claimed by another sweep
    interrupted: bool = False
    logdir_fault: str | None = None

    @property
    def failed(self) -> list[Summary]:
        return [s for s in self.ran if s.status == "failed"]


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


def select(runs: list[RunPlan], opts: Options, report: Report) -> list[RunPlan]:
    """The runs that need running; a finished run whose configuration changed stops everything."""
    todo, changed = [], []
    for run in runs:
        state = rundir.state_of(opts.logdir, run.experiment, run.name)
        same = state.record is not None and state.record.get("config_digest") == rundir.config_digest(run.config)
        if opts.force or state.state in ("missing", "unfinished", "interrupted", "running"):
            todo.append(run)
        elif state.state in rundir.FINISHED:
            if same:
                report.kept.append(run.folder)
            else:
                changed.append((run, state.record))
        elif same and not opts.rerun_failed:
            report.kept_failed.append(run.folder)
        else:
            todo.append(run)
    if changed:
        lines = [f"{opts.logdir / run.folder}: logged with a different configuration "
                 f"({describe_changes(record.get('config', {}), run)})" for run, record in changed[:10]]
        if len(changed) > 10:
            lines.append(f"... and {len(changed) - 10} more")
        lines.append(f"{len(changed)} finished run{'s' if len(changed) > 1 else ''} would be replaced; nothing "
                     f"was run. Pass --force to rerun them with the new configuration, or give another --logdir "
                     f"to keep both.")
        raise LogDirError(lines)
    return sorted(todo, key=lambda r: -r.cost())


def describe_changes(old: dict[str, Any], run: RunPlan) -> str:
    from trainer.schema import as_data

    new = as_data(run.config)
    diffs = [f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in _diff(old, new, "") if k != "description"]
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
    check_writable(opts.logdir)
    todo = select(runs, opts, report)
    progress = opts.progress or Progress(enabled=False)
    progress.start(len(runs), len(runs) - len(todo))
    if todo:
        if opts.workers == 0:
            _run_here(todo, opts, report, progress)
        else:
            _run_pool(todo, opts, report, progress)
    progress.close()
    return report


# --- claims -----------------------------------------------------------------------------------


class Claims:
    """The claims this process holds, kept fresh by a heartbeat thread."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.held: set[Path] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def take(self, run: RunPlan) -> Path | None:
        path = rundir.claim_path(self.logdir, run.experiment, run.name)
        if not rundir.try_claim(path):
            return None
        with self.lock:
            self.held.add(path)
        return path

    def release(self, path: Path) -> None:
        with self.lock:
            self.held.discard(path)
        rundir.release_claim(path)

    def _beat(self) -> None:
        while not self.done.wait(rundir.HEARTBEAT_EVERY):
            with self.lock:
                rundir.touch_claims(list(self.held))

    def close(self) -> None:
        self.done.set()
        with self.lock:
            for path in self.held:
                rundir.release_claim(path)
            self.held.clear()


def _claim_for_running(run: RunPlan, opts: Options, claims: Claims, report: Report,
                       progress: Progress) -> Path | None:
    """Claim a run just before it starts, and look again: another sweep may have done it meanwhile."""
    path = claims.take(run)
    if path is None:
        report.elsewhere.append(run.folder)
        progress.left_alone(run.folder, "running elsewhere")
        return None
    state = rundir.state_of(opts.logdir, run.experiment, run.name)
    if not opts.force and state.state in rundir.FINISHED and state.record and \
            state.record.get("config_digest") == rundir.config_digest(run.config):
        claims.release(path)
        report.kept.append(run.folder)
        progress.left_alone(run.folder, "done by another sweep")
        return None
    return path


def _record(report: Report, progress: Progress, summary: Summary) -> None:
    report.ran.append(summary)
    progress.finished(summary)
    if summary.logdir_fault and report.logdir_fault is None:
        report.logdir_fault = summary.error


# --- in this process --------------------------------------------------------------------------


def _run_here(todo: list[RunPlan], opts: Options, report: Report, progress: Progress) -> None:
    import torch
    torch.set_num_threads(1)   # the same arithmetic as in a sweep's workers
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    claims = Claims(opts.logdir)
    try:
        for run in todo:
            if stop.is_set() or report.logdir_fault:
                break
            path = _claim_for_running(run, opts, claims, report, progress)
            if path is None:
                continue
            progress.begin_steps(run)
            summary = execute(run, opts.logdir, stop.is_set, progress.steps)
            claims.release(path)
            _record(report, progress, summary)
    finally:
        claims.close()
        signal.signal(signal.SIGINT, previous)
    report.interrupted = stop.is_set()


# --- worker processes -------------------------------------------------------------------------


def _worker_main(conn: multiprocessing.connection.Connection, stop: Any, parent: int) -> None:
    """A worker: one torch thread, deaf to Ctrl-C (the parent decides), gone when the parent is."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        run, logdir = task
        try:
            summary = execute(run, Path(logdir), stop.is_set)
        except Exception as exc:  # execute records a run's own faults; this is a last resort
            summary = Summary(run.folder, "failed", {}, 0.0, f"{type(exc).__name__}: {exc}")
        conn.send(summary)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


class Worker:
    def __init__(self, ctx: Any, stop: Any):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, stop, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.run: RunPlan | None = None
        self.claim: Path | None = None

    def give(self, run: RunPlan, claim: Path, logdir: Path) -> None:
        self.run, self.claim = run, claim
        self.conn.send((run, str(logdir)))

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _run_pool(todo: list[RunPlan], opts: Options, report: Report, progress: Progress) -> None:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    pending = collections.deque(todo)
    claims = Claims(opts.logdir)
    workers = [Worker(ctx, stop) for _ in range(min(opts.workers, len(todo)))]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _dispatch_until_done(workers, pending, opts, claims, report, progress, ctx, stop)
    except KeyboardInterrupt:
        report.interrupted = True
        stop.set()
        progress.note("Interrupted: stopping the runs in progress ...")
        _drain(workers, opts, claims, report, progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for worker in workers:
            worker.stop()
        claims.close()


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _dispatch_until_done(workers: list[Worker], pending: collections.deque, opts: Options, claims: Claims,
                         report: Report, progress: Progress, ctx: Any, stop: Any) -> None:
    while True:
        for worker in workers:
            while worker.run is None and pending and report.logdir_fault is None:
                run = pending.popleft()
                path = _claim_for_running(run, opts, claims, report, progress)
                if path is not None:
                    worker.give(run, path, opts.logdir)
        busy = [w for w in workers if w.run is not None]
        if not busy:
            return
        waiting = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        ready = multiprocessing.connection.wait(waiting, timeout=rundir.HEARTBEAT_EVERY)
        for worker in busy:
            if worker.conn in ready or worker.process.sentinel in ready:
                summary = _collect(worker, opts)
                if summary is None:                     # the process died: record it, start another
                    summary = _died(worker, opts)
                    workers[workers.index(worker)] = Worker(ctx, stop)
                claims.release(worker.claim)
                worker.run = worker.claim = None
                _record(report, progress, summary)


def _collect(worker: Worker, opts: Options) -> Summary | None:
    try:
        if worker.conn.poll():
            return worker.conn.recv()
    except (EOFError, OSError):
        pass
    return None


def _died(worker: Worker, opts: Options, status: str = "failed") -> Summary:
    """Record a run whose worker is gone; its event file gets a session end so TensorBoard agrees."""
    worker.process.join(timeout=1)
    code = worker.process.exitcode
    how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
           else f"exited with status {code}")
    error = f"the worker process running it {how}" if status == "failed" else "interrupted"
    return mark_ended(opts.logdir, worker.run, status, error)


def mark_ended(logdir: Path, run: RunPlan, status: str, error: str) -> Summary:
    """Write the record (and a session end) of a run that could not write its own."""
    from trainer.events import EventFile
    from trainer.hparams import session_end_pb
    from trainer.job import hparams_of, resolved_values

    folder = logdir / run.folder
    now = time.time()
    record = {
        "format": rundir.RECORD_FORMAT, "experiment": run.experiment, "run": run.name, "status": status,
        "config_digest": rundir.config_digest(run.config), "swept": dict(run.swept),
        "hparams": hparams_of(run.config, run.experiment, resolved_values(run)), "metrics": {},
        "steps": run.steps, "error": error,
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        events = EventFile(folder, suffix=".end")
        events.write_summary(session_end_pb(status, now), 0, now)
        events.close()
        rundir.write_record(folder, record)
    except OSError as exc:
        error = f"{error}; and its record could not be written: {exc.strerror}"
    return Summary(run.folder, status, {}, 0.0, error)


def _drain(workers: list[Worker], opts: Options, claims: Claims, report: Report, progress: Progress) -> None:
    """Give busy workers a moment to record their runs as interrupted; then kill them."""
    deadline = time.monotonic() + STOP_GRACE
    try:
        while any(w.run is not None for w in workers) and time.monotonic() < deadline:
            busy = [w for w in workers if w.run is not None]
            ready = multiprocessing.connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                                                    timeout=max(0.0, deadline - time.monotonic()))
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    summary = _collect(worker, opts) or _died(worker, opts, "interrupted")
                    claims.release(worker.claim)
                    worker.run = worker.claim = None
                    _record(report, progress, summary)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: stop waiting
    for worker in workers:
        if worker.run is not None:
            worker.process.kill()
            _record(report, progress, _died(worker, opts, "interrupted"))
            claims.release(worker.claim)
            worker.run = worker.claim = None


