"""A log folder from elsewhere is data: the one way to name, list and open what is in it.

A teammate's folder arrives by `cp -r`, rsync, a tarball or `merge`, and anything in it may have
been made to attack whoever reads it (docs/threat-model.md). So every reader goes through here:

- a name read from a file (a record's experiment, run or checkpoint) is used as a path component
  only if it is a name this tool itself would write (`name_problem`);
- a folder's entries are listed without following symlinks (`real_folders`);
- a file is opened only if it is a plain file, never through a symlink, never blocking on a named
  pipe or reading a device, and only up to a size bound checked before reading (`open_plain`,
  `read_plain`).

Refusals are `Refused`, whose text is a sentence fragment ("is a symlink (not followed)") for the
caller to put after the file's name.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

# The names this tool writes: an experiment's (a spec's `name`) and a run's (trainer.spec.names,
# then `~` and a digest where merge keeps two runs of one name).
EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._,=+~-]{0,127}$")
# The files a record names: its final weights and its best ones (trainer.run.rundir).
CHECKPOINT_NAMES = ("model.pt", "best.pt")

_KINDS = (
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


class Refused(Exception):
    """A file that is not read, and why (a sentence fragment: 'is a named pipe, not a plain file')."""


def name_problem(kind: str, value: Any) -> str | None:
    """Why `value`, read from a file, may not be used as the `kind` ('experiment', 'run' or
    'checkpoint') component of a path; None where it is a name this tool would write there."""
    if not isinstance(value, str):
        return f"its {kind} is {type(value).__name__}, not a name"
    if kind == "experiment":
        ok = EXPERIMENT_NAME.match(value) is not None and "tfevents" not in value
    elif kind == "run":
        ok = RUN_NAME.match(value) is not None and value not in (".", "..")
    elif kind == "checkpoint":
        ok = value in CHECKPOINT_NAMES
    else:
        raise ValueError(f"no such kind of name: {kind}")
    return None if ok else f"its {kind} {value!r} is not a name this tool writes"


def file_kind(mode: int) -> str:
    """'a named pipe', 'a symlink', ... for a file mode that is not a regular file."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def real_folders(folder: Path) -> list[str]:
    """The names of a folder's subfolders that are folders themselves, not symlinks to one, sorted;
    none where it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def open_plain(path: Path, limit: int | None = None, update: bool = False) -> BinaryIO:
    """A plain file opened for reading (or, with `update`, for reading and writing in place), never
    through a symlink, at most `limit` bytes long where given; Refused otherwise. Its type is looked
    at before it is opened (a device or a pipe is never opened: opening some devices acts), and
    again on what was opened."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise Refused("is missing") from None
    except OSError as exc:
        raise Refused(f"cannot be looked at: {exc.strerror}") from None
    _check(info, limit)
    flags = (
        (os.O_RDWR if update else os.O_RDONLY)
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_CLOEXEC", 0)
    )
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("is a symlink (not followed)") from None
        raise Refused(f"cannot be read: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise Refused("was replaced while being opened")
        _check(opened, limit)
        # O_NONBLOCK only kept a pipe from blocking the open; on a plain file some calls refuse it.
        os.set_blocking(fd, True)
        return os.fdopen(fd, "r+b" if update else "rb")
    except BaseException:
        os.close(fd)
        raise


def read_plain(path: Path, limit: int) -> bytes:
    """The bytes of a plain file of at most `limit` bytes (see open_plain); Refused otherwise, also
    where the file grows past the bound while it is read."""
    with open_plain(path, limit) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise Refused(f"cannot be read: {exc.strerror}") from None
    if len(data) > limit:
        raise Refused(f"grew past {limit:,} bytes while it was read")
    return data


def _check(info: os.stat_result, limit: int | None) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = file_kind(info.st_mode)
        raise Refused(
            "is a symlink (not followed)" if kind == "a symlink" else f"is {kind}, not a plain file"
        )
    if limit is not None and info.st_size > limit:
        raise Refused(f"is {info.st_size:,} bytes, more than such a file may hold ({limit:,})")
