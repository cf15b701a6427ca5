"""Several sinks side by side: each is told everything, in its order in log.sinks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trainer.core.status import Status
from trainer.training.sink import Captured, Evaluation, Sink


class FanOut:
    """The sinks of one run, as one: each gets every call; a user's hook gets the first SummaryWriter."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks

    def begin(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        eval_tags: list[str],
        capturing: bool = True,
        resume: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        for i, sink in enumerate(self.sinks):
            own = None if resume is None else (resume[0], resume[1]["sinks"][i])
            sink.begin(model, optimizer, eval_tags, capturing, own)

    def state(self) -> dict[str, Any]:
        return {"sinks": [sink.state() for sink in self.sinks]}

    def writer(self) -> Any:
        return next((w for w in (sink.writer() for sink in self.sinks) if w is not None), None)

    def capture(self, step: int) -> None:
        for sink in self.sinks:
            sink.capture(step)

    def write(
        self, first_step: int, losses: list[float], evaluations: list[Evaluation], last_step: int
    ) -> None:
        for sink in self.sinks:
            sink.write(first_step, losses, evaluations, last_step)

    def finish(self, status: Status, steps: int, metrics: dict[str, Any], final: Evaluation | None) -> None:
        for sink in self.sinks:
            sink.finish(status, steps, metrics, final)

    def fail(self, status: Status) -> None:
        for sink in self.sinks:
            sink.fail(status)

    def close(self) -> None:
        """Close every sink, even where one fails to; the first failure is raised."""
        failed: OSError | None = None
        for sink in self.sinks:
            try:
                sink.close()
            except OSError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

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
        """The runs of one program share their log settings: their i-th sinks are of one class."""
        fanouts: list[Any] = sinks
        for i in range(len(fanouts[0].sinks)):
            members = [fanout.sinks[i] for fanout in fanouts]
            type(members[0]).write_group(
                members, first_step, losses, eval_steps, eval_values, last_steps, captured
            )
