"""The sinks log.sinks names: metrics.jsonl beside the event file holds the same numbers, a run
resumed from a checkpoint writes it as if it had never stopped, an unknown sink is one message,
and a spec that names no sink keeps its identity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import scalars
from trainer.cli.commands import main
from trainer.run import rundir
from trainer.run.job import execute_unit
from trainer.sinks import SINKS
from trainer.sinks.jsonl import METRICS
from trainer.spec.schema import SINK_KINDS
from trainer.spec.sweep import plan
from trainer.spec.units import Unit

SPEC = """\
name: sinks
data: {{kind: seed_toy}}
model: {{kind: linear, bias: false}}
loss: {{kind: mse}}
optimizer: {{kind: sgd, lr: 0.01}}
schedule: {{kind: step, step_size: 100, gamma: 0.5}}
train: {{steps: 300, batch_size: 2, seed: 3{train}}}
eval: {{every: 10, metrics: [mae]}}
log: {{every: 5, histograms_every: 0{log}}}
sweep:
  optimizer.lr: [0.01, 0.02]
"""
JSONL = ", sinks: [tensorboard, jsonl]"
# The digests of SPEC's runs as they were before log.sinks existed (it leaves them as they were).
DIGESTS = {
    "sinks/lr=0.01": "146a7b132407ad4d6b89577a2f23a384a7c9d38dc3318cd2820af915b932d1ee",
    "sinks/lr=0.02": "5dfe993ead0c74de8e64b6bdbf28d94f7c306ef77bfd89324eb97eeb0828f2b0",
}


def write(tmp_path: Path, log: str = JSONL, train: str = "") -> str:
    path = tmp_path / "experiments" / "sinks.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(SPEC.format(log=log, train=train))
    return str(path)


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / METRICS).read_text().splitlines()]


def assert_same_as_events(folder: Path) -> None:
    """Every value of metrics.jsonl is the event file's scalar of its tag at its step, and every
    loss, evaluation and final metric of the event file is in metrics.jsonl."""
    events = scalars(folder)
    written = lines(folder)
    seen: dict[str, set[int]] = {}
    for line in written:
        step = line["step"]
        for tag, value in line.items():
            if tag in ("step", "status"):
                continue
            at = step if tag != "lr" else max(s for s in events["lr"] if s <= step)  # logged on change
            assert np.float32(value) == np.float32(events[tag][at]), (tag, step)
            seen.setdefault(tag, set()).add(step)
    for tag, values in events.items():
        if tag == "loss" or tag.startswith(("train/", "final/", "best/")):
            assert set(values) == seen[tag], tag
    assert set(events["lr"]) <= seen["lr"]  # the event file logs the rate where it changes
    assert written[-1]["status"] == "complete"
    assert written[-1]["step"] == 300


@pytest.mark.parametrize("engine", ["loop", "batched"])
def test_jsonl_values_equal_the_event_files_scalars(tmp_path, engine):
    spec = write(tmp_path, train=f", engine: {engine}")
    logdir = tmp_path / "logs"
    assert main(["sweep", spec, "--logdir", str(logdir), "--quiet", "--workers", "1"]) == 0
    for folder in DIGESTS:
        record = json.loads((logdir / folder / rundir.RECORD).read_text())
        assert record["engine"]["name"] == engine
        assert METRICS in record["files"]
        assert_same_as_events(logdir / folder)
    steps = [line["step"] for line in lines(logdir / "sinks/lr=0.01") if "loss" in line]
    assert steps == list(range(0, 300, 5))


def test_a_resumed_run_writes_metrics_jsonl_as_if_it_never_stopped(tmp_path):
    (run, _) = plan([write(tmp_path, log=JSONL + ", checkpoint_every: 100")], [])
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    (done,) = execute_unit(Unit((run,), "loop"), whole)
    (stopped,) = execute_unit(Unit((run,), "loop"), parts, should_stop=lambda: True)
    assert (done.status, stopped.status) == ("complete", "interrupted")
    assert 0 < len(lines(parts / run.folder)) < len(lines(whole / run.folder))
    (resumed,) = execute_unit(Unit((run,), "loop"), parts)
    assert resumed.status == "complete"
    assert json.loads((parts / run.folder / rundir.RECORD).read_text())["resumed"]["from_step"] == 100
    assert lines(parts / run.folder) == lines(whole / run.folder)


def test_an_unknown_sink_is_one_message_naming_the_file_and_key(tmp_path, monkeypatch, capsys):
    write(tmp_path, log=", sinks: [tensorboard, jsonlines]")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "experiments/sinks.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: experiments/sinks.yaml:9: log.sinks: unknown sink 'jsonlines' (did you mean 'jsonl'?); "
        "the sinks: tensorboard, jsonl"
    ]


@pytest.mark.parametrize(
    "sinks, message",
    [
        pytest.param(
            "[jsonl]",
            "must include 'tensorboard', whose event file status, resume and reports read; got ['jsonl']",
            id="no-tensorboard",
        ),
        pytest.param(
            "[tensorboard, tensorboard]", "names a sink twice: ['tensorboard', 'tensorboard']", id="twice"
        ),
    ],
)
def test_a_list_of_sinks_a_run_cannot_write_through(tmp_path, monkeypatch, capsys, sinks, message):
    write(tmp_path, log=f", sinks: {sinks}")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "experiments/sinks.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: experiments/sinks.yaml:9: log.sinks: {message}"]


def test_a_spec_naming_no_sink_keeps_its_folders_and_digests(tmp_path):
    runs = plan([write(tmp_path, log="")], [])
    assert {run.folder: rundir.data_digest(run.config_data) for run in runs} == DIGESTS
    with_jsonl = plan([write(tmp_path)], [])
    assert [run.folder for run in with_jsonl] == list(DIGESTS)
    assert all(rundir.data_digest(run.config_data) != DIGESTS[run.folder] for run in with_jsonl)


def test_each_sink_the_spec_can_name_is_built_by_the_registry():
    assert tuple(SINKS) == SINK_KINDS


def test_a_default_run_writes_no_metrics_jsonl(tmp_path):
    (run, _) = plan([write(tmp_path, log="")], [])
    (done,) = execute_unit(Unit((run,), "loop"), tmp_path / "logs")
    assert done.status == "complete"
    assert not (tmp_path / "logs" / run.folder / METRICS).exists()
