"""train.timeout: a run that takes longer ends as failed (timed out) and frees its worker, whatever
it is stuck in, on every executor path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_faults import toy_spec, trainer

pytestmark = pytest.mark.slow

HANGING = """\
import signal
import time

import torch


def load():
    while True:  # a data server that never answers
        time.sleep(0.05)


def hook(writer, step, model, **context):
    if step == 100:
        while True:
            time.sleep(0.05)


def deaf_hook(writer, step, model, **context):
    if step == 100:  # stuck where no signal reaches: the alarm is blocked, as C code may hold it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        while True:
            time.sleep(0.05)
"""


def hanging_spec(
    folder: Path, *, data: str | None = None, hook: str | None = None, timeout: float = 2
) -> None:
    spec = toy_spec(folder, "train.seed: [0, 1]", steps=300)
    text = spec.read_text().replace("train: {", f"train: {{timeout: {timeout}, ")
    if data:
        text = text.replace("data: {kind: seed_toy}", f"data: {{kind: '{data}'}}")
    if hook:
        text = text.replace("log: {", f"log: {{hook: '{hook}', ")
    spec.write_text(text)
    (folder / "hanging.py").write_text(HANGING)


def record(tmp_path: Path, seed: int) -> dict:
    return json.loads((tmp_path / f"logs/toy/seed={seed}/record.json").read_text())


# The limits leave the runs far more than the second they need to reach their hang at step 100, so
# that a loaded machine still times them out there.
def test_a_run_past_its_timeout_fails_as_timed_out_at_its_step_and_frees_its_worker(tmp_path):
    hanging_spec(tmp_path, hook="hanging:hook", timeout=8)
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 1, out + err  # failed runs
    for seed in (0, 1):  # one worker ran both: the first run's hang freed it
        got = record(tmp_path, seed)
        assert got["status"] == "failed"
        assert got["error"] == "timed out: ran longer than train.timeout (8 s)"
        assert got["steps_done"] == 100
    assert "toy/seed=1: timed out: ran longer than train.timeout (8 s)" in out + err


def test_a_worker_stuck_past_its_timeout_where_no_signal_reaches_is_killed_and_replaced(tmp_path):
    hanging_spec(tmp_path, hook="hanging:deaf_hook", timeout=8)
    script = tmp_path / "quick_kill.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "import trainer.executors.local as local\nlocal.KILL_AFTER = 0.5\n"
        "if __name__ == '__main__':\n    from trainer.cli import main\n    sys.exit(main(sys.argv[1:]))\n"
    )
    code, out, err = trainer(
        tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1", script=script
    )
    assert code == 1, out + err
    for seed in (0, 1):  # the second run had a new worker
        got = record(tmp_path, seed)
        assert got["status"] == "failed"
        assert got["error"] == (
            "timed out: ran longer than train.timeout (8 s), and its worker process, which did not "
            "stop it within 0.5 s more, was killed"
        )


def test_a_data_function_that_hangs_is_stopped_by_the_timeout_before_any_run(tmp_path):
    hanging_spec(tmp_path, data="hanging:load", timeout=1)
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 2, out + err
    assert err == (
        "error: toy.yaml:2: data.kind: calling 'hanging:load' took longer than the limit, "
        "train.timeout (1 s)\n"
    )
    assert not (tmp_path / "logs").exists()


def test_the_timeout_holds_in_the_command_lines_own_process(tmp_path):
    hanging_spec(tmp_path, hook="hanging:hook", timeout=8.5)
    code, out, err = trainer(tmp_path, "run", "toy.yaml", "--set", "train.seed=0", "--logdir", "logs")
    assert code == 1, out + err
    got = record(tmp_path, 0)
    assert got["error"] == "timed out: ran longer than train.timeout (8.5 s)" and got["steps_done"] == 100
    assert "Traceback" not in err


def test_the_timeout_is_not_part_of_a_runs_identity(tmp_path):
    hanging_spec(tmp_path, timeout=60)
    args = ["--logdir", "logs", "--workers", "1"]
    assert trainer(tmp_path, "sweep", "toy.yaml", *args)[0] == 0
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", *args, "--set", "train.timeout=120")
    assert code == 0 and "2 already done" in out, out + err
    assert "train.timeout" not in record(tmp_path, 0)["hparams"]
