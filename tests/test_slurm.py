"""What only the Slurm executor has: jobs preempted and requeued, a driver killed and started again,
its options, and a machine without Slurm. Against the one-node Slurm of `make slurm-up`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_executor_contract import TIMEOUT, cancel_all_jobs, in_process, numbers, slurm_or_skip
from tests.test_faults import event_files, records, start, trainer, wait_until

pytestmark = pytest.mark.slow

# Holds a run at each step in HOLD until the test writes gate-<step>.
HOOK = """
    import os
    import time
    from pathlib import Path

    HERE = Path({here!r})
    HOLD = {hold!r}


    def hold(writer, step, model, **context):
        if step not in HOLD or (HERE / "no-hold").exists():
            return
        (HERE / f"holding-{{step}}-{{os.getpid()}}").write_text("")
        while not (HERE / f"gate-{{step}}").exists():
            time.sleep(0.02)
"""

SPEC = """\
name: toy
data: {{kind: seed_toy}}
model: {{kind: linear, bias: false}}
loss: {{kind: mse}}
optimizer: {{kind: sgd, lr: 0.01}}
train: {{steps: 400, batch_size: 1, engine: loop}}
eval: {{every: 100}}
log: {{every: 10, histograms_every: 0, checkpoint_every: 50, hook: "gate:hold"}}
sweep:
  optimizer.lr: {lrs}
"""


@pytest.fixture
def slurm():
    slurm_or_skip()
    yield
    cancel_all_jobs()


def project(tmp_path: Path, hold: list[int], lrs: str = "[0.01]") -> Path:
    folder = tmp_path / "experiments"
    folder.mkdir(parents=True)
    (folder / "gate.py").write_text(textwrap.dedent(HOOK.format(here=str(folder.resolve()), hold=hold)))
    spec = folder / "toy.yaml"
    spec.write_text(SPEC.format(lrs=lrs))
    return spec


def job_of(logdir: Path, run: str) -> str:
    (job,) = [
        p.stem
        for p in (logdir / ".slurm" / "jobs").glob("*.json")
        if run in json.loads(p.read_text())["runs"]
    ]
    return job


def status_line(tmp_path: Path, run: str) -> str:
    code, out, err = trainer(tmp_path, "status", "logs", name="status")
    assert code == 0, out + err
    (line,) = [line for line in out.splitlines() if run in line]
    return line


def test_a_job_preempted_mid_run_is_requeued_and_ends_with_the_same_bits(tmp_path, slurm, sweeps):
    spec = project(tmp_path, hold=[100, 200])
    sweeps.append(
        sweep := start(tmp_path, ["sweep", spec, "--logdir", "logs", "--executor", "slurm"], name="s")
    )
    wait_until(lambda: list(spec.parent.glob("holding-100-*")), "the run is held at step 100", sweep, TIMEOUT)
    job = job_of(tmp_path / "logs", "toy/lr=0.01")
    assert f"running on Slurm (job {job})" in status_line(tmp_path, "lr=0.01")

    # What Slurm sends a job it preempts, or whose time is nearly up: submitit's signal.
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
    (spec.parent / "gate-100").write_text("")
    # The run stopped with a checkpoint, its job was requeued, and it goes on to step 200.
    wait_until(
        lambda: list(spec.parent.glob("holding-200-*")),
        "the requeued job's run reaches step 200",
        sweep,
        TIMEOUT,
    )
    assert f"requeued on Slurm (job {job})" in status_line(tmp_path, "lr=0.01")
    assert job_of(tmp_path / "logs", "toy/lr=0.01") == job  # the same job, not a new one
    (spec.parent / "gate-200").write_text("")

    code, out, err = sweep.finish(TIMEOUT)
    assert code == 0, out + err
    assert "1 run: 1 complete" in out
    assert "sacct" not in out + err  # no warning about Slurm's accounting reaches the user
    (record,) = records(tmp_path / "logs").values()
    assert record["status"] == "complete" and record["steps_done"] == 400
    assert (
        len(event_files(tmp_path / "logs" / "toy" / "lr=0.01")) == 2
    )  # the first attempt's, then the requeued one's
    (spec.parent / "no-hold").write_text("")
    assert numbers(tmp_path / "logs") == in_process(tmp_path, spec, "requeued")


def test_a_driver_killed_and_started_again_submits_nothing_twice(tmp_path, slurm, sweeps):
    spec = project(tmp_path, hold=[100], lrs="[0.01, 0.02]")
    args = ["sweep", spec, "--logdir", "logs", "--executor", "slurm"]
    sweeps.append(first := start(tmp_path, args, name="first"))
    wait_until(
        lambda: len(list(spec.parent.glob("holding-100-*"))) == 2,
        "both runs are held at step 100",
        first,
        TIMEOUT,
    )
    logdir = tmp_path / "logs"
    wait_until(
        lambda: len(list((logdir / ".slurm" / "jobs").glob("*.json"))) == 2, "both jobs are submitted", first
    )
    jobs = sorted(p.name for p in (logdir / ".slurm" / "jobs").glob("*.json"))
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait()

    sweeps.append(second := start(tmp_path, args, name="second"))
    # The second driver claims the runs back: their claims name it, with the jobs' own tokens.
    claims = logdir / "toy" / ".claims"
    wait_until(
        lambda: all(
            (claims / f"lr={lr}").exists()
            and json.loads((claims / f"lr={lr}").read_text())["pid"] == second.process.pid
            for lr in ("0.01", "0.02")
        ),
        "the second driver holds both claims",
        second,
        TIMEOUT,
    )
    (spec.parent / "gate-100").write_text("")
    code, out, err = second.finish(TIMEOUT)
    assert code == 0, out + err
    assert "2 runs: 2 complete" in out
    assert (
        sorted(p.name for p in (logdir / ".slurm" / "jobs").glob("*.json")) == jobs
    )  # nothing submitted again
    for name, record in records(logdir).items():
        assert record["status"] == "complete"
        assert len(event_files(logdir / "toy" / name)) == 1  # each run trained once, in its first job
    (spec.parent / "no-hold").write_text("")
    assert numbers(logdir) == in_process(tmp_path, spec, "adopted")


@pytest.mark.parametrize(
    "option, expected",
    [
        (
            "partiton=gpu",
            "error: --executor-opt partiton: unknown key 'partiton' (did you mean 'partition'?)",
        ),
        ("time=0", "error: --executor-opt time: must be >= 1, got 0"),
        ("gpus", "error: --executor-opt: 'gpus' is no KEY=VALUE (an option of the slurm executor)"),
    ],
)
def test_a_wrong_option_is_one_sentence_naming_it(tmp_path, option, expected):
    spec = project(tmp_path, hold=[])
    code, out, err = trainer(tmp_path, "sweep", spec, "--executor", "slurm", "--executor-opt", option)
    assert code == 2 and err.startswith(expected), err
    assert "Traceback" not in err and not (tmp_path / "logs").exists()
    if "unknown key" in expected:
        assert "the slurm executor's options: partition, account, qos, time, cpus" in err


def test_without_slurm_the_sweep_is_refused_in_one_sentence(tmp_path):
    spec = project(tmp_path, hold=[])
    env = dict(os.environ, PATH=str(tmp_path / "nothing"))
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "sweep", str(spec), "--executor", "slurm"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "error: --executor slurm needs Slurm's sbatch, squeue, scancel on PATH: run the sweep on the "
        "cluster's login node, or in a job of its own\n"
    )
    assert not (tmp_path / "logs").exists()


def test_a_spec_s_executor_section_asks_slurm_for_its_resources_under_the_command_line_s(
    tmp_path, slurm, sweeps
):
    spec = project(tmp_path, hold=[100])
    spec.write_text(spec.read_text() + "executor:\n  slurm: {time: 7, cpus: 2}\n  ray: {address: auto}\n")
    args = ["sweep", spec, "--logdir", "logs", "--executor", "slurm", "--executor-opt", "cpus=1"]
    sweeps.append(sweep := start(tmp_path, args, name="resources"))
    wait_until(lambda: list(spec.parent.glob("holding-100-*")), "the run is held at step 100", sweep, TIMEOUT)
    job = job_of(tmp_path / "logs", "toy/lr=0.01")
    shown = subprocess.run(
        ["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60
    ).stdout
    assert "TimeLimit=00:07:00" in shown, shown  # the spec's
    assert "MinCPUsNode=1" in shown, shown  # the command line's, over the spec's 2
    (spec.parent / "gate-100").write_text("")
    code, out, err = sweep.finish(TIMEOUT)
    assert code == 0, out + err
    # The section is no setting of the run: the same run as without it.
    (spec.parent / "no-hold").write_text("")
    assert numbers(tmp_path / "logs") == in_process(tmp_path, spec, "resources")


@pytest.mark.parametrize(
    "section, expected",
    [
        ("slurm: {tme: 5}", "toy.yaml:12: executor.slurm.tme: unknown key 'tme' (did you mean 'time'?)"),
        ("slurm: {time: 0}", "toy.yaml:12: executor.slurm.time: must be >= 1, got 0"),
        (
            "slurmm: {time: 5}",
            "toy.yaml:12: executor.slurmm: no executor of that name (did you mean 'slurm'?)",
        ),
    ],
)
def test_a_wrong_executor_section_is_one_sentence_naming_its_line(tmp_path, section, expected):
    spec = project(tmp_path, hold=[])
    spec.write_text(spec.read_text() + f"executor:\n  {section}\n")
    code, out, err = trainer(tmp_path, "sweep", spec, "--executor", "slurm")
    assert code == 2 and expected in err and err.startswith("error: "), err
    assert "Traceback" not in err and not list((tmp_path / "logs").glob("*/*/record.json"))


def test_the_api_takes_the_executor_s_options_as_a_mapping_and_names_a_wrong_one(tmp_path):
    from trainer import api
    from trainer.core.errors import UserError

    spec = project(tmp_path, hold=[])
    with pytest.raises(UserError) as raised:
        api.sweep(spec, tmp_path / "logs", executor="slurm", executor_options={"tim": 5})
    assert str(raised.value).startswith("executor_options: tim: unknown key 'tim' (did you mean 'time'?)")
    with pytest.raises(UserError, match="executor_options: expected a mapping"):
        api.sweep(spec, tmp_path / "logs", executor="slurm", executor_options=["time=5"])
    assert not (tmp_path / "logs").exists()


def test_a_log_folder_whose_slurm_folders_lead_elsewhere_is_refused_and_nothing_is_written_there(
    tmp_path, slurm
):
    spec = project(tmp_path, hold=[])
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "logs" / ".slurm").mkdir(parents=True)
    (tmp_path / "logs" / ".slurm" / "answers").symlink_to(outside)
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", "logs", "--executor", "slurm")
    assert code == 2 and "Traceback" not in err, out + err
    assert err == (
        "error: logs/.slurm/answers is a symlink: the Slurm executor writes only inside the log folder; "
        "remove it, or sweep into another --logdir\n"
    )
    assert list(outside.iterdir()) == []
    assert not list((tmp_path / "logs").glob("*/*/record.json"))
