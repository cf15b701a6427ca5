"""The HParams view as people see it: a real TensorBoard server over log folders made by the real CLI.

Every assertion goes through TensorBoard's HTTP API, the same calls its HParams dashboard makes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from tensorboard_server import TensorBoardServer

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
# Waits are generous because the machine may be busy; each ends as soon as its condition holds.
LOAD_TIMEOUT = 120.0
COMMAND_TIMEOUT = 180.0
METRIC_TAGS = {
    "final/train/loss",
    "best/train/loss",
    "final/weight_distance",
    "final/converged",
    "final/converged_step",
    "final/diverged",
}
# A pruned search's runs have two more.
RECORDED_TAGS = METRIC_TAGS | {"final/pruned", "final/steps_trained"}
# TensorBoard's HParams table shows this many hparam columns at first.
SHOWN_COLUMNS = 5
EXPECTED_STATUS = {
    "complete": "STATUS_SUCCESS",
    "diverged": "STATUS_FAILURE",
    "failed": "STATUS_FAILURE",
    "pruned": "STATUS_SUCCESS",
}
CRASHING_RUN = "batch_size=1,bias=true"

GRID = """
    name: grid
    data: {kind: seed_toy}
    model: {kind: linear}
    loss: {kind: mse, reduction: mean}
    optimizer: {kind: sgd, lr: 0.05}
    train: {steps: 60}
    log: {every: 1, histograms_every: 20}
    sweep:
      train.batch_size: [1, full]
      model.bias: [false, true]
"""
BLOWUP = """
    name: blowup
    data: {kind: seed_toy}
    loss: {kind: mse, reduction: sum}
    optimizer: {kind: sgd, lr: 100.0}
    train: {steps: 60, batch_size: full}
"""
SHARED = """
    name: shared
    data: {{kind: seed_toy}}
    loss: {{kind: mse, reduction: mean}}
    optimizer: {{kind: sgd, lr: {lr}}}
    train: {{steps: 60}}
    sweep:
      train.batch_size: [1, full]
"""
# `python -m trainer` with one run's worker process dying after its curves, before its final
# metrics, as on a segfault or the OOM killer. Workers (forked by a fork server, or spawned) import this file as their main module, so the
# patch below reaches them; the CLI itself runs only in the parent.
CRASHING_CLI = f"""
import os
import sys

import trainer.training.loop

_train = trainer.training.loop.train


class DyingSink:
    def __init__(self, sink):
        self.sink = sink

    def __getattr__(self, name):
        return getattr(self.sink, name)

    def finish(self, *args, **kwargs):
        os._exit(3)


def train(run, sink=None, *args, **kwargs):
    return _train(run, DyingSink(sink) if run.name == {CRASHING_RUN!r} else sink, *args, **kwargs)


trainer.training.loop.train = train

if __name__ == "__main__":
    from trainer.cli.commands import main
    from trainer.executors import workers

    # The workers' fork server imports this file too; it finds it on PYTHONPATH, not in sys.path.
    here, path = os.path.dirname(__file__), os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, path]))
    workers.WORKER_MODULES.append("crashing_cli")
    sys.exit(main(sys.argv[1:]))
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")])),
    }


def cli(*args: Any, script: Path | None = None) -> subprocess.Popen:
    """Start the project's CLI (or a script wrapping it) in a process of its own."""
    command = [sys.executable, str(script)] if script else [sys.executable, "-m", "trainer"]
    return subprocess.Popen(
        [*command, *map(str, args)],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    out, _ = process.communicate(timeout=COMMAND_TIMEOUT)
    return process.returncode, out


def records(logdir: Path) -> dict[str, dict[str, Any]]:
    """Each run folder's record.json, by the folder's path relative to the log folder."""
    return {
        str(p.parent.relative_to(logdir)): json.loads(p.read_text()) for p in logdir.glob("*/*/record.json")
    }


# --- the server -------------------------------------------------------------------------------


@pytest.fixture
def tensorboard(tmp_path: Path):
    """start(logdir) -> a TensorBoard server that has loaded every run of logdir; all are stopped after."""
    servers: list[TensorBoardServer] = []

    def start(logdir: Path) -> TensorBoardServer:
        server = TensorBoardServer(logdir, tmp_path / f"tensorboard-{len(servers)}.log")
        servers.append(server)
        try:
            server.wait_loaded({".", *records(logdir)}, LOAD_TIMEOUT)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


# --- what the HParams view must show ----------------------------------------------------------


def every_complete_run_has(recorded: dict[str, dict[str, Any]]) -> set[str]:
    """The metric tags for which every complete run recorded a value."""
    complete = [r for r in recorded.values() if r["status"] == "complete"]
    return {tag for tag in RECORDED_TAGS if all(r["metrics"].get(tag) is not None for r in complete)}


def swept_settings(recorded: dict[str, dict[str, Any]]) -> set[str]:
    """The hparams whose values a sweep varied within an experiment."""
    found = set()
    for experiment in {r["experiment"] for r in recorded.values()}:
        runs = [r for r in recorded.values() if r["experiment"] == experiment]
        for key in {k for r in runs for k in r["swept"]}:
            if len({json.dumps(r["hparams"].get(key)) for r in runs}) > 1:
                found.add(key)
    return found


def check_hparams_view(server: TensorBoardServer, logdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Assert the HParams view shows each run of logdir once, as recorded; returns its columns and rows."""
    recorded = records(logdir)
    experiment = server.experiment()
    columns = {info["name"]: info for info in experiment["hparamInfos"]}
    declared = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert declared == every_complete_run_has(recorded)
    assert all(m["name"].get("group", "") == "" for m in experiment["metricInfos"])
    # TensorBoard shows at first the five columns its API gives first (those marked as differing,
    # by name): what the sweeps varied, then (if room is left) the experiment and other settings.
    marked = [name for name, info in columns.items() if info["differs"]]
    assert [info["name"] for info in experiment["hparamInfos"]][: len(marked)] == sorted(marked)
    swept = swept_settings(recorded)
    assert swept <= set(marked) if len(swept) <= SHOWN_COLUMNS else set(marked) < swept
    differing = [
        n
        for n in columns
        if len({json.dumps(r["hparams"][n]) for r in recorded.values() if n in r["hparams"]}) > 1
    ]
    assert len(marked) == min(SHOWN_COLUMNS, len(differing))
    expected_type = {bool: "DATA_TYPE_BOOL", float: "DATA_TYPE_FLOAT64", str: "DATA_TYPE_STRING"}
    for name, info in columns.items():
        values = {json.dumps(r["hparams"][name]) for r in recorded.values() if name in r["hparams"]}
        assert values, f"column {name} is held by no run"
        types = {type(json.loads(v)) for v in values}
        assert types == {bool} or types == {str} or types <= {int, float}, (name, values)
        assert info["type"] == expected_type[float if types <= {int, float} else types.pop()], info
        assert len(values) > 1 or not info["differs"], info

    answer = server.session_groups()
    groups = answer["sessionGroups"]
    names = [g["name"] for g in groups]
    assert sorted(names) == sorted(recorded) and answer["totalSize"] == len(recorded)  # each once
    by_run = {}
    for group in groups:
        record = recorded[group["name"]]
        (session,) = group["sessions"]
        assert session["name"] == group["name"]
        assert session["status"] == EXPECTED_STATUS[record["status"]], group["name"]
        assert set(group["hparams"]) == set(record["hparams"])
        for key, value in record["hparams"].items():
            shown = group["hparams"][key]
            assert shown == value and type(shown) in (
                (bool,) if isinstance(value, bool) else (str,) if isinstance(value, str) else (int, float)
            ), key
        metrics = {m["name"]["tag"]: m["value"] for m in session.get("metricValues", [])}
        # TensorBoard answers with the declared metrics only (those every complete run has).
        expected = {k: float(v) for k, v in record["metrics"].items() if k in declared and v is not None}
        assert metrics == pytest.approx(expected, rel=1e-6), group["name"]
        by_run[group["name"]] = group
    # Parallel coordinates and the scatter matrix draw the sessions that have every declared metric.
    drawn = [
        g for g in groups if declared <= {m["name"]["tag"] for m in g["sessions"][0].get("metricValues", [])}
    ]
    assert len(drawn) == sum(r["status"] == "complete" for r in recorded.values())

    tags = server.get("/data/plugin/scalars/tags")
    assert sorted(run for run in tags if run != ".") == sorted(recorded)
    for run, run_tags in tags.items():
        if run != ".":
            assert "loss" in run_tags and "w/0" in run_tags  # curves, and not columns
    assert not METRIC_TAGS & set(tags.get(".", {}))
    runs = server.get("/data/runs")
    assert len(runs) == len(set(runs))
    return columns, by_run


def test_hparams_view_of_a_sweep_with_failures_and_of_merged_folders(tmp_path, tensorboard):
    specs = tmp_path / "experiments"
    grid, blowup = write(specs / "grid.yaml", GRID), write(specs / "blowup.yaml", BLOWUP)
    wrapper = write(tmp_path / "crashing_cli.py", CRASHING_CLI)
    logs = tmp_path / "logs"
    alice, bob, team = tmp_path / "alice", tmp_path / "bob", tmp_path / "team"
    teammates = [
        cli(
            "sweep",
            write(tmp_path / name / "shared.yaml", SHARED.format(lr=lr)),
            "--logdir",
            tmp_path / name / "logs",
            "--workers",
            "1",
            "--quiet",
        )
        for name, lr in (("alice", 0.05), ("bob", 0.02))
    ]

    code, out = finish(
        cli("sweep", grid, blowup, "--logdir", logs, "--workers", "2", "--quiet", script=wrapper)
    )
    assert code == 1, out  # one run failed
    statuses = {folder: r["status"] for folder, r in records(logs).items()}
    assert statuses == {
        "grid/batch_size=1,bias=false": "complete",
        "grid/batch_size=full,bias=false": "complete",
        "grid/batch_size=full,bias=true": "complete",
        f"grid/{CRASHING_RUN}": "failed",
        "blowup/base": "diverged",
    }, out
    assert "worker process" in records(logs)[f"grid/{CRASHING_RUN}"]["error"]

    columns, groups = check_hparams_view(tensorboard(logs), logs)
    assert {"experiment", "train.batch_size", "model.bias", "loss.reduction", "optimizer.lr"} <= set(columns)
    assert not {"loss", "lr", "w/0", "g/0", "w/b", "train/loss"} & set(columns)
    assert groups["blowup/base"]["hparams"]["optimizer.lr"] == 100.0
    assert groups[f"grid/{CRASHING_RUN}"]["hparams"]["model.bias"] is True
    assert groups[f"grid/{CRASHING_RUN}"]["sessions"][0].get("metricValues", []) == []

    for process in teammates:
        code, out = finish(process)
        assert code == 0, out
    code, out = finish(cli("merge", alice / "logs", bob / "logs", "--into", team))
    assert code == 0, out
    merged = records(team)
    assert len(merged) == 4 and len({r["config_digest"] for r in merged.values()}) == 4
    sources = {r["config_digest"]: r for d in (alice, bob) for r in records(d / "logs").values()}
    for folder, record in merged.items():
        assert record["metrics"] == sources[record["config_digest"]]["metrics"], folder
    columns, groups = check_hparams_view(tensorboard(team), team)
    assert columns["optimizer.lr"]["differs"] and columns["train.batch_size"]["differs"]
    shown = {(g["hparams"]["optimizer.lr"], g["hparams"]["train.batch_size"]) for g in groups.values()}
    assert shown == {(0.05, 1.0), (0.05, 10.0), (0.02, 1.0), (0.02, 10.0)}
    assert {"shared/batch_size=1", "shared/batch_size=full"} <= set(groups)
    for folder, group in groups.items():
        shown_metrics = {m["name"]["tag"] for m in group["sessions"][0]["metricValues"]}
        converged = {"final/converged_step"} if merged[folder]["metrics"]["final/converged"] else set()
        assert shown_metrics == METRIC_TAGS - {"final/converged_step"} | converged, folder


SEEDED = """
    name: seeded
    data: {kind: seed_toy}
    loss: {kind: mse, reduction: mean}
    optimizer: {kind: sgd, lr: 0.05}
    train: {steps: 40}
    log: {histograms_every: 0}
    sweep:
      train.batch_size: [1, full]
      train.seed: [0, 1]
"""


def test_seed_bands_show_as_margin_charts_and_not_as_sessions(tmp_path, tensorboard):
    from trainer.cli.commands import main
    from trainer.reporting.bands import tags

    spec = tmp_path / "seeded.yaml"
    spec.write_text(textwrap.dedent(SEEDED))
    logdir = tmp_path / "logs"
    assert main(["sweep", str(spec), "--logdir", str(logdir), "--workers", "1", "--quiet"]) == 0
    server = tensorboard(logdir)
    bands = {"_seeds/seeded/batch_size=1", "_seeds/seeded/batch_size=full"}
    server.wait_for(lambda: bands <= set(server.get("/data/runs")), "list the band runs", LOAD_TIMEOUT)
    layout = server.get("/data/plugin/custom_scalars/layout")
    charts = [chart for category in layout["category"] for chart in category["chart"]]
    value, low, high = tags("seeded", "train/loss")
    assert [c["margin"]["series"] for c in charts] == [[{"value": value, "lower": low, "upper": high}]]
    sessions = server.session_groups()
    assert sessions["totalSize"] == 4
    assert all(not g["name"].startswith("_seeds") for g in sessions["sessionGroups"])
    data = server.get(f"/data/plugin/custom_scalars/scalars?run=_seeds/seeded/batch_size%3D1&tag={value}")
    events = data["tag_to_events"]  # the tag is a regular expression: the band's bounds match it too
    assert {tag: [e[1] for e in events[tag]] for tag in (value, low, high)} == {
        tag: [0, 10, 20, 30, 40] for tag in (value, low, high)
    }
