"""Session ends for runs that could not write their own (a worker killed, a run that raised), so
that TensorBoard lists each run with its real status."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2

from trainer.core import untrusted
from trainer.tensorboard.events import EventFile, FileRecords, event_files, frame, valid_length
from trainer.tensorboard.hparams import SESSION_START_INFO_TAG, session_end_pb, session_start_pb


def end_session(folder: Path, hparams: dict[str, Any], status: str, suffix: str = "") -> None:
    """Give a run that could not finish its own event file a session end (and a start, if it never
    wrote one), in an event file of its own."""
    started = any(p.stat().st_size > 0 for p in folder.glob("events.out.tfevents.*"))
    events = EventFile(folder, suffix)
    try:
        now = time.time()
        if not started:
            events.write_summary(session_start_pb(hparams, now), 0, now)
        events.write_summary(session_end_pb(status, now), 0, now)
    finally:
        events.close()


def end_killed_run(folder: Path, hparams: dict[str, Any], status: str) -> None:
    """Close a killed worker's event file with a session end, keeping the run's event files: the
    last one is cut back to its last whole record (the worker may have died mid-write), then
    appended to. A run killed before its event file began gets one."""
    names = event_files(folder)
    if not names:
        end_session(folder, hparams, status)
        return
    now = time.time()
    tag = SESSION_START_INFO_TAG.encode()
    started = any(data.find(tag, start, end) >= 0 for data, start, end in FileRecords(folder / names[0]))
    path = folder / names[-1]
    length = cut_back(path)
    with untrusted.open_plain(path, update=True) as f:
        f.seek(length)
        records = [] if started else [session_start_pb(hparams, now)]
        records.append(session_end_pb(status, now))
        f.write(
            b"".join(
                frame(event_pb2.Event(summary=s, step=0, wall_time=now).SerializeToString()) for s in records
            )
        )


def cut_back(path: Path) -> int:
    """Cut an event file back to its last whole record (a writer killed mid-write leaves part of
    one); its length now."""
    length, _ = valid_length(path)
    with untrusted.open_plain(path, update=True) as f:  # never a file a symlink leads to
        f.truncate(length)
    return length
