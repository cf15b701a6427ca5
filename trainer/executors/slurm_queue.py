"""What the Slurm executor asks of Slurm (squeue, scancel) and keeps in the log folder: a ledger of
the jobs it submitted, which a driver started again reads to find its jobs still queued or running,
and `status` to say where each run is. Job states come from squeue alone (no accounting database,
so no sacct); a job squeue no longer lists has ended, and its summaries file says how."""

from __future__ import annotations

import getpass
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from trainer.core import untrusted
from trainer.executors.slurm_job import folder_of

# What squeue says of a job that has not ended (squeue lists ended ones for a little while).
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
        "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED"}  # fmt: skip
SHOWN = {"PENDING": "queued", "RUNNING": "running", "CONFIGURING": "starting", "COMPLETING": "running"}
JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")  # a job, or one task of a job array
MAX_LEDGER_BYTES = 4 << 20


def squeue() -> dict[str, str] | None:
    """Job id -> state, of this user's jobs that Slurm still knows; None when squeue cannot answer."""
    try:
        done = subprocess.run(
            ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    states = {}
    for line in done.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if JOB_ID.match(job):
            states[job] = state
    return states


def scancel(jobs: list[str], signal: str | None = None) -> None:
    """Cancel the jobs, or send them a signal (their batch step and its children)."""
    if not jobs:
        return
    command = ["scancel"] + ([f"--signal={signal}", "--full"] if signal else []) + jobs
    try:
        subprocess.run(command, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pass  # the jobs end at their time limit; the driver records them as it does a lost one


def read_json(path: Path) -> Any:
    """A JSON file this executor wrote into the log folder, or None where it is none (read as
    untrusted data: plain files only, of a bounded size)."""
    try:
        return json.loads(untrusted.read_plain(path, MAX_LEDGER_BYTES).decode("utf-8"))
    except (untrusted.Refused, OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None


def write_entry(logdir: Path, job: str, runs: dict[str, str]) -> None:
    """The ledger's entry for a submitted job: its runs, each with its claim's token."""
    from trainer.run import rundir

    path = folder_of(logdir, "jobs", f"{job}.json")  # the folder is made when the sweep starts
    rundir.write_atomic(path, json.dumps({"job": job, "runs": runs}).encode())


def ledger(logdir: Path) -> dict[str, dict[str, str]]:
    """Job id -> {run folder: its claim's token}, of every job the ledger names well."""
    jobs: dict[str, dict[str, str]] = {}
    folder = folder_of(logdir, "jobs")
    if not folder.is_dir() or folder.is_symlink():
        return jobs
    for path in sorted(folder.glob("*.json")):
        entry = read_json(path)
        if _is_entry(entry) and path.stem == entry["job"]:
            jobs[entry["job"]] = entry["runs"]
    return jobs


def _is_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("job"), str)
        and bool(JOB_ID.match(entry["job"]))
        and isinstance(entry.get("runs"), dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in entry["runs"].items())
    )


def live_jobs(logdir: Path, states: dict[str, str]) -> dict[str, dict[str, str]]:
    """The ledger's jobs that Slurm still runs or keeps queued, and that have not said they ended."""
    return {
        job: runs
        for job, runs in ledger(logdir).items()
        if states.get(job) in LIVE and not folder_of(logdir, "endings", f"{job}.json").exists()
    }


def places(logdir: Path) -> dict[str, str]:
    """Run folder -> where it is on Slurm ("queued on Slurm (job 12_3)"), for `status`."""
    if not folder_of(logdir, "jobs").is_dir():
        return {}
    states = squeue()
    if states is None:
        return {}
    found = {}
    for job, runs in live_jobs(logdir, states).items():
        state = SHOWN.get(states[job], states[job].lower())
        if folder_of(logdir, "endings", f"{job}.requeued").exists():
            state = "requeued" if state == "queued" else f"{state}, requeued"
        for folder in runs:
            found[folder] = f"{state} on Slurm (job {job})"
    return found


def log_tail(logdir: Path, job: str, lines: int = 3) -> str:
    """The last lines of a job's error output, as a clause ('' where there is none)."""
    for path in folder_of(logdir, "logs", job).glob("*_log.err"):
        try:
            text = untrusted.read_plain(path, 1 << 20).decode("utf-8", "replace").strip().splitlines()
        except (untrusted.Refused, OSError):
            continue
        tail = [line for line in text if line.strip()][-lines:]
        if tail:
            return "; its log ends: " + " / ".join(tail)
    return ""
