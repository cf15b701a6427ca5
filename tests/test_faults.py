"""Sweeps under faults: killed, interrupted, launched twice, runs that raise or diverge, workers that die,
log folders that cannot be written. Real processes and signals; every test checks what is on disk after.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from trainer.executors.driver import Options, run_all
from trainer.executors.progress import Progress
from trainer.reporting import summary as report_module
from trainer.spec.sweep import plan

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc"),
]

REPO = Path(__file__).resolve().parents[1]
# Generous: the machine may be shared, and a run waits for its turn on a core.
TIMEOUT = 120.0

TOY = """\
name: toy
data: {{kind: seed_toy}}
model: {{kind: linear, bias: false}}
loss: {{kind: mse}}
optimizer: {{kind: sgd, lr: {lr}}}
train: {{steps: {steps}, batch_size: 1}}
eval: {{every: 100}}
log: {{every: {every}, histograms_every: 0}}
sweep:
{sweep}
"""


def toy_spec(folder: Path, *sweep: str, steps: int = 300, lr: float = 0.01, every: int = 10) -> Path:
    """A seed_toy spec in folder/toy.yaml; `sweep` holds the sweep's lines."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toy.yaml"
    path.write_text(
        TOY.format(lr=lr, steps=steps, every=every, sweep="\n".join(f"  {line}" for line in sweep))
    )
    return path


# --- processes --------------------------------------------------------------------------------

# Patching the workers: they run trainer code, never the sweep's main script, so a script that patches
# them appends its own module name to trainer.executors.workers.WORKER_MODULES before the sweep
# starts. The workers' fork server imports it (as a module, not as __main__) before it forks any
# worker, and every worker has the patch. It finds the script in its working folder, which is the
# sweep's (multiprocessing hands it no sys.path), or on PYTHONPATH.


@dataclass
class Sweep:
    """A sweep running in its own process group, its output going to files."""

    process: subprocess.Popen
    stdout: Path
    stderr: Path

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, str, str]:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"the sweep did not end within {timeout} s:\n{self.output()}")
        return code, self.stdout.read_text(), self.stderr.read_text()

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()


def start(tmp_path: Path, args: list[str], script: Path | None = None, name: str = "sweep") -> Sweep:
    """`python -m trainer ARGS` (or `python SCRIPT ARGS`) in a new session, as a terminal would start it."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    command = [sys.executable, *([str(script)] if script else ["-m", "trainer"]), *map(str, args)]
    stdout, stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Sweep(process, stdout, stderr)


def trainer(
    tmp_path: Path, *args: object, script: Path | None = None, name: str = "cli"
) -> tuple[int, str, str]:
    """Run the CLI to its end."""
    return start(tmp_path, list(args), script, name).finish()


def wait_until(
    condition: Callable[[], object], what: str, sweep: Sweep | None = None, timeout: float = TIMEOUT
) -> object:
    """Poll until condition() is truthy; fail, with the sweep's output, if it takes too long or the sweep ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if sweep is not None and sweep.process.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}:\n{sweep.output()}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}" + (f":\n{sweep.output()}" if sweep else ""))


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # state, ppid, ...


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every living process below pid."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] not in ("Z", "X"):
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# --- what is on disk --------------------------------------------------------------------------


def record(logdir: Path, folder: str) -> dict | None:
    try:
        return json.loads((logdir / folder / "record.json").read_text())
    except (OSError, ValueError):
        return None


def records(logdir: Path, experiment: str = "toy") -> dict[str, dict]:
    """run name -> record, for every run folder that has one."""
    folder = logdir / experiment
    found = {}
    for run in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not run.name.startswith(".") and (data := record(folder, run.name)) is not None:
            found[run.name] = data
    return found


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


def read_events(folder: Path) -> tuple[dict[str, list[int]], list[int]]:
    """Over all of a run folder's event files: tag -> the steps of its scalars in file order, and the
    session-end statuses found."""
    steps: dict[str, list[int]] = {}
    ends = []
    for path in event_files(folder):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    steps.setdefault(value.tag, []).append(event.step)
                elif value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("session_end_info"):
                        ends.append(data.session_end_info.status)
    return steps, ends


def writer_pid(event_file: Path) -> int:
    """The pid in an event file's name: events.out.tfevents.<time>.<host>.<pid>.<n>[.suffix]."""
    return int(re.search(r"\.(\d+)\.\d+(\.[a-z]+)?$", event_file.name).group(1))


def assert_clean_run(folder: Path, expected_files: int = 1) -> dict[str, list[int]]:
    """Exactly the expected event files, and every scalar tag's steps strictly increasing across them;
    a record written by the run itself comes from the process that wrote its event file."""
    files = event_files(folder)
    assert len(files) == expected_files, [p.name for p in files]
    data = record(folder.parent, folder.name)
    if data is not None and "pid" in data:  # the last file (a resumed run's: its own) by the record's writer
        assert writer_pid(files[-1]) == data["pid"], f"{folder.name}: written by another process"
        assert len({writer_pid(f) for f in files}) == len(files), f"{folder.name}: a process wrote two files"
    steps, _ = read_events(folder)
    for tag, seen in steps.items():
        assert all(a < b for a, b in zip(seen, seen[1:])), f"{folder.name}: {tag} has repeated steps"
    return steps


def fingerprint(path: Path) -> tuple[int, int, str]:
    """A file's inode, mtime and content: rewritten or replaced, it reads differently."""
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def tree(logdir: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under a log folder, fingerprinted."""
    return {str(p.relative_to(logdir)): fingerprint(p) for p in sorted(logdir.rglob("*")) if p.is_file()}


def run_fingerprints(logdir: Path, folder: str) -> dict[str, tuple[int, int, str]]:
    return {p.name: fingerprint(p) for p in sorted((logdir / folder).iterdir())}


def ran_now(stdout: str) -> int:
    """How many runs a sweep ran, from its summary line."""
    return int(re.search(r"\((\d+) run now", stdout).group(1))


def status_of(tmp_path: Path, logdir: Path) -> dict[str, str]:
    """`python -m trainer status`: run folder -> state."""
    code, out, err = trainer(tmp_path, "status", logdir, name="status")
    assert code == 0, err
    return dict(re.findall(r"^(toy/\S+)\s+(\w+)", out, re.M))


def outcome(data: dict) -> tuple:
    """What a run computed: identical numbers for identical configurations."""
    return data["status"], data["metrics"], data["final_weights"], data.get("weights_sha256")


# --- killed outright --------------------------------------------------------------------------

KILL_STEPS = 1500


def run_here(spec: Path, logdir: Path, overrides: list[str] = ()) -> dict[str, tuple]:
    """The sweep run to its end in this process (the workers' arithmetic: one torch thread)."""
    import torch

    threads = torch.get_num_threads()
    try:
        result = run_all(plan([str(spec)], list(overrides)), Options(logdir, workers=0))
    finally:
        torch.set_num_threads(threads)
    assert not result.failed and not result.interrupted
    return {name: outcome(data) for name, data in records(logdir).items()}


def test_sigkill_mid_sweep_then_rerun_gives_the_uninterrupted_results(tmp_path, sweeps):
    spec = toy_spec(tmp_path, "train.seed: [0, 1, 2, 3, 4, 5]", steps=KILL_STEPS)
    logdir = tmp_path / "logs"
    # One run at a time: a batched group's two halves, forked together, end within milliseconds
    # of each other, so no moment is sure to find some runs complete and others in flight.
    args = ["sweep", spec, "--logdir", logdir, "--workers", 2, "--set", "train.engine=loop"]
    sweep = start(tmp_path, args, name="killed")
    sweeps.append(sweep)

    def mid_way() -> bool:
        done = records(logdir)
        half = [p for p in (logdir / "toy").glob("seed=*") if p.name not in done and event_files(p)]
        return 1 <= len(done) < 5 and bool(half)

    wait_until(mid_way, "some runs are complete and others in flight", sweep)
    family = descendants(sweep.process.pid)
    assert family, "the sweep has no worker processes"
    # The sweep alone, as the OOM killer would: its workers must notice and go by themselves (the
    # process group is killed too at the end of the test, should they not).
    os.kill(sweep.process.pid, signal.SIGKILL)
    assert sweep.process.wait(TIMEOUT) == -signal.SIGKILL
    wait_until(lambda: not any(alive(pid) for pid in family), "every process of the killed sweep is gone")

    complete_before = {name: run_fingerprints(logdir, f"toy/{name}") for name in records(logdir)}
    half_written = {
        p.name: event_files(p) for p in (logdir / "toy").glob("seed=*") if p.name not in complete_before
    }
    assert half_written
    states = status_of(tmp_path, logdir)
    assert {states[f"toy/{name}"] for name in half_written} == {"unfinished"}

    code, out, err = trainer(tmp_path, *args, name="rerun")
    assert code == 0, out + err
    assert ran_now(out) == 6 - len(complete_before)

    final = {name: outcome(data) for name, data in records(logdir).items()}
    uninterrupted = run_here(spec, tmp_path / "uninterrupted", ["train.engine=loop"])
    assert len(uninterrupted) == 6 and {o[0] for o in uninterrupted.values()} == {"complete"}
    assert final == uninterrupted
    for name, files in complete_before.items():
        assert run_fingerprints(logdir, f"toy/{name}") == files, f"{name} was complete yet rerun"
        assert_clean_run(logdir / "toy" / name)
    for name, old_files in half_written.items():
        steps = assert_clean_run(logdir / "toy" / name)
        assert sorted(steps["loss"]) == list(range(0, KILL_STEPS, 10))
        assert not set(event_files(logdir / "toy" / name)) & set(old_files), f"{name} kept its old event file"
    assert not list((logdir / "toy" / ".claims").iterdir())


# --- Ctrl-C -----------------------------------------------------------------------------------

LONG_STEPS = 15000


# Ctrl-C in a terminal, the hangup a terminal that closes sends its processes, and the SIGTERM a
# container or batch system sends the job's process group.
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM], ids=["ctrl-c", "hangup", "sigterm"]
)
def test_ctrl_c_records_the_run_in_flight_as_interrupted_and_the_same_command_resumes(
    tmp_path, sweeps, signum
):
    # The long run starts first; the other worker gets through the two short ones meanwhile.
    spec = toy_spec(tmp_path, f"train.steps: [200, 300, {LONG_STEPS}]", every=50)
    logdir = tmp_path / "logs"
    args = ["sweep", spec, "--logdir", logdir, "--workers", 2]
    short, long = ["steps=200", "steps=300"], f"steps={LONG_STEPS}"
    sweep = start(tmp_path, args, name="interrupted")
    sweeps.append(sweep)

    def short_done_long_going() -> bool:
        done = records(logdir)
        return all(n in done for n in short) and bool(event_files(logdir / "toy" / long))

    wait_until(short_done_long_going, "the short runs are complete and the long one in flight", sweep)
    assert status_of(tmp_path, logdir) == {
        "toy/steps=200": "complete",
        "toy/steps=300": "complete",
        f"toy/{long}": "running",
    }
    kept = {n: run_fingerprints(logdir, f"toy/{n}") for n in short}

    os.killpg(sweep.process.pid, signum)
    code, out, err = sweep.finish()
    assert code == 130, out + err
    assert "Traceback" not in err and "leaked" not in err
    # The command is spelled for the shell that ran it: this Python's path where `python` is another.
    assert re.search(
        rf"to resume, run the same command again:\n  \S*python -m trainer sweep {re.escape(str(spec))} "
        rf"--logdir {re.escape(str(logdir))} --workers 2\n",
        out,
    ), out
    stopped = record(logdir, f"toy/{long}")
    assert stopped["status"] == "interrupted"
    assert 0 < stopped["steps_done"] < LONG_STEPS
    # It stopped itself within the grace period: its own event file, closed with its session end.
    steps = assert_clean_run(logdir / "toy" / long)
    assert max(steps["loss"]) < stopped["steps_done"]
    assert read_events(logdir / "toy" / long)[1] == [api_pb2.STATUS_FAILURE]
    assert status_of(tmp_path, logdir)[f"toy/{long}"] == "interrupted"

    code, out, err = trainer(tmp_path, *args, name="resumed")
    assert code == 0, out + err
    assert "3 runs: 3 complete (1 run now, 2 already done)" in out
    for name in short:
        assert run_fingerprints(logdir, f"toy/{name}") == kept[name], f"{name} was complete yet rerun"
    resumed = record(logdir, f"toy/{long}")
    assert resumed["status"] == "complete" and resumed["steps_done"] == LONG_STEPS
    # It went on from the checkpoint it took as it stopped, in an event file of its own.
    assert resumed["resumed"] == {"from_step": stopped["steps_done"]}
    steps = assert_clean_run(logdir / "toy" / long, expected_files=2)
    assert sorted(steps["loss"]) == list(range(0, LONG_STEPS, 50))


# --- two sweeps at once -----------------------------------------------------------------------


def test_two_sweeps_at_once_run_every_run_once_and_take_over_dead_claims(tmp_path, sweeps):
    spec = toy_spec(tmp_path, "train.seed: [0, 1, 2, 3, 4, 5]", steps=1500)
    logdir = tmp_path / "logs"
    names = [f"seed={s}" for s in range(6)]
    claims = logdir / "toy" / ".claims"
    claims.mkdir(parents=True)
    # One left by a process of this machine that is gone, one by a machine that stopped beating.
    (claims / "seed=1").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "since": 0}))
    (claims / "seed=4").write_text(json.dumps({"pid": 1, "host": "elsewhere.invalid", "since": 0}))
    hour_ago = time.time() - 3600
    os.utime(claims / "seed=4", (hour_ago, hour_ago))

    def both(*flags: str) -> None:
        """Two sweeps started together; each run is run exactly once, by one or the other."""
        pair = [
            start(tmp_path, ["sweep", spec, "--logdir", logdir, "--workers", 1, *flags], name=f"sweep{i}")
            for i in (1, 2)
        ]
        sweeps.extend(pair)
        results = [sweep.finish() for sweep in pair]
        for code, out, err in results:
            assert code == 0, out + err
            # A sweep may find every run claimed by the other (the batched engine claims a group at once).
            assert re.search(
                r"^(\d) runs?: \1 complete|^0 runs \(0 run now, 0 already done, 6 left", out, re.M
            ), out
        # The sweep that ends last sees every run complete; the other may end while one is in flight.
        assert any("6 runs: 6 complete" in out for _, out, _ in results)
        assert sum(ran_now(out) for _, out, _ in results) == 6
        finished = [m for _, _, err in results for m in re.findall(r"\] complete\s+toy/(\S+)", err)]
        assert sorted(finished) == names
        assert {n: d["status"] for n, d in records(logdir).items()} == dict.fromkeys(names, "complete")
        for name in names:
            assert_clean_run(logdir / "toy" / name)
        assert not list(claims.iterdir()), "claims were left behind"

    both()
    # Both told to rerun everything: still once each, not once per sweep.
    results = {n: outcome(d) for n, d in records(logdir).items()}
    before = {n: fingerprint(logdir / "toy" / n / "record.json") for n in names}
    both("--force")
    assert all(fingerprint(logdir / "toy" / n / "record.json") != before[n] for n in names)
    assert {n: outcome(d) for n, d in records(logdir).items()} == results


# --- a run that raises, and what the flags do afterwards --------------------------------------

RAISING = """\
    # The sweep, with one run made to raise. The workers' fork server imports this file as a module
    # (see 'Patching the workers') and patches the training loop for every worker; the sweep's own process
    # never imports torch.
    import sys

    if __name__ != "__main__":
        import dataclasses

        import trainer.training.loop

        real_train = trainer.training.loop.train

        def train(run, sink, context, *more):
            def progress(steps):
                context.on_progress(steps)
                if run.name == {name!r} and steps >= 1000:
                    raise RuntimeError(f"deliberate fault at step {{steps}}")
            return real_train(run, sink, dataclasses.replace(context, on_progress=progress), *more)

        trainer.training.loop.train = train

    if __name__ == "__main__":
        from trainer.cli.commands import main
        from trainer.executors import workers

        workers.WORKER_MODULES.append("raising")
        sys.exit(main())
"""


def test_a_run_that_raises_is_recorded_failed_and_the_flags_rerun_what_they_say(tmp_path):
    # The toy model is tiny, so its chunks are 1000 steps long: the fault comes after the first one.
    spec = toy_spec(tmp_path, "train.seed: [0, 1, 2]", steps=2000)
    logdir = tmp_path / "logs"
    script = tmp_path / "raising.py"
    script.write_text(textwrap.dedent(RAISING.format(name="seed=1")))
    # The fault is injected into the loop engine's step.
    args = ["sweep", spec, "--logdir", logdir, "--workers", 1, "--set", "train.engine=loop"]

    code, out, err = trainer(tmp_path, *args, script=script, name="raising")
    assert code == 1, out + err
    failed = record(logdir, "toy/seed=1")
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: deliberate fault at step 1000"
    trace = (logdir / "toy/seed=1/traceback.txt").read_text()
    assert "Traceback" in trace and "RuntimeError: deliberate fault at step 1000" in trace
    assert (
        f"toy/seed=1: RuntimeError: deliberate fault at step 1000 "
        f"(traceback: {logdir}/toy/seed=1/traceback.txt)" in out
    )
    steps = assert_clean_run(logdir / "toy/seed=1")
    assert sorted(steps["loss"]) == list(range(0, 1000, 10))
    assert read_events(logdir / "toy/seed=1")[1] == [api_pb2.STATUS_FAILURE]
    others = {n: d for n, d in records(logdir).items() if n != "seed=1"}
    assert {n: d["status"] for n, d in others.items()} == {"seed=0": "complete", "seed=2": "complete"}
    assert status_of(tmp_path, logdir)["toy/seed=1"] == "failed"

    # Without a flag: nothing is rerun, and the output says how to retry.
    before = tree(logdir)
    code, out, err = trainer(tmp_path, *args, name="again")
    assert "1 run failed before and was not retried; add --rerun-failed to retry it" in out
    assert ran_now(out) == 0
    assert {k: v for k, v in tree(logdir).items() if "hparams-index" not in k} == {
        k: v for k, v in before.items() if "hparams-index" not in k
    }

    # --rerun-failed: the failed run only, now without the fault.
    complete = {n: run_fingerprints(logdir, f"toy/{n}") for n in ("seed=0", "seed=2")}
    code, out, err = trainer(tmp_path, *args, "--rerun-failed", name="rerun-failed")
    assert code == 0, out + err
    assert ran_now(out) == 1
    assert record(logdir, "toy/seed=1")["status"] == "complete"
    assert not (logdir / "toy/seed=1/traceback.txt").exists()
    assert_clean_run(logdir / "toy/seed=1")
    assert {n: run_fingerprints(logdir, f"toy/{n}") for n in complete} == complete

    # --force: every run again, into clean folders, to the same numbers.
    results = {n: outcome(d) for n, d in records(logdir).items()}
    started = {n: fingerprint(logdir / "toy" / n / "record.json") for n in results}
    code, out, err = trainer(tmp_path, *args, "--force", name="force")
    assert code == 0, out + err
    assert ran_now(out) == 3
    assert {n: outcome(d) for n, d in records(logdir).items()} == results
    for name in results:
        assert fingerprint(logdir / "toy" / name / "record.json") != started[name]
        assert_clean_run(logdir / "toy" / name)

    # A changed configuration is refused, and nothing on disk changes.
    spec.write_text(spec.read_text().replace("steps: 2000", "steps: 3000"))
    before = tree(logdir)
    code, out, err = trainer(tmp_path, *args, name="changed")
    assert code == 2, out + err
    assert "Traceback" not in err
    assert "toy: 3 finished runs in" in err
    assert "logged with a different configuration (train.steps: 2000 -> 3000); nothing was run" in err
    assert "--force" in err and "--logdir" in err
    assert tree(logdir) == before


# --- divergence -------------------------------------------------------------------------------


def test_a_diverging_run_is_a_result_not_a_failure(tmp_path):
    spec = toy_spec(tmp_path, "optimizer.lr: [0.01, 1.0e+30]", steps=300)
    logdir = tmp_path / "logs"
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--workers", 1)
    assert code == 0, out + err
    found = records(logdir)
    assert {n: d["status"] for n, d in found.items()} == {"lr=0.01": "complete", "lr=1e+30": "diverged"}
    diverged = found["lr=1e+30"]
    assert diverged["metrics"]["final/diverged"] is True
    assert (
        isinstance(diverged["metrics"]["diverged_step"], int) and diverged["metrics"]["diverged_step"] < 300
    )
    assert diverged["error"] is None
    steps = assert_clean_run(logdir / "toy/lr=1e+30")
    assert max(steps["loss"]) <= diverged["metrics"]["diverged_step"]
    assert read_events(logdir / "toy/lr=1e+30")[1] == [api_pb2.STATUS_FAILURE]
    assert read_events(logdir / "toy/lr=0.01")[1] == [api_pb2.STATUS_SUCCESS]
    assert "Failed:" not in out
    assert status_of(tmp_path, logdir)["toy/lr=1e+30"] == "diverged"


# A sweep's main script that holds a run mid-flight. The workers' fork server imports it as a module
# (see 'Patching the workers') and applies `patch` for every worker; it calls hold() where a run should wait:
# hold() writes the file 'waiting', then waits until the file 'gate' exists. The sweep's own process
# is untouched.
GATED_SCRIPT = """\
import sys
import time
from pathlib import Path


def hold():
    Path({waiting!r}).write_text("")
    while not Path({gate!r}).exists():
        time.sleep(0.01)


if __name__ != "__main__":
{patch}

if __name__ == "__main__":
    from trainer.cli.commands import main
    from trainer.executors import workers

    workers.WORKER_MODULES.append("gated")
    sys.exit(main())
"""


def gated_script(tmp_path: Path, patch: str) -> tuple[Path, Path, Path]:
    """The script (see GATED_SCRIPT), and the files 'waiting' and 'gate'."""
    script, waiting, gate = tmp_path / "gated.py", tmp_path / "waiting", tmp_path / "gate"
    body = textwrap.indent(textwrap.dedent(patch), "    ")
    script.write_text(GATED_SCRIPT.format(waiting=str(waiting), gate=str(gate), patch=body))
    return script, waiting, gate


# The first batched group a worker trains waits, once past its first chunk of steps.
HOLD_FIRST_GROUP = """\
    import dataclasses

    import trainer.training.batched

    real_train_group = trainer.training.batched.train_group
    groups = []

    def train_group(runs, sinks, context):
        groups.append(runs)

        def progress(steps):
            context.on_progress(steps)
            if len(groups) == 1:
                hold()
        return real_train_group(runs, sinks, dataclasses.replace(context, on_progress=progress))

    trainer.training.batched.train_group = train_group
"""


def test_the_next_group_is_claimed_while_one_trains_and_ctrl_c_leaves_no_claim(tmp_path, sweeps):
    """A worker that finishes a group starts the next at once: its claims were written meanwhile.
    Those claims go with the sweep, and the next sweep trains the groups that never started."""
    spec = toy_spec(tmp_path, "train.batch_size: [1, 2]", "train.seed: [0, 1, 2]", steps=2000)
    logdir, claims = tmp_path / "logs", tmp_path / "logs" / "toy" / ".claims"
    script, waiting, gate = gated_script(tmp_path, HOLD_FIRST_GROUP)
    args = ["sweep", spec, "--logdir", logdir, "--workers", 1, "--set", "train.engine=batched"]
    sweep = start(tmp_path, args, script=script, name="interrupted")
    sweeps.append(sweep)
    wait_until(waiting.exists, "the first group is in flight", sweep)
    # The group in flight, and the group after it, claimed ahead of its turn.
    assert sorted(p.name for p in claims.iterdir()) == sorted(
        f"batch_size={b},seed={s}" for b in (1, 2) for s in range(3)
    )

    os.killpg(sweep.process.pid, signal.SIGINT)
    # The gate opens once the sweep has asked its workers to stop: the group then stops at once.
    wait_until(lambda: "Interrupted: stopping" in sweep.output(), "the sweep asks its workers to stop", sweep)
    gate.write_text("")
    code, out, err = sweep.finish()
    assert code == 130 and "Traceback" not in err, out + err
    assert not list(claims.iterdir())
    found = records(logdir)  # the group in flight; the group claimed ahead never started
    assert len(found) == 3 and {d["status"] for d in found.values()} == {"interrupted"}
    assert len({d["config"]["train"]["batch_size"] for d in found.values()}) == 1

    code, out, err = trainer(tmp_path, *args, name="resumed")
    assert code == 0, out + err
    assert "6 runs: 6 complete (6 run now, 0 already done)" in out
    assert not list(claims.iterdir())


# --- a worker that dies -----------------------------------------------------------------------


def test_a_worker_killed_mid_run_fails_that_run_and_is_replaced(tmp_path, sweeps):
    # One worker: the long run goes first; the short ones can only run on its replacement.
    spec = toy_spec(tmp_path, "train.steps: [300, 50000, 400]", every=50)
    logdir = tmp_path / "logs"
    sweep = start(tmp_path, ["sweep", spec, "--logdir", logdir, "--workers", 1], name="worker-killed")
    sweeps.append(sweep)
    victim_folder = logdir / "toy" / "steps=50000"
    (event_file,) = wait_until(lambda: event_files(victim_folder), "the long run has an event file", sweep)
    worker = writer_pid(event_file)
    assert worker in descendants(sweep.process.pid)
    os.kill(worker, signal.SIGKILL)

    code, out, err = sweep.finish()
    assert code == 1, out + err
    killed = record(logdir, "toy/steps=50000")
    assert killed["status"] == "failed"
    assert killed["error"] == (
        "the worker process running it killed by signal SIGKILL (the signal the kernel's out-of-memory "
        "killer sends: if memory ran out, use fewer --workers or a smaller train.batch_size)"
    )
    assert "killed by signal SIGKILL" in out
    # One event file: its own, cut back to its last whole record and closed with the session end.
    assert_clean_run(victim_folder)
    assert read_events(victim_folder)[1] == [api_pb2.STATUS_FAILURE]
    found = records(logdir)
    others = {n: d["status"] for n, d in found.items() if n != "steps=50000"}
    assert others == {"steps=300": "complete", "steps=400": "complete"}
    for name in others:
        (file,) = event_files(logdir / "toy" / name)
        assert writer_pid(file) != worker
        assert_clean_run(logdir / "toy" / name)
    assert status_of(tmp_path, logdir)["toy/steps=50000"] == "failed"


# --- a log folder that cannot be written ------------------------------------------------------


# Every worker fails as it starts, as with a broken torch install (see 'Patching the workers').
BROKEN_WORKERS = """\
import sys

if __name__ != "__main__":
    import trainer.executors.local as local

    def _worker_main(*args):
        raise ImportError("a broken torch install")

    local._worker_main = _worker_main

if __name__ == "__main__":
    from trainer.cli import main
    from trainer.executors import workers

    workers.WORKER_MODULES.append("broken_workers")
    sys.exit(main())
"""


def test_workers_that_cannot_start_stop_the_sweep_and_fail_no_run(tmp_path):
    spec = toy_spec(tmp_path, "train.seed: [0, 1, 2]")
    script = tmp_path / "broken_workers.py"
    script.write_text(BROKEN_WORKERS)
    logdir = tmp_path / "logs"
    code, out, err = trainer(
        tmp_path, "sweep", spec, "--logdir", logdir, "--workers", 2, "--quiet", script=script
    )
    assert code == 2
    assert "Stopped: a worker process exited with status 1 before it was ready, so no run was started" in out
    assert out.count("Stopped:") == 1
    assert records(logdir) == {}  # no run was recorded as failed
    assert not list((logdir / "toy" / ".claims").glob("*"))
    code, out, _ = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--workers", 2, "--quiet")
    assert code == 0 and "3 runs: 3 complete" in out


def test_a_log_folder_that_cannot_be_made_is_one_error(tmp_path):
    spec = toy_spec(tmp_path, "train.seed: [0, 1]")
    (tmp_path / "afile").write_text("")
    logdir = tmp_path / "afile" / "logs"  # as root, permissions would not stop a write; this does
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--workers", 2)
    assert code == 2
    assert err == f"error: cannot write to the log folder {logdir}: Not a directory\n"
    assert out == ""


def test_a_full_disk_stops_the_sweep_with_one_sentence_and_loses_no_run(tmp_path, monkeypatch, capsys):
    import torch

    from trainer.tensorboard.events import EventFile

    spec = toy_spec(tmp_path, "train.seed: [0, 1, 2]", steps=200)
    runs = plan([str(spec)])
    logdir = tmp_path / "logs"
    real_flush = EventFile.flush

    def full_disk(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(EventFile, "flush", full_disk)
        result = run_all(runs, Options(logdir, workers=0, progress=Progress()))
        lines = report_module.sweep_summary(records_of(logdir), result, logdir, "the same command")
        assert len(result.ran) == 1, "the sweep went on after the disk was full"
        assert result.ran[0].status == "interrupted" and not result.failed
        (stopped,) = [line for line in lines if line.startswith("Stopped")]
        assert re.fullmatch(
            r"Stopped: the log folder cannot be written \(OSError: \[Errno 28\] No space left on "
            r"device: '.*'\); free space or fix its permissions, then run the same command again\.",
            stopped,
        )
        assert "Failed:" not in lines
        assert "Traceback" not in capsys.readouterr().err
        assert record(logdir, runs[0].folder)["status"] == "interrupted"

        # Space freed: the same sweep runs everything, the stopped run included.
        monkeypatch.setattr(EventFile, "flush", real_flush)
        result = run_all(runs, Options(logdir, workers=0))
    finally:
        torch.set_num_threads(threads)
    assert len(result.ran) == 3 and not result.logdir_fault
    assert {n: d["status"] for n, d in records(logdir).items()} == dict.fromkeys(
        ["seed=0", "seed=1", "seed=2"], "complete"
    )
    for name in ("seed=0", "seed=1", "seed=2"):
        assert_clean_run(logdir / "toy" / name)


def records_of(logdir: Path) -> list[dict]:
    return [{**data, "folder": f"toy/{name}"} for name, data in records(logdir).items()]
