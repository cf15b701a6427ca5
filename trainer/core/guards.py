"""Guards on what the commands read and where they write: inputs that are not regular files or are
too large, sweeps too large to list, and paths under a log folder that would lead outside it.

Each guard answers with the problem as a sentence fragment (or None), so that the caller puts it in
its own message form (`path:line: key: problem`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from trainer.core.untrusted import file_kind

# Far more than any hand-written or generated spec (the comparison set's are under 1 KB; a list of
# 10,000 seeds is 60 KB); parsing a larger one would take seconds only to refuse its sweep.
MAX_SPEC_BYTES = 256 << 10
# The CSV reader holds every cell as a Python float: 64 MiB of text is already gigabytes in memory.
MAX_CSV_BYTES = 64 << 20
LIMITS = {"spec": (MAX_SPEC_BYTES, "a spec file"), "csv": (MAX_CSV_BYTES, "a CSV file")}


def input_problem(path: str | os.PathLike, kind: str) -> str | None:
    """Why an input file ('spec' or 'csv') should not be opened: not a regular file, or larger than
    such a file may be; else None.

    Only os.stat is used, so a named pipe is refused without blocking on it and a device is never
    read. A missing file or a folder is left to the caller, whose messages for those say more.
    """
    try:
        info = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
        limit, what = LIMITS[kind]
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            return f"is {info.st_size:,} bytes; {what} may hold at most {limit:,}"
        return None
    return f"is {file_kind(info.st_mode)}, not a regular file; give the path of a file"


# --- paths the commands write -----------------------------------------------------------------


def escape_problem(root: Path, path: Path) -> str | None:
    """Why writing at `path` (at or below `root`) could leave the real `root`, or None.

    Every component below root that exists must be a real folder (or, for the last, may be
    missing); a symlink, dangling or not, is refused wherever it leads, since a write through it
    lands where the link points. Only lstat is used: nothing is followed.
    """
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return f"{path} is not under {root}"
    here = root
    for part in parts:
        here = here / part
        try:
            info = here.lstat()
        except OSError:
            return None  # missing, or under a file: the write itself will say so
        if stat.S_ISLNK(info.st_mode):
            return (
                f"{here}: is a symlink to {_target(here)}; nothing is written through a symlink, which could "
                f"lead outside {root}; replace it by a folder or remove it"
            )
        if not stat.S_ISDIR(info.st_mode):
            return (
                f"{here}: is {file_kind(info.st_mode) if not stat.S_ISREG(info.st_mode) else 'a file'}, "
                f"where a folder belongs; move it away"
            )
    return None


def file_problem(root: Path, path: Path) -> str | None:
    """Why opening the file at `path` (below `root`) to read or append could leave the real
    `root`, or None: a folder on the way is a symlink (see escape_problem), or the file is a
    symlink, dangling or not, or is not a plain file. A missing file is no problem."""
    problem = escape_problem(root, path.parent)
    if problem is not None:
        return problem
    try:
        info = path.lstat()
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return (
            f"{path}: is a symlink to {_target(path)}; nothing is read or written through a symlink, "
            f"which could lead outside {root}; remove it"
        )
    if not stat.S_ISREG(info.st_mode):
        return f"{path}: is {file_kind(info.st_mode)}, where a plain file belongs; move it away"
    return None


def _target(link: Path) -> str:
    try:
        target = os.readlink(link)
    except OSError:
        return "an unreadable target"
    where = link.parent / target
    return f"{target}" + ("" if where.exists() else " (dangling)")
