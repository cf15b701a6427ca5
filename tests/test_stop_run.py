"""A hook that raises trainer.StopRun ends its run there, as complete: its evaluation at that step
is the final one, logged once, and the record and the status say where and why."""

from __future__ import annotations

import json

import pytest
from tensorboard.plugins.hparams import api_pb2
from test_faults import read_events as file_events
from test_faults import toy_spec, trainer

from tests.conftest import read_events

pytestmark = pytest.mark.slow

STOPPING = """\
import trainer


def hook(writer, step, model, **context):
    if step == 100:
        raise trainer.StopRun("good enough at step 100")
"""


def test_a_hook_that_raises_stoprun_ends_its_run_complete_at_that_step(tmp_path):
    spec = toy_spec(tmp_path, "train.seed: [0]", steps=300)
    text = spec.read_text().replace("eval: {every: 100}", "eval: {every: 50}")
    spec.write_text(text.replace("log: {", "log: {hook: 'stopping:hook', "))
    (tmp_path / "stopping.py").write_text(STOPPING)
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    folder = tmp_path / "logs/toy/seed=0"
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "complete" and record["error"] is None
    assert record["steps_done"] == 100
    assert record["stopped"] == {"step": 100, "reason": "good enough at step 100"}
    assert record["metrics"]["final/stopped_step"] == 100

    acc = read_events(folder)
    evaluations = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [step for step, _ in evaluations] == [0, 50, 100]  # the last one once
    assert record["metrics"]["final/train/loss"] == pytest.approx(evaluations[-1][1])
    weights = [e.step for e in acc.Scalars("w/0")]
    assert weights == list(range(0, 100, 10)) + [100]  # the weights it stopped with, once
    steps, ends = file_events(folder)  # in file order, so a point written twice shows twice
    assert steps["train/loss"] == [0, 50, 100] and steps["w/0"][-2:] == [90, 100]
    assert ends == [api_pb2.STATUS_SUCCESS]

    code, out, err = trainer(tmp_path, "status", "logs")
    row = next(line for line in out.splitlines() if line.startswith("toy/seed=0"))
    assert row.split()[1] == "complete" and "100" in row.split()
