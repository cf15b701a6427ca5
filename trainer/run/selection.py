"""Which runs of a sweep need running: each planned run's verdict against what its folder holds,
and the tally of what became of every run."""

from __future__ import annotations

import contextlib
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.core import guards
from trainer.core.errors import LogDirError
from trainer.core.status import FINISHED, Status
from trainer.run import claims, rundir, verify
from trainer.run.job import Summary
from trainer.run.record import code_changes, code_record, setting_changes
from trainer.spec.plan import RunPlan


class Verdict(enum.Enum):
    """What a sweep does with a planned run, from what its folder holds."""

    RUN = "run"
    KEPT = "kept"  # complete with the same configuration
    KEPT_FAILED = "kept_failed"  # failed before with the same configuration; --rerun-failed retries
    CHANGED = "changed"  # finished with another configuration or code: nothing runs


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
    # recorded by another sweep (or a merge) while this one ran, with another configuration
    changed: list[tuple[RunPlan, dict[str, Any]]] = field(default_factory=list)
    start_notes: list[str] = field(default_factory=list)  # workers that died while starting
    interrupted: bool = False
    logdir_fault: str | None = None
    startup_fault: str | None = None  # worker processes could not start

    @property
    def failed(self) -> list[Summary]:
        return [s for s in self.ran if s.status == Status.FAILED]

    def left_alone(self, verdict: Verdict) -> list[str]:
        """The runs of a verdict that the sweep leaves as they are."""
        return {Verdict.KEPT: self.kept, Verdict.KEPT_FAILED: self.kept_failed}[verdict]


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
            problem = guards.escape_problem(logdir, logdir / run.experiment / claims.CLAIMS)
            if problem is not None:
                problems.append(problem)
                continue
        problem = guards.escape_problem(logdir / run.experiment, logdir / run.folder)
        if problem is not None:
            problems.append(problem)
    if problems:
        more = [f"... and {len(problems) - 10} more"] if len(problems) > 10 else []
        raise LogDirError(problems[:10] + more + ["nothing was run"])


def select(
    runs: list[RunPlan], logdir: Path, force: bool, rerun_failed: bool, report: Report
) -> tuple[list[RunPlan], dict[str, Any]]:
    """The runs that need running, longest first, and the record stamp each had when looked at.

    A finished run whose configuration changed stops everything: nothing is run, nothing written.
    Otherwise the claims that dead sweeps left on runs this one leaves alone are removed (a sweep
    killed between a run's record and the release of its claim).
    """
    todo, changed, seen, stale = [], [], {}, []
    for run in runs:
        state = rundir.state_of(logdir, run.experiment, run.name)
        verdict = _verdict(state, run, force, rerun_failed)
        if state.problem is not None:  # set aside before the run starts again, never deleted
            report.damaged[run.folder] = state.problem
        elif state.state in verify.CHECKED and verdict != Verdict.CHANGED:
            damage = verify.quick(logdir / run.folder, state.record)
            if damage is not None:
                report.damaged[run.folder] = damage
                verdict = Verdict.RUN
        if verdict == Verdict.RUN:
            todo.append(run)
            seen[run.folder] = rundir.record_stamp(logdir / run.folder)
        elif verdict == Verdict.CHANGED:
            changed.append((run, state.record))
        else:
            report.left_alone(verdict).append(run.folder)
            if state.claim is not None and not claims.claim_alive(state.claim):
                stale.append(claims.claim_path(logdir, run.experiment, run.name))
    if changed:
        raise ChangedConfig(logdir, changed)
    for path in stale:
        with contextlib.suppress(OSError):  # a folder that cannot be written: the sweep says so next
            claim = claims.try_claim(path)  # under the takeover lock, as any sweep takes one over
            if claim is not None:
                claims.release_claim(claim)
    return sorted(todo, key=lambda r: -r.cost()), seen


def recorded_otherwise(runs: list[RunPlan], logdir: Path, report: Report) -> None:
    """Of the runs this sweep left to another (a sweep, or a merge), those now recorded with another
    configuration or code than this sweep's: they are not its results, and are reported as changed."""
    mine = {run.folder: run for run in runs}
    for folder in list(report.elsewhere):
        run = mine.get(folder)
        record = rundir.read_record(logdir / folder) if run is not None else None
        if record is not None and not same_run(record, run):
            report.elsewhere.remove(folder)
            report.changed.append((run, record))


def same_run(record: dict[str, Any], run: RunPlan) -> bool:
    """Whether a record is of this planned run: the same configuration, made by the same user code."""
    return record.get("config_digest") == rundir.data_digest(run.config_data) and not code_changes(
        record.get("code"), code_record(run)
    )


def _verdict(state: rundir.RunState, run: RunPlan, force: bool, rerun_failed: bool) -> Verdict:
    same = state.record is not None and same_run(state.record, run)
    if force or state.state in (
        Status.MISSING,
        Status.UNFINISHED,
        Status.INTERRUPTED,
        Status.RUNNING,
        Status.DAMAGED,
    ):
        return Verdict.RUN
    if state.state in FINISHED:
        return Verdict.KEPT if same else Verdict.CHANGED
    return Verdict.KEPT_FAILED if same and not rerun_failed else Verdict.RUN


class ChangedConfig(LogDirError):
    """Finished runs that the spec now configures differently, or that other code made; nothing was
    run. The CLI words it with the commands that continue; this message is for other callers."""

    def __init__(self, logdir: Path, changed: list[tuple[RunPlan, dict[str, Any]]]):
        self.changed = changed
        lines = [
            f"{logdir / run.folder}: logged {what_changed(record, run)} ({describe_changes(record, run)})"
            for run, record in changed[:10]
        ]
        if len(changed) > 10:
            lines.append(f"... and {len(changed) - 10} more")
        lines.append(
            f"{len(changed)} finished run{'s' if len(changed) > 1 else ''} would be replaced; nothing "
            f"was run. Pass --force to rerun them as the spec and its code are now, or give another --logdir "
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
    def first_difference(group: list[tuple[RunPlan, dict[str, Any]]]) -> tuple[str, str, int]:
        """For the group's first run: what differs ('with a different configuration' or 'by
        different code'), the first difference ('key: old -> new'), and how many more there are."""
        run, record = group[0]
        diffs = changes(record, run)
        first, others = (diffs[0], len(diffs) - 1) if diffs else ("the trainer's configuration format", 0)
        return what_changed(record, run), first, others


def what_changed(record: dict[str, Any], run: RunPlan) -> str:
    """'with a different configuration', or 'by different code' when only the user code differs."""
    if record.get("config_digest") != rundir.data_digest(run.config_data):
        return "with a different configuration"
    return "by different code"


def changes(record: dict[str, Any], run: RunPlan) -> list[str]:
    """'key: old -> new' for every setting a run's recorded configuration has otherwise, then
    'code of WHERE (FILE): sha256 OLD -> NEW' for each piece of user code that differs."""
    settings = setting_changes(record.get("config"), run.config_data)
    return settings + code_changes(record.get("code"), code_record(run))


def describe_changes(record: dict[str, Any], run: RunPlan) -> str:
    diffs = changes(record, run)
    shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    return shown or "the trainer's configuration format"
