"""Integrity of finished runs: is what a run's record promises still on disk, and intact?

Two depths. `quick` looks only at the folder's listing: one event file, config.yaml, the checkpoint
where the record names one, and each file the size the record wrote down for it. It costs one
directory listing per run, so a rerun does it for every run it would skip. `full` also reads every
file: each event file record's CRCs, the configuration against the record's digest, and is what
`status --verify` and `merge` do.

A damaged run is one whose record says it finished but whose files no longer back it up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from tensorboard.compat.proto import event_pb2

from trainer.core import guards, untrusted
from trainer.core.status import FINISHED, Status
from trainer.run import rundir
from trainer.tensorboard.events import EVENTS_PREFIX, FileRecords, event_files
from trainer.tensorboard.hparams import SESSION_START_INFO_TAG, session_hparams

DAMAGED = Status.DAMAGED
CHECKED = FINISHED  # results that a rerun keeps and a merge copies


def quick(folder: Path, record: dict[str, Any]) -> str | None:
    """Why a finished run's files do not match its record, from the folder's listing only; or None."""
    place = misplaced(folder, record)
    if place is not None:
        return place
    try:
        found = {e.name: e for e in os.scandir(folder)}
    except OSError as exc:
        return f"its folder cannot be listed: {exc.strerror}"
    events = sorted(n for n in found if n.startswith(EVENTS_PREFIX))
    if not events:
        return "its event file is missing"
    sizes = record.get("files")
    if len(events) > 1 and not (isinstance(sizes, dict) and set(events) <= set(sizes)):
        return f"it holds {len(events)} event files, where its record lists one"
    if rundir.CONFIG not in found:
        return f"its {rundir.CONFIG} is missing"
    for key in ("checkpoint", "best_checkpoint"):
        checkpoint = record.get(key)
        if checkpoint is not None and (not isinstance(checkpoint, str) or checkpoint not in found):
            return f"its checkpoint {checkpoint!r} is missing"
    if sizes is None:
        return None  # recorded before files were listed in records
    if not isinstance(sizes, dict):
        return "its record's list of files is not a mapping"
    for name, size in sizes.items():
        entry = found.get(name)
        if entry is None:
            return f"{name} is missing"
        try:
            if not entry.is_file(follow_symlinks=False):
                return f"{name} is not a plain file"
            actual = entry.stat(follow_symlinks=False).st_size
        except OSError as exc:
            return f"{name} cannot be looked at: {exc.strerror}"
        if actual != size:
            return (
                f"{name} is {actual:,} bytes, the record says {size:,} (cut short or rewritten)"
                if isinstance(size, int)
                else f"the record's size of {name} is not a number"
            )
    unlisted = [name for name in events if name not in sizes]
    if unlisted:
        return f"its event file {unlisted[0]} is not one its record lists"
    return None


def misplaced(folder: Path, record: dict[str, Any]) -> str | None:
    """Why a record is of another run than its folder's (a run folder moved or copied by hand); or None."""
    experiment, run = record.get("experiment"), record.get("run")
    if (experiment, run) == (folder.parent.name, folder.name):
        return None
    return (
        f"its record is of the run {experiment}/{run}, not of {folder.parent.name}/{folder.name}: "
        f"a run folder moved or copied by hand (move it back, or let `merge` copy runs)"
    )


def full(folder: Path, record: dict[str, Any]) -> str | None:
    """quick(), then every event record's CRCs and the configuration against the record's digest."""
    problem = quick(folder, record)
    if problem is not None:
        return problem
    for name in event_files(folder):
        problem = event_file_problem(folder / name, record.get("hparams"))
        if problem is not None:
            return f"{name}: {problem}"
    return record_config_problem(record) or config_problem(
        folder / rundir.CONFIG, record.get("config_digest")
    )


def record_config_problem(record: dict[str, Any]) -> str | None:
    """Whether the configuration a record holds is still the one its digest was made from (both
    are written together; an edit of one alone is not the run's)."""
    config, digest = record.get("config"), record.get("config_digest")
    if not isinstance(digest, str):
        return None  # nothing to compare against
    if not isinstance(config, dict):
        return "its record holds no configuration"
    if rundir.data_digest(config) != digest:
        return "its record's configuration does not match its digest: the record was edited after the run"
    return None


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser where PyYAML has it
# A run's config.yaml holds what its spec resolved to: a spec is at most guards.MAX_SPEC_BYTES.
MAX_CONFIG_BYTES = 4 * guards.MAX_SPEC_BYTES


def event_file_problem(path: Path, hparams: Any = None) -> str | None:
    """Why an event file is not whole (a record cut short, a bad checksum), or, given the run's
    hparams, not the run's own (its session names other hparams: another run's file); or None."""
    records = FileRecords(path, verify=True)
    session = None
    tag = SESSION_START_INFO_TAG.encode()
    for data, start, end in records:
        if session is None and isinstance(hparams, dict) and data.find(tag, start, end) >= 0:
            session = session_hparams(event_pb2.Event.FromString(data[start:end]).summary)
    if records.problem is not None:
        return records.problem
    differing = (
        [k for k in sorted({*session, *hparams}) if not _same(session.get(k), hparams.get(k))]
        if session
        else []
    )
    if differing:
        key = differing[0]
        return (
            f"its session holds {key} = {session.get(key)!r} where the record says {hparams.get(key)!r}: "
            f"it is another run's event file"
        )
    return None


def _same(a: Any, b: Any) -> bool:
    """One hparam value, whatever its type: another version may have written 1 as '1'."""
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def config_problem(path: Path, digest: Any) -> str | None:
    """Whether config.yaml still holds the configuration the record's digest was made from."""
    try:
        text = untrusted.read_plain(path, MAX_CONFIG_BYTES).decode("utf-8")
        # A run's config.yaml never holds an alias; one in a folder from elsewhere could expand to
        # more than memory holds once the configuration is hashed (a "billion laughs").
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=_LOADER)):
            return f"{rundir.CONFIG} holds YAML aliases, which no run's configuration does"
        data = yaml.load(text, Loader=_LOADER)
    except untrusted.Refused as refused:
        return f"{rundir.CONFIG} {refused}"
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        return f"{rundir.CONFIG} cannot be read ({type(exc).__name__})"
    if not isinstance(data, dict):
        return f"{rundir.CONFIG} does not hold a configuration"
    if not isinstance(digest, str):
        return None  # nothing to compare against
    if rundir.data_digest(data) != digest:
        return f"{rundir.CONFIG} does not match the record's configuration digest"
    return None


def check(folder: Path, record: dict[str, Any] | None, deep: bool) -> str | None:
    """The damage of a run whose record says it finished; None for other runs and intact ones."""
    if record is None or record.get("status") not in CHECKED:
        return None
    return full(folder, record) if deep else quick(folder, record)
