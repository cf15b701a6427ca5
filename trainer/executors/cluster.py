"""The Ray executor: a sweep's runs as Ray tasks, on this machine or a cluster, with no shared filesystem.

The sweep driver (trainer.executors.driver) still decides what runs, claims each run, keeps the
claims fresh, and reports; this module only decides where. Each unit of work (one run, or a group of runs that the
batched engine trains as one program; trainer.spec.units) is one task that trains into a scratch folder
on whichever node Ray picks and returns every file it wrote through Ray's object store; this process
writes them into the log folder, each run's record last, so a run folder is complete or absent
whatever dies when. The spec's folder travels to the nodes as the task's working directory, so user code and
CSV files beside the spec are there. Ray retries a task whose worker or node dies; a retry starts
in a new folder, so nothing is lost or written twice.

A run's checkpoints travel too: after each, the task sends its folder (event files, config.yaml,
resume.pt) to a store on the sweep's machine (an actor pinned to this node, `Snapshots`), and this
process writes the latest into the log folder while the run goes on. A retried task, and a later
sweep, go on from the last checkpoint that arrived instead of from step 0; no shared filesystem is
needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.core import strict
from trainer.core.errors import UserError
from trainer.core.status import Status
from trainer.executors.base import Ended
from trainer.executors.ray_task import Snapshots, Verdicts, execute_unit, files_of, unpack
from trainer.executors.schedule import Sweep
from trainer.kinds.registry import shown_path
from trainer.run import resuming, rundir
from trainer.run.claims import Claim, owns
from trainer.run.job import LOST, Summary, commit, record_ended
from trainer.run.record import code_record
from trainer.spec.plan import RunPlan
from trainer.spec.units import Unit

INSTALL = "pip install -e '.[ray]' (or make setup EXTRAS=ray)"
# A task whose worker process or node dies is run again elsewhere at most this many times.
MAX_RETRIES = 3
# How long this process waits for Ray between looks at Ctrl-C and the claims.
POLL = 0.5


def require_ray() -> None:
    """Refuse, in one sentence, the Ray executor where Ray is not installed."""
    try:
        _ray()
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed here; install it with {INSTALL}")


def _ray() -> Any:
    """Ray, imported so that a Ray it starts here listens on 127.0.0.1 only (read at import)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    return ray


# --- this process -----------------------------------------------------------------------------


def connect(address: str | None, cpus: int, working_dir: Path) -> Any:
    """Ray, connected to the cluster at `address` (or RAY_ADDRESS), else to a new instance on this
    machine that listens on 127.0.0.1 only and has `cpus` CPUs."""
    ray = _ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "ERROR",
        "runtime_env": {"working_dir": str(working_dir)},
    }
    try:
        if address is None:
            ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=cpus, **options)
        else:
            _check_reachable(address)
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a Ray instance on this machine"
        raise UserError(f"cannot connect to {where}: {_first_line(exc)}; nothing was run")
    return ray


def _check_reachable(address: str) -> None:
    """A head that does not answer fails here at once, not after Ray's minutes of retries."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    if address.startswith("ray://") or not host or not port.isdigit():
        raise UserError(
            f"--address: {address!r} is not HOST:PORT (the head's address that `ray start --head` "
            f"prints) or 'auto'"
        )
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray head at {address}: {exc.strerror or exc}; start it with "
            f"`ray start --head` there, or check --address; nothing was run"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def stage(folders: list[str], logdir: Path, into: Path) -> dict[str, str]:
    """Copy the sweep's spec folders into `into`, one subfolder each, less the log folder and hidden
    or cached files; returns spec folder -> its subfolder's name. `into` becomes the working
    directory of every task, uploaded once to the cluster."""
    copies: dict[str, str] = {}
    skip = logdir.resolve()

    def ignore(where: str, names: list[str]) -> list[str]:
        return [
            n for n in names if n.startswith(".") or n == "__pycache__" or Path(where, n).resolve() == skip
        ]

    for folder in folders:
        if folder not in copies:
            copies[folder] = str(len(copies))
            shutil.copytree(folder, into / copies[folder], ignore=ignore)
    return copies


def resources(unit: Unit) -> dict[str, float]:
    """What a unit asks Ray for: one CPU, and a GPU when the spec says cuda."""
    return {"num_cpus": 1, "num_gpus": 1 if unit.runs[0].config.train.device == "cuda" else 0}


def deliver(logdir: Path, run: RunPlan, summary: Summary, files: dict[str, bytes], claim: Claim) -> Summary:
    """Write a finished task's files into the run's folder here, the record last and only while the
    run is still this sweep's; a local sweep of the same run would have left the same folder."""
    folder = logdir / run.folder
    if rundir.RECORD not in files:  # its scratch folder could not be written on the node
        return record_ended(logdir, run, Status.FAILED, f"on its Ray node: {summary.error}", claim)
    record = json.loads(files.pop(rundir.RECORD))
    # Where the spec and the user code are, as this machine names them (the node saw copies).
    record.update(spec=shown_path(run.spec_path), code=code_record(run))
    if not owns(claim):
        return Summary(run.folder, LOST, {}, 0.0, "taken over by another sweep")
    try:
        if folder.exists():
            shutil.rmtree(folder)
        for name, data in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    except OSError as exc:  # left without a record: the next sweep runs it again
        error = f"cannot write {folder}: {exc.strerror or exc}"
        return Summary(run.folder, Status.INTERRUPTED, {}, 0.0, error, logdir_fault=True)
    return commit(folder, record, claim=claim)


@dataclasses.dataclass(frozen=True)
class Options:
    """Where the Ray cluster is; without an address, RAY_ADDRESS, else a Ray instance started on this
    machine with --workers CPUs."""

    address: str | None = strict.setting(
        None, doc="the head of a running Ray cluster (HOST:PORT, as `ray start --head` prints), or 'auto'"
    )


@dataclasses.dataclass
class Task:
    unit: Unit
    claims: dict[str, Claim]  # by run folder


class Ray:
    """Runs the units as Ray tasks, on this machine or a cluster."""

    Options = Options

    def require(self) -> None:
        require_ray()

    @contextlib.contextmanager
    def start(self, sweep: Sweep, options: Options) -> Iterator[RayBackend]:
        with tempfile.TemporaryDirectory(prefix="trainer-specs-") as staging:
            copies = stage(sorted(sweep.folders), sweep.logdir, Path(staging))
            ray = connect(options.address, sweep.workers, Path(staging))  # uploads the copies
        sweep.stop.listen()  # Ray took SIGTERM for itself while starting
        backend = RayBackend(ray, sweep, copies)
        try:
            yield backend
        finally:
            backend.close()


EXECUTOR = Ray()


class RayBackend:
    """Hands units to Ray, a few more than its CPUs at a time so that none waits for this process;
    on a stop request, cancels the tasks (which record their runs as interrupted)."""

    def __init__(self, ray: Any, sweep: Sweep, copies: dict[str, str]):
        self.ray, self.sweep, self.copies = ray, sweep, copies
        self.remote = ray.remote(execute_unit)
        self.snapshots = _on_this_node(ray, Snapshots).remote()
        self.verdicts = _on_this_node(ray, Verdicts).remote() if sweep.judging else None
        self.running: dict[Any, Task] = {}
        self.stopping = False
        self.parallel = int(ray.cluster_resources().get("CPU", 1))
        self.slots = self.parallel + 1

    def submit(self, unit: Unit, claims: dict[str, Claim]) -> Any:
        folder = str(Path(unit.runs[0].data_folder).resolve())
        if folder not in self.copies:  # every spec folder of the sweep was staged
            raise UserError(f"{folder} was not staged for the Ray cluster")
        for run in unit.runs:
            _put_checkpoint(self.snapshots, self.sweep.logdir, run)
        ref = self.remote.options(**resources(unit), max_retries=MAX_RETRIES).remote(
            pickle.dumps(unit), folder, self.copies[folder], self.snapshots, self.verdicts
        )
        self.running[ref] = Task(unit, claims)
        return ref

    def wait(self, timeout: float) -> list[Ended]:
        ray, sweep = self.ray, self.sweep
        if self.verdicts is not None:
            asked = ray.get(self.verdicts.questions.remote())
            if asked:
                ray.get(self.verdicts.tell.remote({n: sweep.judge(*q) for n, q in asked.items()}))
        arrived = ray.get(self.snapshots.take_new.remote())
        done, _ = ray.wait(list(self.running), num_returns=1, timeout=min(timeout, POLL))
        ended = []
        for ref in done:
            task = self.running.pop(ref)
            ended.append(Ended(ref, _outcome(ray, ref, task, sweep, self.stopping)))
            for run in task.unit.runs:
                self.snapshots.forget.remote(run.folder)
        _keep(sweep.logdir, arrived, self.running.values())
        return ended

    def stop(self) -> None:
        """The tasks stop their runs at their next chunk of steps, which record themselves as
        interrupted with their checkpoints, as a local sweep's do."""
        self.stopping = True
        self.snapshots.stop.remote()

    def kill(self) -> list[Ended]:
        ended = []
        for ref, task in self.running.items():
            self.ray.cancel(ref, force=True)
            ended.append(Ended(ref, _all_ended(self.sweep, task, Status.INTERRUPTED, "interrupted")))
        self.running.clear()
        return ended

    def close(self) -> None:
        for ref in self.running:
            self.ray.cancel(ref, force=True)
        self.ray.shutdown()  # a local instance stops with it


def _put_checkpoint(store: Any, logdir: Path, run: RunPlan) -> None:
    """A run that a sweep before this one stopped goes on from the checkpoint in its folder."""
    folder = logdir / run.folder
    if (folder / rundir.RESUME).is_file():
        files = {n: d for n, d in files_of(folder, hidden=False).items() if n not in resuming.LEFT_BEHIND}
        store.put.remote(run.folder, files)


def _on_this_node(ray: Any, cls: type) -> Any:
    """An actor class whose actor lives on the sweep's machine, beside the log folder."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(cls).options(num_cpus=0, scheduling_strategy=here)


def _keep(logdir: Path, arrived: dict[str, dict[str, bytes]], running: Any) -> None:
    """Write the checkpoints that arrived into the log folder, for runs still running and this
    sweep's (a run that ended meanwhile has its final files written already)."""
    claims = {folder: claim for task in running for folder, claim in task.claims.items()}
    for folder, files in arrived.items():
        claim = claims.get(folder)
        if claim is None or not owns(claim):
            continue
        try:
            unpack(logdir / folder, files)
        except OSError:
            pass  # the next checkpoint, or the run's end, writes the folder again


def _outcome(ray: Any, ref: Any, task: Task, sweep: Sweep, stopping: bool) -> list[Summary]:
    """What became of a task: its runs' files written into the log folder, its runs recorded as
    ended, or none for a unit that could not start (its node lacks packages), left as it was."""
    from ray import exceptions

    try:
        results = ray.get(ref)
    except exceptions.TaskCancelledError:
        return _all_ended(sweep, task, Status.INTERRUPTED, "interrupted")
    except exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
        if isinstance(cause, KeyboardInterrupt) or stopping:
            return _all_ended(sweep, task, Status.INTERRUPTED, "interrupted")
        if isinstance(cause, ImportError):
            sweep.report.startup_fault = sweep.report.startup_fault or (
                f"a Ray node cannot run the sweep: {_first_line(cause)}; install the project and its "
                f"packages there ({INSTALL}) and start its Ray with that Python; no run was lost"
            )
            return []
        return _all_ended(sweep, task, Status.FAILED, f"on its Ray node: {_first_line(cause)}")
    except exceptions.RayError as exc:  # the worker or node died more often than Ray retries
        status = Status.INTERRUPTED if stopping else Status.FAILED
        error = f"its Ray worker or node died {MAX_RETRIES + 1} times ({type(exc).__name__})"
        return _all_ended(sweep, task, status, "interrupted" if stopping else error)
    return [
        deliver(sweep.logdir, run, summary, files, task.claims[run.folder])
        for run, (summary, files) in zip(task.unit.runs, results)
    ]


def _all_ended(sweep: Sweep, task: Task, status: Status, error: str) -> list[Summary]:
    """Every run of a task recorded as ended (interrupted or failed) without its results."""
    return [sweep.ended(run, status, error, task.claims[run.folder]) for run in task.unit.runs]
