"""Run folders on disk: atomic records, run states, and damaged runs set aside (claims: trainer.run.claims).

A run folder `<logdir>/<experiment>/<run>/` holds config.yaml, one event file, traceback.txt when
the run raised, and record.json. A run counts as finished only once record.json exists; it is
written last, to a temporary file first and then renamed into place.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.core import untrusted
from trainer.core.status import Status
from trainer.run import claims
from trainer.spec import schema
from trainer.tensorboard.events import EVENTS_PREFIX
from trainer.tensorboard.hparams import is_hparam_value

RECORD = "record.json"
CONFIG = "config.yaml"
TRACEBACK = "traceback.txt"
CHECKPOINT = "model.pt"
BEST = "best.pt"  # the weights of the watched metric's best evaluation (log.checkpoint: best, both)
RESUME = "resume.pt"  # the state a stopped run goes on from (trainer.run.resuming)
# The folder of the seed-band runs that `index` derives from the runs (trainer.bands): never an
# experiment, whose names start with a letter or a digit, so never a run either.
BANDS = "_seeds"
RECORD_FORMAT = 1

# The states a record may hold or a folder be in (damaged and lost are verdicts, never recorded).
STATES = tuple(s for s in Status if s not in (Status.DAMAGED, Status.LOST))


def write_atomic(path: Path, content: str | bytes, durable: bool = True) -> None:
    """Write a file so that readers see the old content or the new, never a part. Without
    `durable`, the content may still be in memory: make_durable, later, makes it reach the disk."""
    tmp = _beside(path)
    try:
        _write(tmp, content, durable)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def holds(path: Path, content: bytes) -> bool:
    """Whether path is a plain file holding exactly `content` (read no further than its length:
    a symlink, a pipe or a bigger file holds something else)."""
    try:
        return untrusted.read_plain(path, len(content)) == content
    except untrusted.Refused:
        return False


def _beside(path: Path) -> Path:
    """A hidden temporary name beside path, which TensorBoard does not read as an event file (it
    reads every file whose name holds 'tfevents'), so that a writer killed mid-write shows nothing."""
    name = path.name.replace("tfevents", "tf-events")
    return path.with_name(f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


_TEMPORARY = re.compile(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp")


def remove_abandoned_temporaries(folder: Path) -> None:
    """Remove the temporary files (see write_atomic) that processes of this machine, killed while
    writing, left in a folder."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        found = _TEMPORARY.fullmatch(entry.name)
        if found and entry.is_file(follow_symlinks=False) and not claims.pid_alive(int(found.group(1))):
            Path(entry.path).unlink(missing_ok=True)


def _write(path: Path, content: str | bytes, durable: bool) -> None:
    with open(path, "wb") as f:
        f.write(content.encode("utf-8") if isinstance(content, str) else content)
        if durable:
            f.flush()
            os.fsync(f.fileno())


# Files made durable at once from which one syncfs replaces their fsyncs.
SYNCFS_FROM = 16


def make_durable(paths: list[Path]) -> None:
    """Everything written to these files reaches the disk. For many files on Linux, one syncfs per
    file system (a tenth of the time of an fsync per file, for a group's hundreds of files); else,
    or where it fails, an fsync of each."""
    devices: dict[int, Path] = {}
    for path in paths:
        devices.setdefault(os.stat(path).st_dev, path)
    # syncfs flushes everything written to the file system, by anyone: for a few files, fsyncs cost less.
    if len(paths) > SYNCFS_FROM and all(_syncfs(path) for path in devices.values()):
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(path: Path) -> bool:
    try:
        import ctypes

        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return syncfs(fd) == 0
    finally:
        os.close(fd)


def data_digest(data: dict[str, Any]) -> str:
    """A hash of everything in a configuration, as plain data (as config.yaml holds it), that
    changes what a run computes or logs (not its description, the engine that trains it, the time
    it may take, nor how its batches are loaded; nor a setting added later while unset)."""
    data = {key: value for key, value in data.items() if key != "description"}
    for key in schema.NOT_IDENTITY + schema.UNSET_NOT_IDENTITY:
        section, _, name = key.partition(".")
        values = data.get(section)
        if isinstance(values, dict) and name in values:
            if key in schema.NOT_IDENTITY or values[name] is None:
                data[section] = {k: v for k, v in values.items() if k != name}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# A bigger file is not a run's record. What makes a record big is its final weights, those of the
# parameters of at most log.max_elements elements, about 22 bytes each in JSON: 4 MiB holds some
# 190,000 of them. The comparison set's biggest record is 4.8 KB; a model whose 80,000 weights
# were all logged one curve each (max_elements: 100000) had not done 10 steps after an hour. Reading
# a record takes about ten times its size in memory, so the cap also bounds what a crafted one costs.
MAX_RECORD_BYTES = 4 * 1024 * 1024


def record_problem(record: Any) -> str | None:
    """Why a record.json's content is not a run record this project can index, or None."""
    if not isinstance(record, dict):
        return f"holds {type(record).__name__}, not a mapping"
    status = record.get("status")
    if status not in STATES:
        return f"status {status!r} is not one of {', '.join(STATES)}"
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
    # Names a reader joins to paths: only those this tool writes (a record may have been edited).
    for key, kind in (("experiment", "experiment"), ("run", "run")):
        problem = untrusted.name_problem(kind, record.get(key))
        if problem is not None:
            return problem
    for key in ("checkpoint", "best_checkpoint"):
        if record.get(key) is not None:
            problem = untrusted.name_problem("checkpoint", record[key])
            if problem is not None:
                return problem.replace("its checkpoint", f"its {key}", 1)
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_record(run: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run's record as untrusted data: (record, None), (None, None) if it has none, or (None, why not)."""
    try:
        data = untrusted.read_plain(run / RECORD, MAX_RECORD_BYTES)
    except untrusted.Refused as refused:
        return (None, None) if str(refused) == "is missing" else (None, f"record.json {refused}")
    try:
        record = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"record.json is not valid JSON ({type(exc).__name__}: {str(exc)[:100]})"
    problem = record_problem(record)
    if problem is not None:
        return None, f"record.json is not a run record: {problem}"
    return record, None


def read_record(folder: Path) -> dict[str, Any] | None:
    """A run's record, or None where there is none or it cannot be read as one."""
    return load_record(folder)[0]


def record_stamp(folder: Path) -> tuple[int, int] | None:
    """Tells one writing of a run's record from another (a rename gives a new inode), or None if absent."""
    try:
        info = (folder / RECORD).stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def write_record(folder: Path, record: dict[str, Any]) -> None:
    write_atomic(folder / RECORD, record_text(record))


def record_text(record: dict[str, Any]) -> str:
    """A record as strict JSON, a line per key (each value written by json's C encoder: indenting
    every level, which only its pure-Python encoder does, took a tenth of a batched run's time).

    JSON has no infinity or NaN: a value that is not finite (a metric of a run whose weights blew
    up) is written as null, and the record's last key, non_finite, names where that happened."""
    lines, found = [], []
    for key, value in record.items():
        try:
            text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        except ValueError:
            text = json.dumps(_finite(value, key, found), allow_nan=False, separators=(",", ":"))
        lines.append(f"  {json.dumps(key)}: {text}")
    if found:
        shown = found[:MAX_NON_FINITE] + (
            [f"... and {len(found) - MAX_NON_FINITE} more"] if len(found) > MAX_NON_FINITE else []
        )
        lines.append(f'  "non_finite": {json.dumps(shown)}')
    return "{\n" + ",\n".join(lines) + "\n}\n"


# The places a record names where its values were not finite, at the most.
MAX_NON_FINITE = 20


def _finite(value: Any, path: str, found: list[str]) -> Any:
    """value with every float that is not finite replaced by None; found gets each one's place."""
    if isinstance(value, float) and not math.isfinite(value):
        found.append(path)
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{path}.{k}", found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


@dataclass
class RunState:
    """What is on disk for one run."""

    state: str
    record: dict[str, Any] | None
    claim: dict[str, Any] | None = None
    problem: str | None = None  # why a record that is there cannot be read (the run is damaged)


def state_of(logdir: Path, experiment: str, name: str) -> RunState:
    folder = logdir / experiment / name
    record, problem = load_record(folder)
    claim = claims.read_claim(claims.claim_path(logdir, experiment, name))
    if problem is not None:
        return RunState(Status.DAMAGED, None, claim, problem)
    if record is not None:
        status = record["status"]
        return RunState(status if status in STATES else Status.FAILED, record, claim)
    if claim is not None and claims.claim_alive(claim):
        return RunState(Status.RUNNING, None, claim)
    if folder.exists():
        return RunState(Status.UNFINISHED, None, claim)
    return RunState(Status.MISSING, None, claim)


def run_folders(logdir: Path) -> list[tuple[str, str]]:
    """(experiment, run) for every run folder under a log folder, sorted; a symlink to a folder is
    no run folder (it could lead anywhere)."""
    return [
        (experiment, run)
        for experiment in untrusted.real_folders(logdir)
        if experiment[0] not in "._"
        for run in untrusted.real_folders(logdir / experiment)
        if not run.startswith(".")
    ]


# --- claims -----------------------------------------------------------------------------------
#
def stage_record(folder: Path, record: dict[str, Any]) -> Path:
    """Write a run's record, with the sizes of its files, beside its place (not yet durable);
    commit_record moves it into place. The run's files must be complete."""
    record["files"] = file_sizes(folder)
    staged = _beside(folder / RECORD)
    try:
        _write(staged, record_text(record), durable=False)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged


def commit_record(
    folder: Path, record: dict[str, Any], claim: claims.Claim | None = None, staged: Path | None = None
) -> None:
    """Write a run's record, with the sizes of its files, if the run is still this process's to write.

    A record is written last: the run's files and the record reach the disk before the record is
    moved into place, so a record never names files that a crash could take back. A record staged
    (stage_record) and made durable (make_durable, with the run's files) is moved into place as it is.
    The ownership check and the move happen under the claim's takeover lock, so no takeover can
    come between them. Raises ClaimLost (writing nothing) when another sweep holds the run now.
    """
    if staged is None:
        staged = stage_record(folder, record)
        try:
            make_durable([staged, *(folder / name for name in record["files"])])
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
    try:
        if claim is None:
            os.replace(staged, folder / RECORD)
            return
        lock = claims.lock_path(Path(claim.path))
        for _ in range(500):  # a takeover holds the lock for milliseconds
            if claims.take_lock(lock):
                break
            time.sleep(0.01)
        else:
            raise claims.ClaimLost(f"{claim.path}: its takeover lock is held by another sweep")
        try:
            if not claims.owns(claim):
                raise claims.ClaimLost(f"{claim.path}: claimed by another sweep")
            os.replace(staged, folder / RECORD)
        finally:
            lock.unlink(missing_ok=True)
    finally:
        staged.unlink(missing_ok=True)  # left only where it was not moved into place


def file_sizes(folder: Path) -> dict[str, int]:
    """name -> size of a run folder's plain files (its record and hidden files left out)."""
    sizes = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return sizes
    for entry in entries:
        if entry.name.startswith(".") or entry.name == RECORD:
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return dict(sorted(sizes.items()))


DAMAGED_FOLDER = ".damaged"


def set_aside(logdir: Path, experiment: str, name: str, reason: str) -> str:
    """Move a damaged run's folder to <experiment>/.damaged/<run>.<n>/ with a note saying why;
    its event files are renamed (tfevents -> tf-events) so that TensorBoard does not list them."""
    folder = logdir / experiment / name
    aside = logdir / experiment / DAMAGED_FOLDER
    aside.mkdir(exist_ok=True)
    for n in itertools.count(1):
        target = aside / f"{name}.{n}"
        if not os.path.lexists(target):
            break
    folder.rename(target)
    for item in target.iterdir():
        if item.name.startswith(EVENTS_PREFIX):
            item.rename(target / item.name.replace("tfevents", "tf-events", 1))
    (target / "DAMAGED.txt").write_text(
        f"{experiment}/{name}: moved aside by a sweep on {time.ctime()} before running it again: {reason}\n",
        encoding="utf-8",
    )
    return str(target.relative_to(logdir))
