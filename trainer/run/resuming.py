"""A run's checkpoints while it trains (resume.pt in its folder), and going on from the last one
after the run stopped: Ctrl-C, SIGTERM, a killed process, a full disk.

The checkpoint is written atomically and made durable, so a run killed while writing one finds the
one before. A rerun goes on from it only where it is of this run: the same configuration and the
same user code (their digests are in it), a step before the run's end, its event files there. It
keeps the run's files; the event file the killed process was writing is cut back to its last whole
record, and the resumed run logs into a new one that purges what was logged past the checkpoint
(trainer.tensorboard.sink). Otherwise the run starts over, and its record says why.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.core import untrusted
from trainer.run import rundir
from trainer.run.record import changed_code, code_digests
from trainer.spec.plan import RunPlan
from trainer.tensorboard.endings import cut_back
from trainer.tensorboard.events import event_files

if TYPE_CHECKING:  # the sweep's own process never imports torch; the run's worker does
    from trainer.training.resume import Checkpoints, Resumed

# What a stopped run's folder holds that its resumed run does not go on with.
LEFT_BEHIND = (rundir.RECORD, rundir.TRACEBACK)


def identity(record: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says it is of: the configuration's digest and each piece of code's."""
    return {"config_digest": record["config_digest"], "code": code_digests(record.get("code"))}


def checkpoints(
    run: RunPlan,
    folder: Path,
    record: dict[str, Any],
    clock: float,
    then: Callable[[Path], None] | None = None,
) -> Checkpoints:
    """The run's checkpoints, as log.checkpoint_every asks, into its folder; `clock`: when the run
    began, by time.monotonic (its earlier attempts' time taken off); `then` is told the folder after
    each (the Ray executor sends the folder to the sweep's machine)."""
    from trainer.training.resume import Checkpoints

    path = folder / rundir.RESUME

    def save(data: bytes) -> None:
        rundir.write_atomic(path, data, durable=True)
        if then is not None:
            then(folder)

    return Checkpoints(
        run.config.log.checkpoint_every,
        save,
        identity(record),
        lambda: time.monotonic() - clock,
    )


def usable(run: RunPlan, folder: Path, record: dict[str, Any]) -> tuple[Resumed | None, str | None]:
    """The state to go on from, where the run folder holds a checkpoint of this run; else None and,
    where it holds one that cannot be used, why."""
    from trainer.training.resume import read, resumed

    path = folder / rundir.RESUME
    if not os.path.lexists(path):
        return None, None
    try:
        with untrusted.open_plain(path) as f:
            found = read(f.read())
    except untrusted.Refused as refused:
        return None, f"its checkpoint {rundir.RESUME} {refused}"
    except (OSError, ValueError) as exc:
        return None, f"its checkpoint {rundir.RESUME} could not be used: {exc}"
    mine, theirs = identity(record), found.get("identity") or {}
    if theirs.get("config_digest") != mine["config_digest"]:
        return None, f"its checkpoint {rundir.RESUME} is of another configuration"
    changed = changed_code(
        {w: {"sha256": d} for w, d in (theirs.get("code") or {}).items()}, record.get("code")
    )
    if changed or set(theirs.get("code") or {}) != set(mine["code"]):
        what = f" ({changed[0][0]}: sha256 {changed[0][1]} -> {changed[0][2]})" if changed else ""
        return None, f"its checkpoint {rundir.RESUME} was taken by other code{what}"
    if not isinstance(found.get("step"), int) or not 0 < found["step"] < run.steps:
        return None, f"its checkpoint {rundir.RESUME} is of no step of this run's {run.steps:,}"
    names = event_files(folder)
    if not names:
        return None, f"its checkpoint {rundir.RESUME} has no event file beside it"
    for name in names:  # going on appends to the last one and cuts it back: each must be the run's own
        if not stat.S_ISREG((folder / name).lstat().st_mode):
            return None, f"its event file {name} is not a plain file"
    try:
        return resumed(found), None
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"its checkpoint {rundir.RESUME} could not be used: {type(exc).__name__}: {exc}"


def reopen(folder: Path) -> None:
    """A stopped run's folder, ready to go on: its old record and traceback gone, its last event file
    cut back to whole records."""
    for name in LEFT_BEHIND:
        (folder / name).unlink(missing_ok=True)
    names = event_files(folder)
    if names:
        cut_back(folder / names[-1])


def finished(folder: Path) -> None:
    """A run that reached its end needs its checkpoint no more."""
    (folder / rundir.RESUME).unlink(missing_ok=True)
