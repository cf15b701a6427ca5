"""The JSON-lines sink: a run's scalars in metrics.jsonl in its folder, one JSON object a line, for
anything that reads JSON (pandas.read_json(path, lines=True), jq, a notebook).

A logged step is {"step", "loss", "lr"}, an evaluation {"step", <its tags>: value, ...} (train/loss,
val/accuracy, ...), and the run's end {"step", "status", <the final evaluation's tags>, <final/...,
best/...: the HParams metrics>}: the same numbers as the event file's scalars of those tags, each
at its step. JSON has no NaN: a value that is not finite is null.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.core.status import Status
from trainer.spec.schema import LogSettings
from trainer.training.sink import Captured, Evaluation, Sink

METRICS = "metrics.jsonl"


class JsonLinesSink:
    """Writes a run's losses, learning rates, evaluations and final metrics into metrics.jsonl."""

    def __init__(self, folder: str | Path, settings: LogSettings, hparams: dict[str, Any], config_text: str):
        self.path = Path(folder) / METRICS
        self.every = settings.every
        self.file: Any = None
        self.optimizer: Any = None
        self.tags: list[str] = []
        self.rates: list[tuple[int, float]] = []  # captured logged steps: (step, learning rate)

    def begin(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        eval_tags: list[str],
        capturing: bool = True,
        resume: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        """Start the file; a resumed run's is cut back to what was written when its checkpoint was
        taken, so that the steps logged since are logged again, once."""
        self.optimizer, self.tags = optimizer, list(eval_tags)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        if resume is None:
            flags |= os.O_TRUNC
        self.file = os.fdopen(os.open(self.path, flags, 0o644), "ab")
        if resume is not None:
            self.file.truncate(min(int(resume[1].get("bytes", 0)), os.fstat(self.file.fileno()).st_size))

    def state(self) -> dict[str, Any]:
        """Where a resumed run's file goes on from: its length now."""
        self.file.flush()
        return {"bytes": os.fstat(self.file.fileno()).st_size}

    def writer(self) -> None:
        """No SummaryWriter of its own: a hook's writer is TensorBoard's."""
        return None

    def capture(self, step: int) -> None:
        if step % self.every == 0:
            self.rates.append((step, float(self.optimizer.param_groups[0]["lr"])))

    def write(
        self, first_step: int, losses: list[float], evaluations: list[Evaluation], last_step: int
    ) -> None:
        steps = np.array([s for s, _ in self.rates], dtype=np.int64)
        rates = np.array([r for _, r in self.rates], dtype=np.float64)
        self.rates = []
        eval_steps = np.array([ev.step for ev in evaluations], dtype=np.int64)
        values = np.array([ev.values for ev in evaluations], dtype=np.float64).reshape(len(evaluations), -1)
        self._write(
            first_step, np.asarray(losses, dtype=np.float64), steps, rates, eval_steps, values, last_step
        )

    def _write(
        self,
        first_step: int,
        losses: np.ndarray,
        steps: np.ndarray,
        rates: np.ndarray,
        eval_steps: np.ndarray,
        eval_values: np.ndarray,
        last_step: int,
    ) -> None:
        """The logged steps among `steps` (with their rates) and the evaluations, up to last_step."""
        lines: list[tuple[int, int, dict[str, Any]]] = []
        for step, lr in zip(steps.tolist(), rates.tolist()):
            if step % self.every == 0 and step <= last_step:
                lines.append((step, 0, {"step": step, "loss": _number(losses[step - first_step]), "lr": lr}))
        for step, values in zip(eval_steps.tolist(), eval_values.tolist()):
            if step <= last_step:
                lines.append((step, 1, {"step": step, **dict(zip(self.tags, map(_number, values)))}))
        lines.sort(key=lambda line: line[:2])
        self.file.write(b"".join(json.dumps(line[2]).encode() + b"\n" for line in lines))
        self.file.flush()

    def finish(self, status: Status, steps: int, metrics: dict[str, Any], final: Evaluation | None) -> None:
        """The run's end: its status, its final evaluation and its HParams metrics."""
        line: dict[str, Any] = {"step": steps, "status": Status(status).value}
        if status == Status.COMPLETE and final is not None:
            line.update(zip(self.tags, map(_number, final.values)))
        line.update(
            (tag, v) for tag, v in metrics.items() if "/" in tag and v is not None and math.isfinite(v)
        )
        self.file.write(json.dumps(line).encode() + b"\n")
        self.file.flush()

    def fail(self, status: Status) -> None:
        """The end of a run that failed, where its file began."""
        if self.file is not None:
            self.finish(status, 0, {}, None)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    @staticmethod
    def write_group(
        sinks: list[Sink],
        first_step: int,
        losses: np.ndarray,
        eval_steps: np.ndarray,
        eval_values: np.ndarray,
        last_steps: np.ndarray,
        captured: Captured,
    ) -> None:
        """Each run's chunk into its own file."""
        for r, sink in enumerate(sinks):
            assert isinstance(sink, JsonLinesSink)
            rates = captured.rates[r]
            sink._write(
                first_step, losses[r], captured.steps, rates, eval_steps, eval_values[r], int(last_steps[r])
            )


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
