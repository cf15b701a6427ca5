"""Run folders on disk: atomic records, run states, and claims that keep two sweeps off one run.

A run folder `<logdir>/<experiment>/<run>/` holds config.yaml, one event file, traceback.txt when
the run raised, and record.json. A run counts as finished only once record.json exists; it is
written last, to a temporary file first and then renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.hparams import is_hparam_value
from trainer.schema import Config, as_data

RECORD = "record.json"
CONFIG = "config.yaml"
TRACEBACK = "traceback.txt"
CHECKPOINT = "model.pt"
CLAIMS = ".claims"
RECORD_FORMAT = 1
# A claim whose owner has not touched it for this long is taken over, wherever the owner runs.
CLAIM_STALE_AFTER = 60.0
HEARTBEAT_EVERY = 10.0

FINISHED = ("complete", "diverged")       # results worth keeping
STATES = ("complete", "diverged", "failed", "interrupted", "unfinished", "running", "missing")


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def config_digest(config: Config) -> str:
    """A hash of everything that changes what a run computes or logs (not its description)."""
    data = as_data(config)
    data.pop("description", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# Far more than any run's record; a bigger file is not one.
MAX_RECORD_BYTES = 16 * 1024 * 1024


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
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_record(run: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run's record as untrusted data: (record, None), (None, None) if it has none, or (None, why not)."""
    # Only a plain file is read: a symlink could point anywhere, a FIFO would block.
    path = run / RECORD
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
    write_atomic(folder / RECORD, json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n")


@dataclass
class RunState:
    """What is on disk for one run."""

    state: str
    record: dict[str, Any] | None
    claim: dict[str, Any] | None = None


def state_of(logdir: Path, experiment: str, name: str) -> RunState:
    folder = logdir / experiment / name
    record = read_record(folder)
    claim = read_claim(claim_path(logdir, experiment, name))
    if record is not None:
        status = record["status"]
        return RunState(status if status in STATES else "failed", record, claim)
    if claim is not None and claim_alive(claim):
        return RunState("running", None, claim)
    if folder.exists():
        return RunState("unfinished", None, claim)
    return RunState("missing", None, claim)


def run_folders(logdir: Path) -> list[tuple[str, str]]:
    """(experiment, run) for every run folder under a log folder, sorted."""
    found = []
    if not logdir.is_dir():
        return found
    for experiment in sorted(p for p in logdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for run in sorted(p for p in experiment.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found.append((experiment.name, run.name))
    return found


# --- claims -----------------------------------------------------------------------------------


def claim_path(logdir: Path, experiment: str, name: str) -> Path:
    return logdir / experiment / CLAIMS / name


def read_claim(path: Path) -> dict[str, Any] | None:
    try:
        claim = json.loads(path.read_text(encoding="utf-8"))
        claim["age"] = time.time() - path.stat().st_mtime
        return claim
    except (OSError, ValueError, TypeError):
        return None


def claim_alive(claim: dict[str, Any]) -> bool:
    """Whether the process that made a claim may still be working on it."""
    if claim.get("age", 0.0) > CLAIM_STALE_AFTER:
        return False
    if claim.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(claim.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def try_claim(path: Path) -> bool:
    """Claim a run for this process; a claim left by a dead process is taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if _create_claim(path):
        return True
    claim = read_claim(path)
    if claim is not None and claim_alive(claim) or claim is None and _younger_than(path, 5.0):
        return False
    # Only the holder of the takeover lock may remove a stale claim, so two sweeps that both
    # found it stale cannot both take it; the lock's holder looks again before removing it.
    lock = path.with_name(f".{path.name}.takeover")
    if lock.exists() and not _younger_than(lock, 30.0):
        lock.unlink(missing_ok=True)          # left by a process that died while taking over
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    try:
        claim = read_claim(path)
        if claim is not None and claim_alive(claim):
            return False
        path.unlink(missing_ok=True)
        return _create_claim(path)
    finally:
        lock.unlink(missing_ok=True)


def _create_claim(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, f)
    return True


def _younger_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


def release_claim(path: Path) -> None:
    path.unlink(missing_ok=True)


def touch_claims(paths: list[Path]) -> None:
    """The heartbeat: claims this process holds stay fresh while it works."""
    for path in paths:
        try:
            os.utime(path)
        except OSError:
            pass
