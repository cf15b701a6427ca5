"""Child processes that run the package's code by its import path, and never the caller's main module.

multiprocessing's spawn and forkserver start methods run the parent's main module again in every
child (as __mp_main__), so that what it defines can be unpickled there. Our children never need it:
a sweep's workers and planning's child run trainer code, and user code by the import path its spec
names. Running the caller's main module again is at best wasted and often fatal: a script read from
standard input (`python - <<EOF`) has no file to run, a script without an `if __name__ ==
"__main__":` guard starts its sweep a second time (which multiprocessing refuses), and a notebook
kernel's launcher would be imported anew.

This leans on one private detail of multiprocessing, kept to this module and pinned by
tests/test_api_callers.py: the parent describes itself to a spawned or forkserver child in
multiprocessing.spawn.get_preparation_data(name), whose keys init_main_from_name and
init_main_from_path tell the child to run the main module; a child told neither leaves its main
module alone. The fork start method runs no main module, and does not ask.
"""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing import spawn
from typing import Any

MAIN_KEYS = ("init_main_from_name", "init_main_from_path")

_starting = threading.Lock()


def start_without_main(process: Any) -> None:
    """process.start() (a multiprocessing Process, not yet started), its child told nothing of this
    process's main module. Processes that others start meanwhile, from other threads, are described
    as multiprocessing describes them. multiprocessing's own start method is left as unset as it was
    (describing a child fixes it, and the caller could then no longer choose one)."""
    described = spawn.get_preparation_data
    unset = multiprocessing.get_start_method(allow_none=True) is None

    def without_main(name: str) -> dict[str, Any]:
        data = described(name)
        if name == process.name:
            for key in MAIN_KEYS:
                data.pop(key, None)
        return data

    with _starting:
        spawn.get_preparation_data = without_main
        try:
            process.start()
        finally:
            spawn.get_preparation_data = described
            if unset:
                multiprocessing.set_start_method(None, force=True)
