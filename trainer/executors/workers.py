"""Where a sweep's worker processes come from, and how a worker lives and dies with its sweep; kept
free of heavy imports: the command line starts the workers' fork server before it imports anything
else, so that torch's import there (seconds) overlaps all of the sweep's own start-up."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

# Ctrl-C reaches every process of the terminal's group, SIGTERM often too; only the parent acts on them.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # SIGHUP: the terminal closed

# What a worker needs before its first run: imported once, by the fork server, for every worker.
WORKER_MODULES = [
    "trainer.executors.forkserver",
    "torch",
    "trainer.executors.local",
    "trainer.run.job",
    "trainer.tensorboard.sink",
    "trainer.training.loop",
    "trainer.training.batched",
]


def worker_context() -> Any:
    """Where workers come from: a fork server that imported torch once (seconds) and forks each
    worker ready to run, where the platform has one; otherwise fresh interpreters ('spawn').

    Either way a worker starts from a clean process that never ran a sweep, and does not run the
    parent's main script (trainer.core.children starts it). The fork server keeps the environment
    of the moment it started."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_MODULES)
    return ctx


def prepare_workers() -> None:
    """Start the fork server now, so that its import of torch overlaps the sweep's planning. It
    starts with the stop signals blocked: a Ctrl-C during its imports must not print a traceback
    (it ignores them once ready; the workers it forks set their own)."""
    if worker_context().get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def kill_with_parent() -> bool:
    """Linux: SIGKILL this process the moment its parent dies. False where that is not available."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        return ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent: int) -> None:
    """A worker whose sweep was killed must not go on writing into a run that a rerun may take over.

    The kernel kills the worker when its parent process dies: the sweep itself, or the fork server,
    which the kernel kills the moment the sweep is gone (trainer.executors.forkserver)."""
    if not kill_with_parent():
        threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()
    from trainer.run.claims import pid_alive

    if not pid_alive(parent):  # the sweep died before this worker could ask
        os._exit(1)


def exit_with_parent(parent: int) -> None:
    from trainer.run.claims import pid_alive

    while pid_alive(parent):
        time.sleep(0.5)
    os._exit(1)


@functools.cache
def make_an_optimizer() -> None:
    """torch imports its compiler (seconds) when the first optimizer is made: paid before a loop
    run starts, so that its duration is its own. The batched engine makes none."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def how_it_ended(code: int | None) -> str:
    return (
        f"was killed by signal {signal.Signals(-code).name}"
        if code is not None and code < 0
        else f"exited with status {code}"
    )
