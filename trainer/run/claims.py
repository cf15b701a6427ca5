"""Claims: the files that keep two sweeps off one run, and the heartbeat that keeps a sweep's fresh.

A claim is a file <experiment>/.claims/<run> naming the process that runs the run, with a token
of its own. On the same host a claim is kept while its process lives, however old it is (a sweep
paused by SIGSTOP, a laptop asleep, a frozen VM), and is taken over once the process is gone. A
claim from another host is judged by its heartbeat: not touched for CLAIM_STALE_AFTER seconds, it
is taken over. The owner checks its token under the takeover lock before it writes the run's
record (see rundir.commit_record), so a sweep that lost its claim discards its result instead of
writing over the new owner's folder.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.core import untrusted

CLAIMS = ".claims"
# A claim whose owner has not touched it for this long is taken over, wherever the owner runs.
CLAIM_STALE_AFTER = 60.0
HEARTBEAT_EVERY = 10.0


@dataclass(frozen=True)
class Claim:
    """A claim this process holds: where it is, and the token that tells it from a later one."""

    path: str
    token: str


class ClaimLost(Exception):
    """The run was claimed by another sweep meanwhile: this result must not be written."""


def claim_path(logdir: Path, experiment: str, name: str) -> Path:
    return logdir / experiment / CLAIMS / name


# A claim is a line of JSON (who, where, since when); more is not one.
MAX_CLAIM_BYTES = 64 << 10


def read_claim(path: Path) -> dict[str, Any] | None:
    """A run's claim, or None where there is none or it is not one (only a plain file is read)."""
    if path.parent.is_symlink():  # a claims folder leading elsewhere holds no claim of this folder's runs
        return None
    try:
        claim = json.loads(untrusted.read_plain(path, MAX_CLAIM_BYTES).decode("utf-8"))
        if not isinstance(claim, dict):
            return None
        claim["age"] = time.time() - path.lstat().st_mtime
        return claim
    except (untrusted.Refused, OSError, ValueError, TypeError, UnicodeDecodeError, RecursionError):
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


def try_claim(path: Path, token: str | None = None) -> Claim | None:
    """Claim a run for this process; a claim left by a dead process is taken over. With a token, the
    claim keeps it: a sweep started again takes back the claims its runs still hold elsewhere (a
    Slurm job outlives its driver), so that they go on writing.

    Raises OSError when the claim cannot be written (a full disk): no partial claim is left.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    claim = _create_claim(path, token)
    if claim is not None:
        return claim
    found = read_claim(path)
    if found is not None and claim_alive(found) or found is None and _younger_than(path, 5.0):
        return None
    # Only the holder of the takeover lock may remove a stale claim, so two sweeps that both
    # found it stale cannot both take it; the lock's holder looks again before removing it.
    lock = lock_path(path)
    if not take_lock(lock):
        return None
    try:
        found = read_claim(path)
        if found is not None and claim_alive(found):
            return None
        path.unlink(missing_ok=True)
        return _create_claim(path, token)
    finally:
        lock.unlink(missing_ok=True)


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.takeover")


def take_lock(lock: Path) -> bool:
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


def _create_claim(path: Path, token: str | None = None) -> Claim | None:
    """Create the claim file, or find it taken (None). One exclusive create, then its content: a
    claim still being written reads as none, which try_claim treats as held while it is young."""
    token = token or uuid.uuid4().hex
    content = json.dumps({**_holder(), "since": time.time(), "token": token}).encode()
    return Claim(str(path), token) if _create_exclusive(path, content) else None


def owns(claim: Claim) -> bool:
    """Whether a claim this process made is still its own (not taken over by another sweep)."""
    found = read_claim(Path(claim.path))
    return found is not None and found.get("token") == claim.token


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


class Held:
    """The claims this process holds, kept fresh by a heartbeat thread until closed."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.held: set[Claim] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def take(self, experiment: str, name: str, token: str | None = None) -> Claim | None:
        """The run's claim (keeping `token`, where given), or None if another sweep holds it; OSError
        if it cannot be written."""
        return self.take_path(claim_path(self.logdir, experiment, name), token)

    def take_path(self, path: Path, token: str | None = None) -> Claim | None:
        """The claim (or lock) file at path, as take."""
        claim = try_claim(path, token)
        if claim is not None:
            with self.lock:
                self.held.add(claim)
        return claim

    def release(self, claim: Claim) -> None:
        with self.lock:
            self.held.discard(claim)
        release_claim(claim)

    def _beat(self) -> None:
        while not self.done.wait(HEARTBEAT_EVERY):
            with self.lock:
                touch_claims(list(self.held))

    def close(self) -> None:
        self.done.set()
        with self.lock:
            for claim in self.held:
                release_claim(claim)
            self.held.clear()


@contextlib.contextmanager
def exclusive(path: Path, waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the lock file at path, a claim of the folder it is in, for as long as the block runs:
    while another process of this machine holds it (or one elsewhere keeps it fresh), wait,
    calling `waiting` once; one left by a process that is gone is taken over."""
    held = Held(path.parent)
    try:
        told = False
        while held.take_path(path) is None:
            if not told:
                waiting()
                told = True
            time.sleep(0.1)
        yield
    finally:
        held.close()
