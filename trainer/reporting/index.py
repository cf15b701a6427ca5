"""The experiment-level HParams record of a log folder: one per folder, rebuilt from the runs' records.

TensorBoard takes the first experiment record it finds, so a log folder has exactly one, at its
root, declaring the union of the runs' hparams and the project's metrics. Without it TensorBoard
would guess the columns from every scalar tag, making each weight curve a column.

The record depends on the runs' records only (its time is the latest run's end), so rebuilding an
unchanged folder leaves the file as it was, byte for byte.
"""

from __future__ import annotations

import datetime
import errno
from pathlib import Path
from typing import Any

from trainer.core.errors import UserError
from trainer.core.strict import suggest
from trainer.reporting import bands
from trainer.run import rundir
from trainer.tensorboard.events import event_file_bytes
from trainer.tensorboard.hparams import declared_keys, experiment_pb

INDEX_FILE = "events.out.tfevents.0000000000.hparams-index"


# What a record holds that no reader of many records uses, and that can be most of its size: the
# final weights (up to log.max_elements of each parameter) and the sizes of its files.
UNREAD = ("final_weights", "files")


def records(logdir: Path) -> list[dict[str, Any]]:
    """The record of every run under a log folder that has a valid one, with its folder as 'folder'
    (and without what UNREAD names: each is read, cut down and let go before the next)."""
    found = []
    for experiment, name in rundir.run_folders(logdir):
        record, _ = rundir.load_record(logdir / experiment / name)
        if record is not None:
            kept = {k: v for k, v in record.items() if k not in UNREAD}
            found.append({**kept, "folder": f"{experiment}/{name}"})
    return found


def _focused(runs: list[dict[str, Any]], focus: list[str]) -> list[dict[str, Any]]:
    known = sorted({run.get("experiment", "") for run in runs})
    unknown = [name for name in focus if name not in known]
    if unknown:
        raise UserError(
            [
                f"--focus {name}: no experiment of that name{suggest(name, known)}; the log folder holds "
                f"{', '.join(known) or 'no runs'}"
                for name in unknown
            ]
        )
    return [run for run in runs if run.get("experiment") in focus]


def _latest_end(runs: list[dict[str, Any]]) -> float:
    times = [0.0]
    for run in runs:
        try:
            times.append(datetime.datetime.fromisoformat(run["ended"]).timestamp())
        except (KeyError, TypeError, ValueError):
            continue
    return max(times)


def rebuild(
    logdir: Path, runs: list[dict[str, Any]] | None = None, focus: list[str] = ()
) -> tuple[int, list[str]]:
    """Write the folder's experiment record; returns how many runs it covers and the hparam columns.

    With `focus`, the columns are those of these experiments' runs only: a folder that mixes a
    classifier with regressions declares by default only the metrics every run has, so the
    classifier's validation accuracy becomes a column when it is in focus. The other runs still
    show, with the columns they share."""
    runs = records(logdir) if runs is None else runs
    everyone = runs
    if focus:
        runs = _focused(runs, focus)
    path = logdir / INDEX_FILE
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(
            errno.EISDIR,
            "is a folder, where the log folder's HParams record belongs; move it away",
            str(path),
        )
    rundir.remove_abandoned_temporaries(logdir)  # an index rebuild killed before its rename
    bands.rebuild(logdir, everyone, _latest_end(everyone))
    if not runs:
        path.unlink(missing_ok=True)
        return 0, []
    when = _latest_end(runs)
    keys = declared_keys(runs)
    summary = experiment_pb(runs, description=f"{len(runs)} runs", time_created=when, keys=keys)
    content = event_file_bytes([(summary, 0)], when)
    if not rundir.holds(path, content):
        rundir.write_atomic(path, content)
    return len(runs), keys
