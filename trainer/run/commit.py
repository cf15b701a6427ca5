"""A run's record written once its files are complete: staged, made durable with its files, and
moved into place while its claim is still this sweep's (trainer.run.rundir.commit_record); the one
Summary a sweep keeps per run; and the record of a run that could not write its own."""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.core.status import Status
from trainer.run import rundir
from trainer.run.claims import Claim, ClaimLost, owns
from trainer.run.record import RunRecord, base_record, now
from trainer.spec.plan import RunPlan
from trainer.tensorboard.endings import end_killed_run

# Errors of the file system itself: no run can succeed until someone frees space or fixes rights.
LOGDIR_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
# A run whose claim another sweep took over: its result was discarded, the other sweep's stands.
LOST = Status.LOST


@dataclass
class Summary:
    """The one line a sweep keeps per run."""

    folder: str
    status: str
    metrics: dict[str, Any]
    duration: float
    error: str | None = None
    logdir_fault: bool = False  # the log folder itself is unusable: stop the sweep
    steps_done: int | None = None  # as its record says


def claim_allows(claim: Claim | None) -> bool:
    """Whether the run folder is this sweep's to go on in (no claim: a run of its own process)."""
    return claim is None or owns(claim)


@dataclass
class Unrecorded:
    """A run whose files are complete, its record still to write."""

    folder: Path
    record: RunRecord
    claim: Claim | None = None
    logdir_fault: bool = False


def finish(
    folder: Path,
    record: RunRecord,
    clock: float,
    logdir_fault: bool = False,
    claim: Claim | None = None,
) -> Summary:
    return finish_all([Unrecorded(folder, record, claim, logdir_fault)], clock)[0]


def finish_all(ended: list[Unrecorded], clock: float) -> list[Summary]:
    """The records of runs whose files are complete, stamped with their end and written."""
    duration = round(time.monotonic() - clock, 3)
    for run in ended:
        run.record.update(ended=now(), duration_s=duration)
    return commit_all(ended)


def commit(
    folder: Path, record: RunRecord, logdir_fault: bool = False, claim: Claim | None = None
) -> Summary:
    """Write the record of a run whose files are complete (see commit_all)."""
    return commit_all([Unrecorded(folder, record, claim, logdir_fault)])[0]


def commit_all(ended: list[Unrecorded]) -> list[Summary]:
    """Write the records of runs whose files are complete: each staged, all made durable at once,
    then each moved into place while its claim is still this sweep's (see rundir.commit_record).
    Each summary says what became of its run (lost to another sweep, or unfinished when its record
    could not be written)."""
    staged: list[Path | OSError] = []
    for run in ended:
        try:
            staged.append(rundir.stage_record(run.folder, run.record))
        except OSError as exc:
            staged.append(exc)
    ready = [(run, path) for run, path in zip(ended, staged) if isinstance(path, Path)]
    try:
        rundir.make_durable(
            [path for _, path in ready]
            + [run.folder / name for run, _ in ready for name in run.record["files"]]
        )
    except OSError as exc:
        for _, path in ready:
            path.unlink(missing_ok=True)
        staged = [exc for _ in staged]
    return [_commit(run, path) for run, path in zip(ended, staged)]


def _commit(run: Unrecorded, staged: Path | OSError) -> Summary:
    folder, record, logdir_fault = run.folder, run.record, run.logdir_fault
    duration = record.get("duration_s") or 0.0
    try:
        if isinstance(staged, OSError):
            raise staged
        rundir.commit_record(folder, record, run.claim, staged)
    except ClaimLost:
        return Summary(
            f"{record['experiment']}/{record['run']}",
            LOST,
            {},
            duration,
            "another sweep took the run over while this one was paused; this result was discarded",
        )
    except OSError as exc:  # with no record the run counts as unfinished: the next sweep runs it again
        logdir_fault = logdir_fault or exc.errno in LOGDIR_ERRNOS
        record["error"] = record["error"] or f"cannot write {folder / rundir.RECORD}: {exc.strerror}"
        record["status"] = Status.INTERRUPTED if logdir_fault else Status.FAILED
    return Summary(
        f"{record['experiment']}/{record['run']}",
        record["status"],
        record["metrics"],
        duration,
        record["error"],
        logdir_fault,
        record.get("steps_done"),
    )


def record_ended(
    logdir: Path,
    run: RunPlan,
    status: str,
    error: str,
    claim: Claim | None = None,
    steps_done: int | None = None,
    seconds: float | None = None,
) -> Summary:
    """Write the record (and a session end) of a run that could not write its own: its worker
    died, or the sweep stopped it before its results came back. `steps_done` and `seconds`, where
    the sweep knows them, are what the run reached: the step of its last checkpoint (where a rerun
    goes on), and its time, its earlier attempts' included."""
    folder = logdir / run.folder
    record = base_record(run, status, error)
    if steps_done is not None:
        record["steps_done"] = steps_done
    if seconds is not None:
        record.update(ended=now(), duration_s=round(seconds, 3))
    if not claim_allows(claim):
        return Summary(run.folder, LOST, {}, 0.0, "taken over by another sweep")
    try:  # the session end, so TensorBoard agrees
        folder.mkdir(parents=True, exist_ok=True)
        end_killed_run(folder, record["hparams"], status)
    except OSError:
        pass
    try:
        rundir.commit_record(folder, record, claim)
    except ClaimLost:
        return Summary(run.folder, LOST, {}, 0.0, "taken over by another sweep")
    except OSError as exc:
        error = f"{error}; and its record could not be written: {exc.strerror}"
    return Summary(run.folder, status, {}, record.get("duration_s") or 0.0, error, steps_done=steps_done)
