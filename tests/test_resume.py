"""Long runs survive: a run killed with SIGKILL at any moment (before its first checkpoint, between
two, while one is being written) goes on from its last checkpoint when the sweep runs again, and
ends exactly as a run that was never stopped: the same final weights, the same series of every
scalar and histogram read back with tensorboard's reader, one HParams session, no step twice."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_faults import start, trainer, wait_until

import trainer as api

pytestmark = pytest.mark.slow

SPEC = """\
name: long
data: {{kind: synthetic, rows: 400, features: 32, noise: 0.3, validation: 0.25}}
model: {{kind: 'noisy:Net'}}
loss: {{kind: mse}}
optimizer: {{kind: adam, lr: 0.003}}
schedule: {{kind: cosine}}
train: {{steps: {steps}, batch_size: 16, sampling: shuffle{early}}}
eval: {{every: 50}}
log: {{every: 5, histograms_every: 50, checkpoint_every: {every}{checkpoint}}}
"""
RUN = "long/base"
# A model that draws from every random generator a run's code may use while it trains.
MODEL = """\
import random

import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_features: int, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        if self.training:
            x = x + 0.01 * torch.randn_like(x) * (float(np.random.rand()) + random.random())
        return self.head(self.body(x))
"""


def write_spec(
    folder: Path, steps: int = 4000, every: int = 250, early: str = "", checkpoint: str = ""
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "noisy.py").write_text(MODEL)
    (folder / "long.yaml").write_text(
        SPEC.format(steps=steps, every=every, early=early, checkpoint=checkpoint)
    )
    return folder / "long.yaml"


def series(folder: Path) -> dict[str, object]:
    """Every scalar's and histogram's (step, value) series, and the HParams sessions started, as
    tensorboard's own reader shows them."""
    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    reader.Reload()
    tags = reader.Tags()
    found: dict[str, object] = {}
    for tag in tags["scalars"]:
        found[tag] = [(e.step, e.value) for e in reader.Scalars(tag)]
    for tag in tags["histograms"]:
        found[tag] = [
            (
                e.step,
                e.histogram_value.min,
                e.histogram_value.max,
                e.histogram_value.sum,
                tuple(e.histogram_value.bucket),
            )
            for e in reader.Histograms(tag)
        ]
    found["sessions"] = len(reader.Tensors("_hparams_/session_start_info"))
    return found


def record(logdir: Path) -> dict:
    return json.loads((logdir / RUN / "record.json").read_text())


def checkpoint_temporaries(folder: Path) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if n.startswith(".resume.pt.")]
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run, never stopped."""
    folder = tmp_path_factory.mktemp("reference")
    write_spec(folder)
    code, out, err = trainer(folder, "sweep", "long.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    return record(folder / "logs"), series(folder / "logs" / RUN)


def kill_when(tmp_path: Path, moment: str, delay: float) -> None:
    """Start the sweep, wait for the moment, and SIGKILL its whole process group."""
    folder = tmp_path / "logs" / RUN
    sweep = start(tmp_path, ["sweep", "long.yaml", "--logdir", "logs", "--workers", "1"])
    try:
        if moment == "before the first checkpoint":
            wait_until(lambda: (folder / "config.yaml").exists(), "the run began", sweep)
        elif moment == "between checkpoints":
            wait_until(lambda: (folder / "resume.pt").exists(), "a checkpoint was taken", sweep)
        else:  # while a checkpoint is written: its temporary file is there
            deadline = time.monotonic() + 120
            while not checkpoint_temporaries(folder):
                assert sweep.process.poll() is None and time.monotonic() < deadline, sweep.output()
        time.sleep(delay)
    finally:
        os.killpg(sweep.process.pid, signal.SIGKILL)
        sweep.process.wait()


def test_a_run_killed_at_random_moments_resumes_to_exactly_the_uninterrupted_run(tmp_path, reference):
    write_spec(tmp_path)
    moments = ["before the first checkpoint", "while a checkpoint is written", "between checkpoints"]
    chance = random.Random(23)
    for moment in moments:
        kill_when(tmp_path, moment, delay=0 if moment != "between checkpoints" else chance.uniform(0, 1.5))
    steps_left = tmp_path / "logs" / RUN / "resume.pt"
    assert steps_left.exists()  # killed with a checkpoint to go on from
    code, out, err = trainer(tmp_path, "sweep", "long.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    done = record(tmp_path / "logs")
    assert done["status"] == "complete"
    assert done["resumed"]["from_step"] > 0
    assert f"1 run went on from a checkpoint: {RUN} (from step {done['resumed']['from_step']:,})" in out
    assert not steps_left.exists()  # a finished run keeps no checkpoint to resume from

    expected_record, expected = reference
    assert done["weights_sha256"] == expected_record["weights_sha256"]
    assert done["metrics"] == expected_record["metrics"]
    got = series(tmp_path / "logs" / RUN)
    assert got.keys() == expected.keys()
    for tag in expected:
        assert got[tag] == expected[tag], tag
    assert got["sessions"] == 1
    for tag, points in got.items():
        if isinstance(points, list):
            steps = [p[0] for p in points]
            assert len(steps) == len(set(steps)), f"{tag} logs a step twice"
    code, out, err = trainer(tmp_path, "status", "logs", "--verify")
    assert code == 0 and "1 run: 1 complete" in out, out + err


def test_a_run_stopped_with_sigterm_goes_on_from_the_step_it_stopped_at(tmp_path, reference):
    write_spec(tmp_path, every="auto")  # no checkpoint before the stop: the stop takes one
    folder = tmp_path / "logs" / RUN
    sweep = start(tmp_path, ["sweep", "long.yaml", "--logdir", "logs", "--workers", "1"])
    wait_until(lambda: len(read_steps(folder)) > 300, "the run logged some steps", sweep)
    os.killpg(sweep.process.pid, signal.SIGTERM)
    code, out, err = sweep.finish()
    assert code == 130, out + err
    stopped = record(tmp_path / "logs")
    assert stopped["status"] == "interrupted" and (folder / "resume.pt").exists()
    code, out, err = trainer(tmp_path, "sweep", "long.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    done = record(tmp_path / "logs")
    assert done["resumed"] == {"from_step": stopped["steps_done"]}
    assert done["weights_sha256"] == reference[0]["weights_sha256"]
    assert series(folder) == reference[1]


def read_steps(folder: Path) -> list[int]:
    """The steps of the minibatch loss logged so far (the file the run is writing)."""
    from test_faults import read_events

    try:
        return read_events(folder)[0].get("loss", [])
    except Exception:  # a record half-written as it is read
        return []


def test_a_checkpoint_of_another_configuration_or_a_damaged_one_is_not_resumed_from(tmp_path, reference):
    write_spec(tmp_path)
    kill_when(tmp_path, "between checkpoints", delay=0.2)
    checkpoint = tmp_path / "logs" / RUN / "resume.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # damaged
    code, out, err = trainer(tmp_path, "sweep", "long.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    assert (
        f"1 run started over:\n  {RUN}: its checkpoint resume.pt could not be used: it cannot be read" in out
    )
    done = record(tmp_path / "logs")
    assert "resumed" not in done and done["started_over"].startswith(
        "its checkpoint resume.pt could not be used"
    )
    assert done["weights_sha256"] == reference[0]["weights_sha256"]

    # A checkpoint of the same run name under another configuration (its steps changed) is refused.
    other = tmp_path / "other"
    write_spec(other, steps=4000)
    kill_when(other, "between checkpoints", delay=0.2)
    write_spec(other, steps=4200)
    code, out, err = trainer(other, "sweep", "long.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    assert f"  {RUN}: its checkpoint resume.pt is of another configuration" in out
    assert record(other / "logs")["steps_done"] == 4200


def test_a_rerun_never_writes_or_reads_through_a_run_folders_symlinks(tmp_path, reference):
    """A teammate's stopped run whose event file leads to a file of yours, and whose checkpoint
    leads to /dev/zero: going on would cut that file back and append to it, or read without end;
    the run starts over instead, saying why, and your file is as it was."""
    write_spec(tmp_path)
    kill_when(tmp_path, "between checkpoints", delay=0.2)
    folder = tmp_path / "logs" / RUN
    (events,) = folder.glob("events.out.tfevents.*")
    mine = tmp_path / "mine.txt"
    mine.write_text("a file of the user's, beside the log folder\n")
    events.unlink()
    events.symlink_to(mine)
    code, out, err = trainer(tmp_path, "sweep", "long.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    assert f"  {RUN}: its event file {events.name} is not a plain file" in out, out
    assert mine.read_text() == "a file of the user's, beside the log folder\n"
    assert record(tmp_path / "logs")["weights_sha256"] == reference[0]["weights_sha256"]

    second = tmp_path / "second"
    write_spec(second)
    kill_when(second, "between checkpoints", delay=0.2)
    checkpoint = second / "logs" / RUN / "resume.pt"
    checkpoint.unlink()
    checkpoint.symlink_to("/dev/zero")
    code, out, err = trainer(second, "sweep", "long.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    assert f"  {RUN}: its checkpoint resume.pt is a symlink (not followed)" in out, out


def test_early_stopping_ends_a_run_as_complete_and_the_best_checkpoint_holds_the_best_evaluation(tmp_path):
    write_spec(
        tmp_path,
        steps=20000,
        early=", early_stopping: {metric: val/loss, patience: 3, min_delta: 0.0001}",
        checkpoint=", checkpoint: both",
    )
    code, out, err = trainer(tmp_path, "sweep", "long.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    done = record(tmp_path / "logs")
    assert done["status"] == "complete"
    stop, best = done["stopped"], done["best"]
    assert stop["step"] < 20000 and stop["reason"].startswith(
        "early stopping: val/loss did not improve by more than 0.0001 for 3 evaluations "
    )
    assert best["metric"] == "val/loss" and best["step"] <= stop["step"] - 3 * 50
    assert best["value"] == done["metrics"]["best/val/loss"]
    assert done["metrics"]["final/stopped_step"] == stop["step"]
    logged = series(tmp_path / "logs" / RUN)
    assert logged["final/stopped_step"] == [(stop["step"], float(stop["step"]))]  # an HParams metric
    curve = logged["val/loss"]
    assert curve[-1][0] == stop["step"] and min(v for _, v in curve) == pytest.approx(best["value"], rel=1e-6)
    code, out, err = trainer(tmp_path, "status", "logs")
    assert f"{stop['step']}" in out.splitlines()[1], out  # the "stopped at" column

    # The best weights reproduce the recorded best evaluation; the final ones the final one.
    import torch

    from trainer.kinds import data
    from trainer.kinds import registry as kinds

    config = json.loads((tmp_path / "logs" / RUN / "record.json").read_text())["config"]
    with kinds.searching(tmp_path):
        rows = data.load(api_config(config).data, tmp_path)
    for which, key in (("best", "best/val/loss"), ("final", "final/val/loss")):
        model = api.load_model(tmp_path / "logs" / RUN, which=which, trust_code=True, code_dir=tmp_path)
        with torch.no_grad():
            loss = torch.nn.functional.mse_loss(model(rows.validation.x).squeeze(-1), rows.validation.y)
        assert float(loss) == pytest.approx(done["metrics"][key], rel=1e-5), which


def api_config(config: dict):
    from trainer.spec.schema import Config, build

    return build(Config, config)
