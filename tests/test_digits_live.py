"""The digits experiment as a user meets it: `make sweep`'s spec run by the real CLI, read by a real
TensorBoard server (validation accuracy columns in HParams, the hook's confusion matrix in IMAGES)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from tensorboard_server import TensorBoardServer

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]


def test_digits_shows_validation_accuracy_columns_and_confusion_matrices(tmp_path):
    logdir = tmp_path / "logs"
    # One epoch and one seed keep it short; everything else is the spec as shipped.
    command = [
        sys.executable,
        "-m",
        "trainer",
        "sweep",
        str(PROJECT / "experiments/digits.yaml"),
        "--logdir",
        str(logdir),
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "train.seed=0",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = {
        f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
        for p in logdir.glob("digits/*/record.json")
    }
    assert len(records) == 4 and all(r["status"] == "complete" for r in records.values())
    with TensorBoardServer(logdir, tmp_path / "tensorboard.log") as server:
        groups = server.wait_loaded(set(records), timeout=120)
        columns = {m["name"]["tag"]: m for m in server.experiment()["metricInfos"]}
        assert {"final/val/accuracy", "best/val/accuracy", "final/val/loss", "best/val/loss"} <= set(columns)
        assert columns["best/val/accuracy"]["displayName"] == "best val/accuracy"
        assert "final/weight_distance" not in columns and "final/converged" not in columns
        for group in groups["sessionGroups"]:
            if not group["name"].startswith("digits/"):
                continue
            values = {m["name"]["tag"]: m["value"] for m in group["sessions"][0]["metricValues"]}
            record = records[group["name"]]
            assert values["final/val/accuracy"] == pytest.approx(record["metrics"]["final/val/accuracy"])
            assert values["best/val/accuracy"] == pytest.approx(record["metrics"]["best/val/accuracy"])
        images = server.get("/data/plugin/images/tags")
        for run in records:
            assert "confusion_matrix" in images[run], run
            steps = server.get(
                f"/data/plugin/images/images?run={urllib.request.quote(run)}&tag=confusion_matrix&sample=0"
            )
            assert [s["step"] for s in steps] == [0, 23]  # each evaluation: start and end of the epoch
            picture = urllib.request.urlopen(
                server.url("/data/plugin/images/individualImage?" + steps[-1]["query"]), timeout=30
            ).read()
            assert picture[:8] == b"\x89PNG\r\n\x1a\n"
