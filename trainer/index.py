"""The experiment-level HParams record of a log folder: one per folder, rebuilt from the runs' records.

TensorBoard takes the first experiment record it finds, so a log folder has exactly one, at its
root, declaring the union of the runs' hparams and the project's metrics. Without it TensorBoard
would guess the columns from every scalar tag, making each weight curve a column.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from trainer import rundir
from trainer.events import event_file_bytes
from trainer.hparams import declared_keys, experiment_pb

INDEX_FILE = "events.out.tfevents.0000000000.hparams-index"


def records(logdir: Path) -> list[dict[str, Any]]:
    """The record of every run under a log folder that has one, with its folder as 'folder'."""
    found = []
    for experiment, name in rundir.run_folders(logdir):
        record = rundir.read_record(logdir / experiment / name)
        if record is not None and isinstance(record.get("hparams"), dict):
            found.append({**record, "folder": f"{experiment}/{name}"})
    return found


def rebuild(logdir: Path, runs: list[dict[str, Any]] | None = None) -> tuple[int, list[str]]:
    """Write the folder's experiment record; returns how many runs it covers and the hparam columns."""
    runs = records(logdir) if runs is None else runs
    if not runs:
        (logdir / INDEX_FILE).unlink(missing_ok=True)
        return 0, []
    summary = experiment_pb(runs, description=f"{len(runs)} runs")
    rundir.write_atomic(logdir / INDEX_FILE, event_file_bytes([(summary, 0)], time.time()))
    return len(runs), declared_keys(runs)
