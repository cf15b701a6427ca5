"""Shared helpers: specs written into tmp_path, and event files read back with tensorboard's reader."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.fixture
def write_spec(tmp_path: Path):
    """write_spec('name', 'yaml text') -> path of experiments/<name>.yaml under tmp_path."""

    def write(name: str, text: str) -> str:
        folder = tmp_path / "experiments"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def read_events(run_folder: Path) -> EventAccumulator:
    """Every scalar, histogram and tensor of a run folder, as TensorBoard would load them."""
    acc = EventAccumulator(str(run_folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(run_folder: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} for every scalar tag of a run."""
    acc = read_events(run_folder)
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.fixture
def sweeps():
    """Sweeps (processes in groups of their own) a test starts; any still running at its end, paused
    or not, are killed with their process group."""
    started: list = []
    yield started
    for sweep in started:
        if sweep.process.poll() is None:
            os.killpg(sweep.process.pid, signal.SIGCONT)
            os.killpg(sweep.process.pid, signal.SIGKILL)
            sweep.process.wait()
