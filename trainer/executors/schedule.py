"""The one scheduling loop of a sweep, whatever runs its units: what starts next, the claims, a
search's next trials and verdicts, stop -> grace -> kill, and the tally.

`drive` hands units to a Backend (trainer.executors.base) while it has slots, claiming each unit's
runs just before, and the next groups ahead of their turn (Ahead); a unit that ends releases its
claims and is tallied here, and its slot goes to the next unit at once. Ctrl-C asks the backend to
stop its units; once the grace period is over, what is left is killed and recorded as interrupted.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.core.status import Status
from trainer.executors.base import Backend, BackendFailed, Ended
from trainer.executors.progress import Progress
from trainer.executors.stopping import Grace, StopRequest
from trainer.run import rundir
from trainer.run.claims import HEARTBEAT_EVERY, Claim, Held
from trainer.run.job import Summary, record_ended
from trainer.run.selection import Report
from trainer.run.study import Studies
from trainer.spec.plan import RunPlan
from trainer.spec.units import Unit, units_of


@dataclass
class Sweep:
    """What the loop and the backends share of a sweep: where the runs go, what the driver saw of
    them when it chose them, the tally, the progress output, the stop flag and the claims held."""

    logdir: Path
    workers: int
    seen: dict[str, Any]  # run folder -> its record's stamp when the driver looked
    report: Report
    progress: Progress
    stop: StopRequest
    claims: Held
    search: Studies | None = None  # the sweep's searches: pruning verdicts and TPE's next trials
    folders: set[str] = field(default_factory=set)  # every spec folder a unit of this sweep may come from
    adopted: dict[str, str] = field(default_factory=dict)  # run folder -> the token of a claim to take back
    given: dict[str, Any] = field(default_factory=dict)  # the executor's options the caller gave

    def judge(self, folder: str, step: int, value: float) -> bool:
        """Whether a search's run that reported `value` at `step` is to be pruned now."""
        return self.search is not None and self.search.report(folder, step, value)

    @property
    def judging(self) -> bool:
        return self.search is not None and self.search.pruning

    def more(self, parallel: int) -> list[Unit]:
        """The units of a newly drawn trial (a TPE search, while it has trials to draw), else none."""
        if self.search is None or self.stop.is_set() or self.faulted:
            return []
        runs = self.search.more()
        for run in runs:
            self.seen[run.folder] = rundir.record_stamp(self.logdir / run.folder)
        return units_of(runs, max(1, parallel))

    @property
    def faulted(self) -> bool:
        """Whether nothing more may start: the log folder cannot be written, or no worker can start."""
        return self.report.logdir_fault is not None or self.report.startup_fault is not None

    def claim(self, unit: Unit) -> tuple[Unit | None, dict[str, Claim]]:
        """Claim every run of a unit; the unit of the runs claimed (None if none was), and their claims."""
        held: dict[str, Claim] = {}
        for run in unit.runs:
            if self.report.logdir_fault is not None:
                break
            claim = self._claim_run(run)
            if claim is not None:
                held[run.folder] = claim
        runs = tuple(run for run in unit.runs if run.folder in held)
        return (dataclasses.replace(unit, runs=runs) if runs else None), held

    def _take(self, run: RunPlan) -> Claim | None:
        token = self.adopted.get(run.folder)
        if token is None:
            return self.claims.take(run.experiment, run.name)
        return self.claims.take(run.experiment, run.name, token)

    def _claim_run(self, run: RunPlan) -> Claim | None:
        """Claim a run just before it starts, and look again: another sweep may have run it meanwhile.
        A damaged run's folder is moved aside, under the claim, before the run starts again."""
        report = self.report
        try:
            claim = self._take(run)
        except OSError as exc:
            report.logdir_fault = (
                report.logdir_fault or f"cannot claim {run.folder} in {self.logdir}: {exc.strerror or exc}"
            )
            return None
        if claim is None:
            report.elsewhere.append(run.folder)
            self.progress.left_alone(run.folder, "running elsewhere")
            return None
        if run.folder in self.adopted:
            return claim  # still running from an earlier driver of this sweep: looked at already
        if rundir.record_stamp(self.logdir / run.folder) != self.seen.get(run.folder):
            # Recorded by another sweep since this one looked: its result stands (two sweeps started
            # with --force or --rerun-failed would otherwise each run it), unless it was interrupted.
            state = rundir.state_of(self.logdir, run.experiment, run.name)
            if state.record is not None and state.state != Status.INTERRUPTED:
                self.claims.release(claim)
                report.elsewhere.append(run.folder)
                self.progress.left_alone(run.folder, f"{state.state} in another sweep")
                return None
        if run.folder in report.damaged:
            try:
                report.set_aside[run.folder] = rundir.set_aside(
                    self.logdir, run.experiment, run.name, report.damaged[run.folder]
                )
            except OSError as exc:
                self.claims.release(claim)
                report.logdir_fault = (
                    report.logdir_fault
                    or f"cannot move the damaged run {run.folder} aside: {exc.strerror or exc}"
                )
                return None
        return claim

    def release(self, held: dict[str, Claim]) -> None:
        for claim in held.values():
            self.claims.release(claim)

    def finish(self, held: dict[str, Claim], summaries: list[Summary]) -> None:
        """A unit has ended, wherever it ran: release its runs' claims and report what became of them."""
        self.release(held)
        for summary in summaries:
            self._tally(summary)

    def _tally(self, summary: Summary) -> None:
        report, progress = self.report, self.progress
        if summary.status == Status.LOST:
            report.lost.append(summary.folder)
            report.elsewhere.append(summary.folder)
            progress.left_alone(
                summary.folder,
                "taken over by another sweep while this one was paused; its result here was discarded",
            )
            return
        report.ran.append(summary)
        progress.finished(summary)
        if self.search is not None:
            self.search.ended(summary.folder, summary.status, summary.metrics)
        if summary.logdir_fault and report.logdir_fault is None:
            report.logdir_fault = summary.error

    def ended(
        self,
        run: RunPlan,
        status: Status,
        error: str,
        claim: Claim | None,
        steps_done: int | None = None,
        seconds: float | None = None,
    ) -> Summary:
        """Record a run that could not record itself (its worker died, or the sweep stopped it), with
        the steps and seconds it reached where the executor knows them."""
        return record_ended(self.logdir, run, status, error, claim, steps_done, seconds)


class Ahead:
    """The units still to run, the next groups among them claimed ahead of their turn: claiming a
    group writes a file per run (tenths of a second for hundreds of runs), which the driver does
    while the backend trains, so that a slot that frees starts its next group at once. At most as
    many units are claimed ahead as there are slots; a single run is claimed when it starts."""

    def __init__(self, todo: list[Unit], ahead: int, sweep: Sweep, parallel: int):
        self.pending = collections.deque(todo)
        self.ready: collections.deque[tuple[Unit, dict[str, Claim]]] = collections.deque()
        self.ahead, self.sweep, self.parallel = ahead, sweep, parallel

    def __bool__(self) -> bool:
        return bool(self.ready or self.pending)

    def _claim_one(self) -> None:
        claimed, held = self.sweep.claim(self.pending.popleft())
        if claimed is not None:
            self.ready.append((claimed, held))

    def fill(self) -> None:
        while (
            len(self.ready) < self.ahead
            and self.pending
            and len(self.pending[0].runs) > 1
            and self.sweep.report.logdir_fault is None
        ):
            self._claim_one()

    def take(self) -> tuple[Unit, dict[str, Claim]] | None:
        """The next claimed unit (claimed now if none is ready); None when no unit is left, or the log
        folder cannot be written. A TPE search draws its next trial here."""
        if not self.ready and not self.pending:
            self.pending.extend(self.sweep.more(self.parallel))
        while not self.ready and self.pending and self.sweep.report.logdir_fault is None:
            self._claim_one()
        if self.ready and self.sweep.report.logdir_fault is None:
            return self.ready.popleft()
        return None

    def release(self) -> None:
        while self.ready:
            self.sweep.release(self.ready.popleft()[1])


def drive(backend: Backend, runs: list[RunPlan], sweep: Sweep) -> None:
    """Run the runs on the backend until none is left or the sweep stops, in units split so as to
    keep it busy; every unit started is tallied (or, where the backend failed, left as it was and
    its claims released)."""
    todo = units_of(runs, backend.parallel) if runs else []
    drawing = sweep.search is not None and sweep.search.left_to_draw() > 0
    queue = Ahead(todo, backend.slots if drawing else min(backend.slots, len(todo)), sweep, backend.parallel)
    running: dict[Any, dict[str, Claim]] = {}
    grace = Grace(sweep.stop, sweep.progress, backend.stop)
    _adopt(backend, queue, running, sweep)

    def start() -> None:
        # Asked first, whether or not a slot is free: the first time, it tells the backend to stop.
        while not grace.stopping() and len(running) < backend.slots and not sweep.faulted:
            nxt = queue.take()
            if nxt is None:
                break
            unit, held = nxt
            running[backend.submit(unit, held)] = held
        if not grace.started:
            queue.fill()

    try:
        start()
        while running:
            if grace.over():
                for ended in backend.kill():
                    sweep.finish(running.pop(ended.handle), ended.summaries)
                break
            arrived = backend.wait(grace.wait(HEARTBEAT_EVERY))
            sweep.stop.clear_wakeups()
            for ended in arrived:
                held = running.pop(ended.handle)
                if sweep.search is not None and sweep.search.draws_later:  # TPE draws knowing this one
                    for summary in ended.summaries:
                        sweep.search.ended(summary.folder, summary.status, summary.metrics)
                if not any(s.logdir_fault for s in ended.summaries):
                    start()  # its slot's next unit first: releasing this one's claims takes a while
                sweep.finish(held, ended.summaries)
            start()
    except BackendFailed as failed:  # the units in progress are left as they were
        sweep.report.startup_fault = sweep.report.startup_fault or str(failed)
    finally:
        queue.release()
        for held in running.values():  # not begun, or left by a fault: their claims go
            sweep.release(held)


def _adopt(backend: Backend, queue: Ahead, running: dict[Any, dict[str, Claim]], sweep: Sweep) -> None:
    """Units an earlier driver of this sweep left running in the backend: claimed back with their own
    tokens (so the runs keep writing) and waited for, never submitted twice."""
    adopted = getattr(backend, "adopted", None)
    live = adopted() if adopted is not None else {}
    if not live:
        return
    sweep.adopted.update(live)
    keep: list[Unit] = []
    for unit in queue.pending:
        if not any(run.folder in live for run in unit.runs):
            keep.append(unit)
            continue
        claimed, held = sweep.claim(unit)
        if claimed is not None:
            running[backend.adopt(claimed, held)] = held
    queue.pending = collections.deque(keep)


def ended_all(
    sweep: Sweep, handle: Any, unit: Unit, claims: dict[str, Claim], status: Status, error: str
) -> Ended:
    """Every run of a unit recorded as ended (interrupted or failed) without its results."""
    return Ended(handle, [sweep.ended(run, status, error, claims.get(run.folder)) for run in unit.runs])
