"""The experiment-level HParams record of a log folder: one per folder, rebuilt from the runs' records.

TensorBoard takes the first experiment record it finds, so a log folder has exactly one, at its
root, declaring the union of the runs' hparams and the project's metrics. Without it TensorBoard
would guess the columns from every scalar tag, making each weight curve a column.

The record depends on the runs' records only (its time is the latest run's end), so rebuilding an
unchanged folder leaves the file as it was, byte for byte.
"""
from __future__ import annotations

import datetime
import json
import os
import stat
from pathlib import Path
from typing import Any

from trainer import rundir
from trainer.events import event_file_bytes
from trainer.hparams import declared_keys, experiment_pb, is_hparam_value

INDEX_FILE = "events.out.tfevents.0000000000.hparams-index"
# Far more than any run's record; a bigger file is not one.
MAX_RECORD_BYTES = 16 * 1024 * 1024


def record_problem(record: Any) -> str | None:
    """Why a record.json's content is not a run record this project can index, or None."""
    if not isinstance(record, dict):
        return f"holds {type(record).__name__}, not a mapping"
    status = record.get("status")
    if status not in rundir.STATES:
        return f"status {status!r} is not one of {', '.join(rundir.STATES)}"
    hparams = record.get("hparams")
    if not isinstance(hparams, dict) or not hparams:
        return "has no hparams mapping"
    for key, value in hparams.items():
        if not is_hparam_value(value):
            return f"hparams[{key!r}] = {value!r}, of unsupported type {type(value).__name__!r}"
    for part in ("swept", "metrics"):
        if not isinstance(record.get(part, {}), dict):
            return f"{part} is {type(record[part]).__name__}, not a mapping"
    metrics = record.get("metrics", {})
    for key, value in metrics.items():
        if value is not None and (isinstance(value, str) or not is_hparam_value(value)):
            return f"metrics[{key!r}] = {value!r} is not a finite number"
    if not isinstance(record.get("config_digest", ""), str):
        return "config_digest is not a string"
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_record(run: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run's record as untrusted data: (record, None), (None, None) if it has none, or (None, why not)."""
    # Only a plain file is read: a symlink could point anywhere, a FIFO would block.
    path = run / rundir.RECORD
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"record.json cannot be read: {exc.strerror}"
    if stat.S_ISLNK(info.st_mode):
        return None, "record.json is a symlink (not followed)"
    if not stat.S_ISREG(info.st_mode):
        return None, "record.json is not a plain file"
    if info.st_size > MAX_RECORD_BYTES:
        return None, f"record.json is {info.st_size:,} bytes, too large for a run record"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_RECORD_BYTES + 1)
    except OSError as exc:
        return None, f"record.json cannot be read: {exc.strerror}"
    try:
        record = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"record.json is not valid JSON ({type(exc).__name__}: {str(exc)[:100]})"
    problem = record_problem(record)
    if problem is not None:
        return None, f"record.json is not a run record: {problem}"
    return record, None


def records(logdir: Path) -> list[dict[str, Any]]:
    """The record of every run under a log folder that has a valid one, with its folder as 'folder'."""
    found = []
    for experiment, name in rundir.run_folders(logdir):
        record, _ = read_record(logdir / experiment / name)
        if record is not None:
            found.append({**record, "folder": f"{experiment}/{name}"})
    return found


def _latest_end(runs: list[dict[str, Any]]) -> float:
    times = [0.0]
    for run in runs:
        try:
            times.append(datetime.datetime.fromisoformat(run["ended"]).timestamp())
        except (KeyError, TypeError, ValueError):
            continue
    return max(times)


def rebuild(logdir: Path, runs: list[dict[str, Any]] | None = None) -> tuple[int, list[str]]:
    """Write the folder's experiment record; returns how many runs it covers and the hparam columns."""
    runs = records(logdir) if runs is None else runs
    path = logdir / INDEX_FILE
    if not runs:
        path.unlink(missing_ok=True)
        return 0, []
    when = _latest_end(runs)
    summary = experiment_pb(runs, description=f"{len(runs)} runs", time_created=when)
    content = event_file_bytes([(summary, 0)], when)
    try:
        unchanged = path.read_bytes() == content
    except OSError:
        unchanged = False
    if not unchanged:
        rundir.write_atomic(path, content)
    return len(runs), declared_keys(runs)
