"""Results as data: the Python API's DataFrames read back against the records and the event files,
`status --format csv|json` read back with the csv and json modules, and `compare` of two folders."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_code_identity import hooked_spec
from test_faults import start, toy_spec, trainer, wait_until

import trainer as api

pytestmark = pytest.mark.slow

METRIC = """\
import torch


def scores(output, target):
    error = (output.squeeze(-1) - target).abs()
    return {"within_half": float((error < 0.5).float().mean()), "worst": float(error.max())}


scores.greater_is_better = {"within_half": True, "worst": False}
"""

SPEC = {
    "name": "api",
    "data": {"kind": "synthetic", "rows": 60, "features": 3, "noise": 0.1, "validation": 0.25},
    "model": {"kind": "linear", "bias": True},
    "loss": {"kind": "mse"},
    "optimizer": {"kind": "sgd", "lr": 0.05},
    "train": {"steps": 200, "batch_size": 8},
    "eval": {"every": 50, "metrics": ["mae", "metrics:scores"]},
    "log": {"every": 10, "histograms_every": 0},
    "sweep": {"optimizer.lr": [0.05, 1000.0], "train.seed": [0, 1]},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The SPEC swept from Python, in a folder of its own (the current folder holds the user's metric)."""
    folder = tmp_path_factory.mktemp("api")
    (folder / "metrics.py").write_text(METRIC)
    here = os.getcwd()
    os.chdir(folder)
    try:
        frame = api.sweep(SPEC, logdir="logs", quiet=True)
    finally:
        os.chdir(here)
    return folder, frame


def records(folder):
    return {
        p.parent.name: json.loads(p.read_text())
        for p in sorted((folder / "logs" / "api").glob("*/record.json"))
    }


def test_sweep_returns_one_typed_row_per_run_as_its_record_says(swept):
    folder, frame = swept
    assert isinstance(frame, pd.DataFrame) and len(frame) == 4
    assert list(frame.columns[:8]) == [
        "experiment",
        "run",
        "state",
        "steps",
        "time_s",
        "engine",
        "device",
        "code",
    ]
    assert frame["optimizer.lr"].dtype == float and frame["train.seed"].dtype == float
    assert frame["final/val/loss"].dtype == float
    found = records(folder)
    for row in frame.itertuples(index=False):
        record = found[row.run]
        assert row.state == record["status"]
        for key, value in record["metrics"].items():
            if "/" not in key:
                continue
            got = frame.loc[frame["run"] == row.run, key].item()
            if value is None or isinstance(value, bool):
                assert value is None and math.isnan(got) or got == float(value), key
            else:
                assert got == pytest.approx(value), key
    # The user's metric is there, by its own names, for the split that ranks runs.
    assert {"best/val/within_half", "final/val/worst"} <= set(frame.columns)
    diverged = frame[frame["optimizer.lr"] == 1000.0]
    assert set(diverged["state"]) == {"diverged"}
    assert diverged["final/val/loss"].isna().all()  # NaN where a run has no value
    assert api.runs(folder / "logs").equals(frame)


def test_curves_are_the_event_files_points_as_tensorboards_reader_reads_them(swept):
    folder, _ = swept
    curves = api.curves(folder / "logs", tags=["loss", "val/mae", "w/0"])
    assert list(curves.columns) == ["experiment", "run", "tag", "step", "value"]
    for run in ["lr=0.05,seed=0", "lr=0.05,seed=1"]:
        reader = EventAccumulator(str(folder / "logs" / "api" / run), size_guidance={"scalars": 0})
        reader.Reload()
        for tag in ["loss", "val/mae", "w/0"]:
            mine = curves[(curves["run"] == run) & (curves["tag"] == tag)]
            assert list(zip(mine["step"], mine["value"])) == [(e.step, e.value) for e in reader.Scalars(tag)]
    every = api.curves(folder / "logs", runs=["api/lr=0.05,seed=0"])
    assert set(every["run"]) == {"lr=0.05,seed=0"} and {"loss", "val/loss", "w/b"} <= set(every["tag"])


def test_curves_of_a_resumed_run_hold_each_step_once(tmp_path):
    spec = toy_spec(tmp_path, "train.seed: [0]", steps=60000, every=10)
    spec.write_text(
        spec.read_text().replace("histograms_every: 0}", "histograms_every: 0, checkpoint_every: 3000}")
    )
    folder = tmp_path / "logs" / "toy" / "seed=0"
    sweep = start(tmp_path, ["sweep", "toy.yaml", "--logdir", "logs", "--workers", "1"])
    try:
        wait_until(lambda: (folder / "resume.pt").exists(), "a checkpoint was taken", sweep)
    finally:
        os.killpg(sweep.process.pid, signal.SIGKILL)
        sweep.process.wait()
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0 and "went on from a checkpoint" in out, out + err
    curves = api.curves(tmp_path / "logs", tags=["loss"])
    steps = list(curves["step"])
    assert steps == list(range(0, 60000, 10))
    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    reader.Reload()
    assert list(curves["value"]) == [e.value for e in reader.Scalars("loss")]


def test_report_gives_each_group_its_statistics_over_its_seeds(swept):
    folder, frame = swept
    found = api.report(folder / "logs", out=folder / "report")
    assert (folder / "report" / "report.md").exists()
    best = found.iloc[0]
    assert best["experiment"] == "api" and best["rank"] == 1 and best["group"] == "lr=0.05"
    assert best["runs"] == 2 and best["metric"] == "final/val/loss"
    values = frame.loc[frame["optimizer.lr"] == 0.05, "final/val/loss"]
    assert best["mean"] == pytest.approx(values.mean()) and best["std"] == pytest.approx(values.std())
    worst = found[found["group"].str.startswith("lr=1000")].iloc[0]
    assert worst["complete"] == 0 and math.isnan(worst["mean"])


def test_errors_are_sentences_not_tracebacks(swept, tmp_path):
    folder, _ = swept
    with pytest.raises(api.UserError, match=r"^logdir: .*nowhere is no folder \(it does not exist\)$"):
        api.runs(tmp_path / "nowhere")
    with pytest.raises(api.UserError, match=r"experiment: no experiment 'apy' in .*; it holds api"):
        api.runs(folder / "logs", experiment="apy")
    with pytest.raises(api.UserError, match=r"\(the spec mapping\): train.steps: must be a whole number"):
        api.sweep({**SPEC, "train": {"steps": "many"}}, logdir=tmp_path / "logs")
    with pytest.raises(
        api.UserError,
        match=r"replace them:  sweep\(\.\.\., force=True\)\n  or keep both:  sweep\(\.\.\., overrides=\{'name': 'api-2'\}\)",
    ):
        here = os.getcwd()
        os.chdir(folder)  # the spec's user metric is looked up from here
        try:
            api.sweep({**SPEC, "train": {"steps": 150, "batch_size": 8}}, logdir="logs", quiet=True)
        finally:
            os.chdir(here)
    with pytest.raises(api.UserError, match=r"^overrides: 5 is no KEY=VALUE text; give texts such as"):
        api.sweep(SPEC, logdir=tmp_path / "logs", overrides=[5])
    with pytest.raises(api.UserError, match=r"^tags: no run logs 'val/mea' \(did you mean 'val/mae'\?\)"):
        api.curves(folder / "logs", tags=["val/mea"])
    with pytest.raises(api.UserError, match=r"^runs: no run 'lr=0.5,seed=0' in "):
        api.curves(folder / "logs", runs="lr=0.5,seed=0")
    with pytest.raises(
        api.UserError, match=r"^experiment: neither .* has an experiment 'apy' \(did you mean 'api'\?\)"
    ):
        api.compare(folder / "logs", folder / "logs", experiment="apy")
    assert not (tmp_path / "logs").exists()


def test_status_csv_and_json_read_back_with_the_standard_modules(swept):
    folder, frame = swept
    logs = str(folder / "logs")
    code, out, err = trainer(folder, "status", logs, "--format", "csv")
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["run"] for r in table] == list(frame["run"])
    assert float(table[0]["final/val/loss"]) == pytest.approx(frame["final/val/loss"][0])
    code, out, err = trainer(
        folder,
        "status",
        logs,
        "--format",
        "json",
        "--columns",
        "run,lr,best/val/within_half",
        "--sort",
        "best/val/worst",
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert list(lines[0]) == ["run", "optimizer.lr", "best/val/within_half"]
    ordered = frame.sort_values("best/val/worst", na_position="last")
    assert [line["run"] for line in lines] == list(ordered["run"])
    assert lines[-1]["best/val/within_half"] is None or isinstance(lines[-1]["best/val/within_half"], float)
    code, out, err = trainer(folder, "status", logs, "--sort", "best/val/f1")
    assert code == 2 and "--sort best/val/f1: no column, setting or metric of that name" in err
    assert "Traceback" not in err


def test_compare_matches_configurations_and_names_a_code_change(tmp_path):
    for who, version, lrs in (("alice", 1, "[0.1, 0.2]"), ("bob", 2, "[0.2, 0.3]")):
        spec = hooked_spec(tmp_path / who, version=version)
        spec.write_text(
            spec.read_text().replace("  train.seed: [0, 1]", f"  train.seed: [0, 1]\n  optimizer.lr: {lrs}")
        )
        code, out, err = trainer(
            tmp_path / who, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1", "--quiet"
        )
        assert code == 0, out + err
    found = api.compare(tmp_path / "alice/logs", tmp_path / "bob/logs")
    loss = found[found["metric"] == "final/train/loss"].set_index("group")
    assert set(loss.index) == {"lr=0.1", "lr=0.2", "lr=0.3"}
    shared = loss.loc["lr=0.2"]
    assert shared["runs a"] == 2 and shared["runs b"] == 2 and shared["same code"] == False  # noqa: E712
    assert shared["code a"] != shared["code b"]
    assert shared["difference"] == pytest.approx(0.0, abs=1e-12)  # the hook logs; it changes no number
    assert loss.loc["lr=0.1", "runs b"] == 0 and math.isnan(loss.loc["lr=0.1", "difference"])
    code, out, err = trainer(tmp_path, "compare", "alice/logs", "bob/logs")
    assert code == 0, err
    assert f"{shared['code a']} -> {shared['code b']}" in out
    assert "only in alice/logs: toy/lr=0.1" in out and "only in bob/logs: toy/lr=0.3" in out
