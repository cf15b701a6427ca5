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

import collections
import dataclasses
import json
import os
import pickle
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from trainer.core.errors import UserError
from trainer.core.status import Status
from trainer.executors.base import Sweep
from trainer.executors.stopping import Grace
from trainer.kinds import registry as kinds
from trainer.kinds.registry import shown_path
from trainer.run import job, resuming, rundir
from trainer.run.claims import Claim, owns
from trainer.run.job import LOST, Summary, commit, record_ended
from trainer.run.record import code_record
from trainer.spec.plan import RunPlan
from trainer.spec.units import Unit, units_of

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


# --- the task ---------------------------------------------------------------------------------


def execute_unit(
    payload: bytes, spec_folder: str, copy: str, snapshots: Any = None, judge: Any = None
) -> list[tuple[Summary, dict[str, bytes]]]:
    """Ray's task: run a unit into a scratch folder on this node and return, for each of its runs,
    its summary and what it wrote, by path. A run with a checkpoint in `snapshots` (the sweep's
    store) goes on from it; each checkpoint the run takes is sent there.

    The spec folders travel as the sweep's working directory (Ray's runtime_env), `copy` naming this
    unit's; its user code and data are read from there, never from the sweep machine's paths."""
    import ray
    import torch

    torch.set_num_threads(1)  # the same arithmetic as the local pool's workers
    here = str(Path(copy).resolve())
    kinds.relocate(spec_folder, here)
    unit: Unit = pickle.loads(payload)
    unit = dataclasses.replace(unit, runs=tuple(dataclasses.replace(r, data_folder=here) for r in unit.runs))
    with tempfile.TemporaryDirectory(prefix="trainer-run-") as scratch:
        on_checkpoint = None
        if snapshots is not None and unit.engine != "batched":
            (run,) = unit.runs
            _unpack(Path(scratch) / run.folder, ray.get(snapshots.latest.remote(run.folder)) or {})

            def on_checkpoint(folder: Path) -> None:
                ray.get(snapshots.put.remote(run.folder, _files(folder, hidden=False)))

        verdict = None
        if judge is not None:  # the sweep's studies (a Judge actor) say whether to prune a run

            def verdict(folder: str, step: int, value: float) -> bool:
                return ray.get(judge.report.remote(folder, step, value))

        summaries = job.execute_unit(unit, Path(scratch), on_checkpoint=on_checkpoint, judge=verdict)
        return [(summary, _files(Path(scratch) / run.folder)) for run, summary in zip(unit.runs, summaries)]


class Snapshots:
    """The latest checkpoint of each run, as its folder's files by name: a Ray actor on the sweep's
    machine. Tasks put and get; the sweep takes what is new, to write into the log folder."""

    def __init__(self) -> None:
        self.by_run: dict[str, dict[str, bytes]] = {}
        self.new: dict[str, dict[str, bytes]] = {}

    def put(self, run: str, files: dict[str, bytes]) -> None:
        self.by_run[run] = self.new[run] = files

    def latest(self, run: str) -> dict[str, bytes] | None:
        return self.by_run.get(run)

    def take_new(self) -> dict[str, dict[str, bytes]]:
        new, self.new = self.new, {}
        return new

    def forget(self, run: str) -> None:
        self.by_run.pop(run, None)
        self.new.pop(run, None)


class Judge:
    """A sweep's searches (trainer.run.study.Studies) as a Ray actor on the sweep's machine, where
    their journals are: tasks ask it whether to prune their runs, the sweep tells it each run's end
    and asks it for a TPE search's next trial."""

    def __init__(self, searches: dict[str, Any], logdir: str, todo: list[RunPlan]):
        from trainer.run.study import Studies

        self.studies = Studies(searches, Path(logdir))
        self.studies.so_far()
        self.studies.start(todo)

    def report(self, folder: str, step: int, value: float) -> bool:
        return self.studies.report(folder, step, value)

    def ended(self, folder: str, status: str, metrics: dict[str, Any]) -> None:
        self.studies.ended(folder, status, metrics)

    def more(self) -> list[RunPlan]:
        return self.studies.more()

    def left_to_draw(self) -> int:
        return self.studies.left_to_draw()


class RemoteStudies:
    """The sweep's side of a Judge actor: what the sweep asks of its studies, asked of the actor."""

    def __init__(self, ray: Any, actor: Any, pruning: bool, draws_later: bool):
        self.ray, self.actor, self.pruning, self.draws_later = ray, actor, pruning, draws_later

    def report(self, folder: str, step: int, value: float) -> bool:
        return self.ray.get(self.actor.report.remote(folder, step, value))

    def ended(self, folder: str, status: str, metrics: dict[str, Any]) -> None:
        self.ray.get(self.actor.ended.remote(folder, status, metrics))

    def more(self) -> list[RunPlan]:
        return self.ray.get(self.actor.more.remote())

    def left_to_draw(self) -> int:
        return self.ray.get(self.actor.left_to_draw.remote())


def _unpack(folder: Path, files: dict[str, bytes]) -> None:
    """A run folder holding these files (and no others but hidden ones), each written atomically."""
    if not files:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        rundir.write_atomic(folder / name, data, durable=False)
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.name not in files:
            path.unlink()


def _files(folder: Path, hidden: bool = True) -> dict[str, bytes]:
    """Every file under a folder, by its path in it (without hidden ones, temporary files among
    them, unless `hidden`)."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and (hidden or not path.name.startswith("."))
    }


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


def stage(runs: list[RunPlan], logdir: Path, into: Path) -> dict[str, str]:
    """Copy the runs' spec folders into `into`, one subfolder each, less the log folder and hidden
    or cached files; returns spec folder -> its subfolder's name. `into` becomes the working
    directory of every task, uploaded once to the cluster."""
    copies: dict[str, str] = {}
    skip = logdir.resolve()

    def ignore(where: str, names: list[str]) -> list[str]:
        return [
            n for n in names if n.startswith(".") or n == "__pycache__" or Path(where, n).resolve() == skip
        ]

    for run in runs:
        folder = str(Path(run.data_folder).resolve())
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


@dataclasses.dataclass
class Task:
    unit: Unit
    claims: dict[str, Claim]  # by run folder


class Ray:
    """Hands the units to Ray, a few more than its CPUs at a time so that none waits for this
    process; on a stop request, cancels the tasks and records their runs as interrupted."""

    def launch(self, todo: list[Unit], sweep: Sweep) -> None:
        runs = [run for unit in todo for run in unit.runs]
        drawn_later = [  # a TPE search's trials run from its spec's folder too
            run
            for study in getattr(sweep.search, "by_experiment", {}).values()
            for run in study.search.probes[:1]
        ]
        with tempfile.TemporaryDirectory(prefix="trainer-specs-") as staging:
            copies = stage(runs + drawn_later, sweep.logdir, Path(staging))
            ray = connect(sweep.address, sweep.workers, Path(staging))  # uploads the copies
        sweep.stop.listen()  # Ray took SIGTERM for itself while starting
        remote = ray.remote(execute_unit)
        snapshots = _snapshots(ray, runs, sweep.logdir)
        judge = None
        if sweep.search is not None:
            studies = sweep.search
            # The actor's working folder is Ray's copy of the specs: the log folder is named absolutely.
            judge = _on_this_node(ray, Judge).remote(
                {n: s.search for n, s in studies.by_experiment.items()}, str(sweep.logdir.resolve()), runs
            )
            sweep.search = RemoteStudies(ray, judge, studies.pruning, studies.draws_later)
            judge = judge if studies.pruning else None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        pending = collections.deque(units_of(runs, cpus))  # big groups split over the cluster's CPUs
        running: dict[Any, Task] = {}
        # the task stops and removes its scratch folder
        grace = Grace(sweep.stop, sweep.progress, lambda: [ray.cancel(ref, force=False) for ref in running])
        try:
            window = cpus + 1
            while True:
                while not grace.stopping() and not sweep.faulted:
                    if not pending and len(running) < window:
                        pending.extend(sweep.more())  # a TPE search's next trial
                    if len(running) >= window or not pending:
                        break
                    unit, held = sweep.claim(pending.popleft())
                    if unit is not None:
                        folder = str(Path(unit.runs[0].data_folder).resolve())
                        if folder not in copies:  # a TPE trial's spec folder: staged like the others
                            raise UserError(f"{folder} was not staged for the Ray cluster")
                        ref = remote.options(**resources(unit), max_retries=MAX_RETRIES).remote(
                            pickle.dumps(unit), folder, copies[folder], snapshots, judge
                        )
                        running[ref] = Task(unit, held)
                if not running:
                    return
                if grace.over():
                    for ref, task in running.items():
                        ray.cancel(ref, force=True)
                        sweep.finish(task.claims, _all_ended(sweep, task, Status.INTERRUPTED, "interrupted"))
                    return
                arrived = ray.get(snapshots.take_new.remote())
                done, _ = ray.wait(list(running), num_returns=1, timeout=POLL)
                sweep.stop.clear_wakeups()
                for ref in done:
                    task = running.pop(ref)
                    sweep.finish(task.claims, _outcome(ray, ref, task, sweep, grace.started))
                    for run in task.unit.runs:
                        snapshots.forget.remote(run.folder)
                _keep(sweep.logdir, arrived, running.values())
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            ray.shutdown()  # a local instance stops with it


EXECUTOR = Ray()


def _snapshots(ray: Any, runs: list[RunPlan], logdir: Path) -> Any:
    """The store of the runs' checkpoints, on this node, holding those the log folder has already
    (of runs a sweep before this one stopped), so that their tasks go on from them."""
    store = _on_this_node(ray, Snapshots).remote()
    for run in runs:
        folder = logdir / run.folder
        if (folder / rundir.RESUME).is_file():
            files = {n: d for n, d in _files(folder, hidden=False).items() if n not in resuming.LEFT_BEHIND}
            store.put.remote(run.folder, files)
    return store


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
            _unpack(logdir / folder, files)
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
