"""The seam between the sweep driver and its executors: what an executor is handed (a Sweep), the
one method it has (launch), and the registry the driver picks it from by name.

The driver decides what runs and keeps the tally; an executor decides where the units run. It
claims each unit through the Sweep just before starting it, and hands back each unit's summaries
through Sweep.finish. A new executor is one module with an EXECUTOR and one line in
trainer.executors.EXECUTORS.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trainer.core.status import Status
from trainer.executors import EXECUTORS
from trainer.executors.progress import Progress
from trainer.executors.stopping import StopRequest
from trainer.run import rundir
from trainer.run.claims import Claim, Held
from trainer.run.job import Summary, record_ended
from trainer.run.selection import Report
from trainer.run.study import Studies
from trainer.spec.plan import RunPlan
from trainer.spec.units import Unit, units_of


class Executor(Protocol):
    def launch(self, units: list[Unit], sweep: Sweep) -> None:
        """Run the units, claiming each through sweep.claim and reporting it through sweep.finish;
        return once every unit has ended, or the sweep was stopped and its runs recorded."""


def executor(name: str) -> Executor:
    """The executor registered under `name`."""
    return importlib.import_module(EXECUTORS[name]).EXECUTOR


@dataclass
class Sweep:
    """What every executor is handed besides its units: where the runs go, what the driver saw of
    them when it chose them, the tally, the progress output, the stop flag and the claims held."""

    logdir: Path
    workers: int
    address: str | None
    seen: dict[str, Any]  # run folder -> its record's stamp when the driver looked
    report: Report
    progress: Progress
    stop: StopRequest
    claims: Held
    search: Studies | None = None  # the sweep's searches: pruning verdicts and TPE's next trials

    def judge(self, folder: str, step: int, value: float) -> bool:
        """Whether a search's run that reported `value` at `step` is to be pruned now."""
        return self.search is not None and self.search.report(folder, step, value)

    @property
    def judging(self) -> bool:
        return self.search is not None and self.search.pruning

    def more(self) -> list[Unit]:
        """The units of a newly drawn trial (a TPE search, while it has trials to draw), else none."""
        if self.search is None or self.stop.is_set() or self.faulted:
            return []
        runs = self.search.more()
        for run in runs:
            self.seen[run.folder] = rundir.record_stamp(self.logdir / run.folder)
        return units_of(runs, max(1, self.workers))

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

    def _claim_run(self, run: RunPlan) -> Claim | None:
        """Claim a run just before it starts, and look again: another sweep may have run it meanwhile.
        A damaged run's folder is moved aside, under the claim, before the run starts again."""
        report = self.report
        try:
            claim = self.claims.take(run.experiment, run.name)
        except OSError as exc:
            report.logdir_fault = (
                report.logdir_fault or f"cannot claim {run.folder} in {self.logdir}: {exc.strerror or exc}"
            )
            return None
        if claim is None:
            report.elsewhere.append(run.folder)
            self.progress.left_alone(run.folder, "running elsewhere")
            return None
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

    def finish(self, held: dict[str, Claim], summaries: list[Summary]) -> None:
        """A unit has ended, wherever it ran: release its runs' claims and report what became of them."""
        for claim in held.values():
            self.claims.release(claim)
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
