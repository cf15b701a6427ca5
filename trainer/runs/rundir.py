"""Run folders on disk: atomic records, run states, and claims that keep two sweeps off one run.

A run folder `<logdir>/<experiment>/<run>/` holds config.yaml, one event file, traceback.txt when
the run raised, and record.json. A run counts as finished only once record.json exists; it is
written last, to a temporary file first and then renamed into place.
"""

from __future__ import annotations

import functools
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

from trainer.core.status import Status
from trainer.tensorboard.hparams import is_hparam_value

RECORD = "record.json"
CONFIG = "config.yaml"
TRACEBACK = "traceback.txt"
CHECKPOINT = "model.pt"
CLAIMS = ".claims"
# The folder of the seed-band runs that `index` derives from the runs (trainer.bands): never an
# experiment, whose names start with a letter or a digit, so never a run either.
BANDS = "_seeds"
RECORD_FORMAT = 1
# A claim whose owner has not touched it for this long is taken over, wherever the owner runs.
CLAIM_STALE_AFTER = 60.0
HEARTBEAT_EVERY = 10.0

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


def _beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


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
    changes what a run computes or logs (not its description, nor the engine that trains it)."""
    data = {key: value for key, value in data.items() if key != "description"}
    if isinstance(data.get("train"), dict):  # both engines compute the same run
        data["train"] = {key: value for key, value in data["train"].items() if key != "engine"}
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
    write_atomic(folder / RECORD, record_text(record))


def record_text(record: dict[str, Any]) -> str:
    """A record as JSON, a line per key (each value written by json's C encoder: indenting every
    level, which only its pure-Python encoder does, took a tenth of a batched run's time)."""
    lines = [
        f"  {json.dumps(key)}: {json.dumps(value, allow_nan=False, separators=(',', ':'))}"
        for key, value in record.items()
    ]
    return "{\n" + ",\n".join(lines) + "\n}\n"


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
        return RunState(status if status in STATES else Status.FAILED, record, claim)
    if claim is not None and claim_alive(claim):
        return RunState(Status.RUNNING, None, claim)
    if folder.exists():
        return RunState(Status.UNFINISHED, None, claim)
    return RunState(Status.MISSING, None, claim)


def run_folders(logdir: Path) -> list[tuple[str, str]]:
    """(experiment, run) for every run folder under a log folder, sorted."""
    found = []
    if not logdir.is_dir():
        return found
    for experiment in sorted(p for p in logdir.iterdir() if p.is_dir() and p.name[0] not in "._"):
        for run in sorted(p for p in experiment.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found.append((experiment.name, run.name))
    return found


# --- claims -----------------------------------------------------------------------------------
#
# A claim is a file <experiment>/.claims/<run> naming the process that runs the run, with a token
# of its own. On the same host a claim is kept while its process lives, however old it is (a sweep
# paused by SIGSTOP, a laptop asleep, a frozen VM), and is taken over once the process is gone. A
# claim from another host is judged by its heartbeat: not touched for CLAIM_STALE_AFTER seconds, it
# is taken over. The owner checks its token under the takeover lock before it writes the run's
# record (see commit_record), so a sweep that lost its claim discards its result instead of writing
# over the new owner's folder.


@dataclass(frozen=True)
class Claim:
    """A claim this process holds: where it is, and the token that tells it from a later one."""

    path: str
    token: str


class ClaimLost(Exception):
    """The run was claimed by another sweep meanwhile: this result must not be written."""


def claim_path(logdir: Path, experiment: str, name: str) -> Path:
    return logdir / experiment / CLAIMS / name


def read_claim(path: Path) -> dict[str, Any] | None:
    try:
        claim = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(claim, dict):
            return None
        claim["age"] = time.time() - path.stat().st_mtime
        return claim
    except (OSError, ValueError, TypeError, UnicodeDecodeError):
        return None


def process_start(pid: int) -> str | None:
    """When a process started, in the kernel's clock ticks (Linux); tells a pid's reuse from its owner."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def _own_start(pid: int) -> str | None:
    """process_start of this process (pid as the key: a forked child is another process)."""
    return process_start(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid exists on this machine (one this process may not signal,
    or a pid it cannot ask about, counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


def claim_alive(claim: dict[str, Any]) -> bool:
    """Whether the process that made a claim may still be working on it."""
    if claim.get("host") != socket.gethostname():
        return claim.get("age", 0.0) <= CLAIM_STALE_AFTER
    try:
        pid = int(claim.get("pid", -1))
    except (ValueError, TypeError, OverflowError):
        return True
    if not pid_alive(pid):
        return False
    started = claim.get("started")
    # A pid taken by a new process after the owner died is not the owner.
    return started is None or process_start(pid) in (None, started)


def try_claim(path: Path) -> Claim | None:
    """Claim a run for this process; a claim left by a dead process is taken over.

    Raises OSError when the claim cannot be written (a full disk): no partial claim is left.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    claim = _create_claim(path)
    if claim is not None:
        return claim
    found = read_claim(path)
    if found is not None and claim_alive(found) or found is None and _younger_than(path, 5.0):
        return None
    # Only the holder of the takeover lock may remove a stale claim, so two sweeps that both
    # found it stale cannot both take it; the lock's holder looks again before removing it.
    lock = _lock_path(path)
    if not _take_lock(lock):
        return None
    try:
        found = read_claim(path)
        if found is not None and claim_alive(found):
            return None
        path.unlink(missing_ok=True)
        return _create_claim(path)
    finally:
        lock.unlink(missing_ok=True)


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.takeover")


def _take_lock(lock: Path) -> bool:
    if lock.exists() and (not _younger_than(lock, 30.0) or _holder_gone(lock)):
        lock.unlink(missing_ok=True)  # left by a process that died while holding it
    # Who holds it, so that a lock left by a killed process is known.
    return _create_exclusive(lock, json.dumps(_holder()).encode())


def _holder() -> dict[str, Any]:
    """This process, as a claim or a lock names its holder."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _own_start(os.getpid())}


def _create_exclusive(path: Path, content: bytes) -> bool:
    """Create a file holding `content`, or find it there already (False). One exclusive create,
    then the content, which readers tell from a file still being written; where the content cannot
    be written (a full disk), no partial file is left."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


def _holder_gone(lock: Path) -> bool:
    """Whether the process holding a takeover lock is known to be gone (a sweep killed while it
    wrote a record): the run is left to the next sweep at once, not after 30 seconds."""
    holder = read_claim(lock)  # the same fields as a claim's; None while it is being written
    return holder is not None and holder.get("host") == socket.gethostname() and not claim_alive(holder)


def _create_claim(path: Path) -> Claim | None:
    """Create the claim file, or find it taken (None). One exclusive create, then its content: a
    claim still being written reads as none, which try_claim treats as held while it is young."""
    token = uuid.uuid4().hex
    content = json.dumps({**_holder(), "since": time.time(), "token": token}).encode()
    return Claim(str(path), token) if _create_exclusive(path, content) else None


def owns(claim: Claim) -> bool:
    """Whether a claim this process made is still its own (not taken over by another sweep)."""
    found = read_claim(Path(claim.path))
    return found is not None and found.get("token") == claim.token


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
    folder: Path, record: dict[str, Any], claim: Claim | None = None, staged: Path | None = None
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
        lock = _lock_path(Path(claim.path))
        for _ in range(500):  # a takeover holds the lock for milliseconds
            if _take_lock(lock):
                break
            time.sleep(0.01)
        else:
            raise ClaimLost(f"{claim.path}: its takeover lock is held by another sweep")
        try:
            if not owns(claim):
                raise ClaimLost(f"{claim.path}: claimed by another sweep")
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


def _younger_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


def release_claim(claim: Claim) -> None:
    """Remove a claim, unless another sweep has taken it over meanwhile."""
    if owns(claim):
        Path(claim.path).unlink(missing_ok=True)


def touch_claims(claims: list[Claim]) -> None:
    """The heartbeat: claims this process holds stay fresh while it works."""
    for claim in claims:
        try:
            if owns(claim):
                os.utime(claim.path)
        except OSError:
            pass
