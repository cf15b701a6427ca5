"""Commands printed for the user to type next, spelled so that they work in the shell that ran this one.

A sweep started with `make sweep` runs `.venv/bin/python`, whose environment the user's shell may
not have active: there, `python -m trainer` and `tensorboard` are not this project's (or not found),
so the hints name `.venv/bin/python` and `.venv/bin/tensorboard` instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def _bin() -> Path:
    return Path(os.path.abspath(sys.executable)).parent


def _on_path_here(name: str) -> bool:
    """Whether the shell finds `name` in this interpreter's own folder (its environment is active)."""
    found = shutil.which(name)
    return found is not None and Path(os.path.abspath(found)).parent == _bin()


def _typed(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    try:
        relative = path.relative_to(Path.cwd())
        text = str(relative) if relative.parts and relative.parts[0] != ".." else str(path)
    except ValueError:
        text = str(path)
    return shlex.quote(text)


def trainer_command() -> str:
    """How to run this project's CLI: `python -m trainer` where that is this environment's Python."""
    if _on_path_here("python"):
        return "python -m trainer"
    if _on_path_here("trainer"):
        return "trainer"
    return f"{_typed(Path(os.path.abspath(sys.executable)))} -m trainer"


def tensorboard_command(logdir: Path | str) -> str:
    """How to serve a log folder: any `tensorboard` on the PATH, else the one beside this Python."""
    folder = shlex.quote(str(logdir))
    if shutil.which("tensorboard"):
        return f"tensorboard --logdir {folder}"
    script = _bin() / "tensorboard"
    if script.exists():
        return f"{_typed(script)} --logdir {folder}"
    return f"{_typed(Path(os.path.abspath(sys.executable)))} -m tensorboard.main --logdir {folder}"
