"""The Slurm executor: each unit of a sweep is a Slurm job, submitted through submitit.

The driver runs on the login node (or in a small job of its own) and keeps the claims, the tally
and a search's study in the log folder, which the cluster's nodes share; each job trains its unit
straight into the log folder (trainer.executors.slurm_job). The units handed over between two looks
at the queue go as one submission: a job array per kind of resources, at most `max_parallel` of
it running at once. A job preempted, or near its time limit, is signalled by Slurm; its runs record
themselves with a checkpoint and the job is requeued, to go on where they stopped. The ledger of
submitted jobs is in the log folder (trainer.executors.slurm_queue): the same command started
again after its driver was killed waits for the jobs still queued or running instead of
submitting them twice.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import select
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.core.errors import UserError
from trainer.core.status import Status
from trainer.core.strict import at_least, setting
from trainer.core.visible import visible
from trainer.executors import slurm_queue as queue
from trainer.executors.base import Ended, spec_options
from trainer.executors.schedule import Sweep, ended_all
from trainer.executors.slurm_job import FOLDERS, SLURM, STOPPING, UnitJob, folder_of
from trainer.run import rundir
from trainer.run.claims import Claim
from trainer.run.job import Summary
from trainer.spec.units import Unit

INSTALL = "pip install -e '.[slurm]' (or make setup EXTRAS=slurm)"
LOOK_EVERY = 2.0  # seconds between looks at the queue
# A job that squeue no longer lists and that wrote no summaries is taken as ended after this many
# looks (squeue may miss a job for a moment while Slurm requeues it).
SILENT_LOOKS = 5


@dataclass(frozen=True)
class Options:
    """What every job of the sweep asks Slurm for; a run whose spec says train.device: cuda gets one
    GPU unless `gpus` says otherwise."""

    partition: str | None = setting(None, doc="the partition to submit to (default: the cluster's)")
    account: str | None = setting(None, doc="the account the jobs are charged to")
    qos: str | None = setting(None, doc="the quality of service")
    time: int = setting(60, at_least(1), doc="each job's time limit, in minutes")
    cpus: int = setting(1, at_least(1), doc="CPUs per job")
    mem_gb: float | None = setting(
        None, at_least(0.1), doc="memory per job, in GB (default: the partition's)"
    )
    gpus: int | None = setting(None, at_least(0), doc="GPUs per job (default: 1 where the spec says cuda)")
    max_jobs: int = setting(64, at_least(1), doc="jobs queued or running at once")
    max_parallel: int | None = setting(None, at_least(1), doc="jobs of one array running at once")
    requeues: int = setting(3, at_least(0), doc="times a job preempted or out of time is requeued")
    setup: tuple[str, ...] = setting((), doc="shell lines each job runs first (module load ..., source ...)")
    python: str | None = setting(None, doc="the Python the jobs run (default: this one)")


class Slurm:
    Options = Options

    def require(self) -> None:
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError(
                f"--executor slurm needs submitit, which is not installed here; install it with {INSTALL}"
            )
        missing = [tool for tool in ("sbatch", "squeue", "scancel") if shutil.which(tool) is None]
        if missing:
            raise UserError(
                f"--executor slurm needs Slurm's {', '.join(missing)} on PATH: run the sweep on the "
                f"cluster's login node, or in a job of its own"
            )

    def places(self, logdir: Path) -> dict[str, str]:
        return queue.places(logdir)

    @contextlib.contextmanager
    def start(self, sweep: Sweep, options: Options) -> Iterator[SlurmBackend]:
        self.require()
        _own_folders(sweep.logdir)
        folder_of(sweep.logdir, STOPPING).unlink(missing_ok=True)
        yield SlurmBackend(sweep, options)


EXECUTOR = Slurm()


def _own_folders(logdir: Path) -> None:
    """The executor's folders in the log folder, made here; a log folder from elsewhere whose
    `.slurm` or one of its folders is a symlink (or no folder) is refused, so that nothing the
    executor writes or removes lands outside the log folder."""
    top = logdir / SLURM
    for path in [top, *(top / name for name in FOLDERS)]:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise UserError(
                f"{visible(path)} is {'a symlink' if path.is_symlink() else 'no folder'}: the Slurm executor "
                f"writes only inside the log folder; remove it, or sweep into another --logdir"
            )
        path.mkdir(parents=True, exist_ok=True)


@dataclass
class Job:
    unit: Unit
    claims: dict[str, Claim]
    id: str | None = None  # None until submitted
    silent: int = 0  # looks at the queue that did not find it


class SlurmBackend:
    def __init__(self, sweep: Sweep, options: Options):
        import submitit

        self.sweep, self.options = sweep, options
        self.logdir = sweep.logdir.resolve()
        self.executor = submitit.SlurmExecutor(
            folder=folder_of(self.logdir, "logs", "%j"),
            max_num_timeout=options.requeues,
            python=options.python,
        )
        self.slots = options.max_jobs
        self.parallel = min(options.max_jobs, options.max_parallel or options.max_jobs)
        self.jobs: dict[int, Job] = {}
        self.handles = itertools.count()
        self.looked = 0.0
        self.stopping = False
        self.cancelled: list[Ended] = []  # units whose jobs were cancelled before they began
        self.live: dict[str, dict[str, str]] = {}

    def submit(self, unit: Unit, claims: dict[str, Claim]) -> int:
        handle = next(self.handles)
        self.jobs[handle] = Job(unit, claims)
        return handle

    def adopted(self) -> dict[str, str]:
        states = queue.squeue() or {}
        self.live = queue.live_jobs(self.logdir, states)
        return {folder: token for runs in self.live.values() for folder, token in runs.items()}

    def adopt(self, unit: Unit, claims: dict[str, Claim]) -> int:
        job = next(j for j, runs in self.live.items() if unit.runs[0].folder in runs)
        handle = self.submit(unit, claims)
        self.jobs[handle].id = job
        return handle

    def _flush(self) -> None:
        """Submit the units handed over since the last look: one job array per kind of resources."""
        by_resources: dict[str, tuple[dict[str, Any], list[Job]]] = {}
        for job in (j for j in self.jobs.values() if j.id is None):
            asked = self._resources(job.unit)
            by_resources.setdefault(json.dumps(asked, sort_keys=True), (asked, []))[1].append(job)
        for asked, group in by_resources.values():
            self.executor.update_parameters(**asked)
            with self.executor.batch():
                submitted = [
                    self.executor.submit(UnitJob(job.unit, str(self.logdir), job.claims, self.sweep.judging))
                    for job in group
                ]
            for job, done in zip(group, submitted):
                job.id = str(done.job_id)
                queue.write_entry(self.logdir, job.id, {f: c.token for f, c in job.claims.items()})

    def _resources(self, unit: Unit) -> dict[str, Any]:
        """What a unit's job asks Slurm for: its spec's executor: section, under the caller's options."""
        o = spec_options("slurm", unit.runs[0].executor, self.sweep.given)
        cuda = unit.runs[0].config.train.device == "cuda"
        gpus = o.gpus if o.gpus is not None else (1 if cuda else 0)
        asked = {
            "job_name": f"trainer-{unit.runs[0].experiment}",
            "time": o.time,
            "cpus_per_task": o.cpus,
            "partition": o.partition,
            "account": o.account,
            "qos": o.qos,
            "mem": f"{o.mem_gb:g}GB" if o.mem_gb is not None else None,
            "gpus_per_node": gpus or None,
            "array_parallelism": o.max_parallel or o.max_jobs,
            "setup": list(o.setup) or None,
            "additional_parameters": {"requeue": True},
        }
        return {k: v for k, v in asked.items() if v is not None}

    def wait(self, timeout: float) -> list[Ended]:
        try:
            self._flush()
        except Exception as exc:  # sbatch refused the jobs: nothing of them runs
            raise queue_refused(exc) from None
        if self.cancelled:
            cancelled, self.cancelled = self.cancelled, []
            return cancelled
        until = time.monotonic() + timeout
        while True:
            self._answer()
            ended = self._ended()
            if ended or time.monotonic() >= until:
                return ended
            ready, _, _ = select.select(
                [self.sweep.stop.wake_fd], [], [], min(0.2, max(0.0, until - time.monotonic()))
            )
            if ready:
                return []

    def _ended(self) -> list[Ended]:
        ended = []
        for handle, job in list(self.jobs.items()):
            said = queue.read_json(folder_of(self.logdir, "endings", f"{job.id}.json"))
            if isinstance(said, list):
                ended.append(Ended(handle, [_summary(s) for s in said]))
                del self.jobs[handle]
        if time.monotonic() - self.looked >= LOOK_EVERY and self.jobs:
            self.looked = time.monotonic()
            states = queue.squeue()
            for handle, job in list(self.jobs.items()):
                if states is None or states.get(job.id) in queue.LIVE:
                    job.silent = 0
                    continue
                job.silent += 1
                if (
                    job.silent >= SILENT_LOOKS
                    and not folder_of(self.logdir, "endings", f"{job.id}.json").exists()
                ):
                    status = Status.INTERRUPTED if self.stopping else Status.FAILED
                    error = (
                        "interrupted"
                        if self.stopping
                        else f"its Slurm job {job.id} ended without its results{queue.log_tail(self.logdir, job.id)}"
                    )
                    ended.append(ended_all(self.sweep, handle, job.unit, job.claims, status, error))
                    del self.jobs[handle]
        return ended

    def _answer(self) -> None:
        """The runs' questions of pruning, answered by the sweep's studies."""
        asks = folder_of(self.logdir, "asks")
        if not asks.is_dir():
            return
        for path in sorted(asks.glob("*.json")):
            question = queue.read_json(path)
            if isinstance(question, dict) and {"folder", "step", "value"} <= set(question):
                verdict = self.sweep.judge(
                    str(question["folder"]), int(question["step"]), float(question["value"])
                )
                answer = folder_of(self.logdir, "answers", path.name)
                rundir.write_atomic(answer, json.dumps(verdict).encode())
            path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Pending jobs are cancelled (their runs never began); running ones are told to stop, and
        record their runs as interrupted with a checkpoint, without being requeued."""
        from submitit.core.job_environment import JobEnvironment

        self.stopping = True
        rundir.write_atomic(folder_of(self.logdir, STOPPING), b"")
        states = queue.squeue() or {}
        pending = [j.id for j in self.jobs.values() if j.id is not None and states.get(j.id) == "PENDING"]
        queue.scancel(pending)
        running = [j.id for j in self.jobs.values() if j.id is not None and j.id not in pending]
        queue.scancel(running, signal=JobEnvironment.USR_SIG)
        for handle, job in list(self.jobs.items()):
            if job.id is None or job.id in pending:
                self._forget(job)
                del self.jobs[handle]
                self.cancelled.append(Ended(handle, []))

    def kill(self) -> list[Ended]:
        queue.scancel([j.id for j in self.jobs.values() if j.id is not None])
        ended = [
            ended_all(self.sweep, h, j.unit, j.claims, Status.INTERRUPTED, "interrupted")
            for h, j in self.jobs.items()
        ]
        self.jobs.clear()
        return ended

    def _forget(self, job: Job) -> None:
        if job.id is not None:
            folder_of(self.logdir, "jobs", f"{job.id}.json").unlink(missing_ok=True)


def _summary(said: Any) -> Summary:
    """A run's summary as its job wrote it (data, never unpickled)."""
    if not isinstance(said, dict):
        said = {}
    return Summary(
        folder=str(said.get("folder", "")),
        status=str(said.get("status", Status.FAILED)),
        metrics=said.get("metrics") if isinstance(said.get("metrics"), dict) else {},
        duration=float(said.get("duration") or 0.0),
        error=said.get("error") if isinstance(said.get("error"), str) else None,
        logdir_fault=bool(said.get("logdir_fault")),
        steps_done=said.get("steps_done") if isinstance(said.get("steps_done"), int) else None,
    )


def queue_refused(exc: BaseException) -> Exception:
    from trainer.executors.base import BackendFailed

    text = str(exc).strip().splitlines()
    return BackendFailed(
        f"Slurm refused the sweep's jobs: {text[-1] if text else type(exc).__name__}; no run was lost"
    )
