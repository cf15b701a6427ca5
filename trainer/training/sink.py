"""What the training loop and the batched engine log through: the Sink protocol, its null sink,
and the values handed over (evaluations, captured steps). Neither engine knows a concrete sink:
trainer.tensorboard.sink writes these values into event files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from trainer.core.status import Status
from trainer.spec.plan import DISTANCE  # noqa: F401  (the evaluation's tag of the distance to the truth)
from trainer.training.capture import HistogramBatch


class Sink(Protocol):
    """Where a run's values go. The loop calls begin, then capture each step and write each chunk
        of steps, then finish and close; the batched engine captures for its whole group and hands each
        chunk to write_group, the sink class's way of writing many runs at once. After a fault in its run,
    the run's caller calls fail instead of finish. trainer.sinks builds the sinks log.sinks names."""

    def begin(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        eval_tags: list[str],
        capturing: bool = True,
        resume: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        """Start logging; `resume`: (the steps done, the sink's state) of a run going on from a
        checkpoint, whose events before that step are logged already."""

    def state(self) -> dict[str, Any]:
        """What the sink needs to go on from a checkpoint taken now (plain values)."""

    def writer(self) -> Any:
        """The SummaryWriter given to a user's hook, or None where nothing is written."""

    def capture(self, step: int) -> None: ...

    def write(
        self, first_step: int, losses: list[float], evaluations: list[Evaluation], last_step: int
    ) -> None: ...

    def finish(
        self, status: Status, steps: int, metrics: dict[str, Any], final: Evaluation | None
    ) -> None: ...

    def fail(self, status: Status) -> None:
        """End what the sink wrote after a fault in its run, whether or not begin() came first."""

    def close(self) -> None: ...

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
        """Write a chunk of captured steps for the runs of one program, each into its own sink."""


@dataclass(slots=True)
class Evaluation:
    """An evaluation's values at one step, in the order of the evaluator's tags (the training
    loss first)."""

    step: int
    values: list[float]

    @property
    def loss(self) -> float:
        """The loss on all training rows, mean per row."""
        return self.values[0]


class NullSink:
    """Writes nothing; the loop computes exactly what it computes with a real sink."""

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
        """Nothing to write for a group of runs either."""

    def begin(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        eval_tags: list[str],
        capturing: bool = True,
        resume: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {}

    def writer(self) -> None:
        """No SummaryWriter: with logging off, a user's hook is not called."""
        return None

    def capture(self, step: int) -> None:
        pass

    def write(
        self, first_step: int, losses: list[float], evaluations: list[Evaluation], last_step: int
    ) -> None:
        pass

    def finish(self, status: Status, steps: int, metrics: dict[str, Any], final: Evaluation | None) -> None:
        pass

    def fail(self, status: Status) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Captured:
    """Captured steps, of one run or of the runs of one program (which log the same steps): each
    step's number and wall time; per run, its learning rate and logged row at each step (see
    trainer.capture); and the histograms of the histogram steps, run after run."""

    steps: np.ndarray  # [steps]
    walls: np.ndarray  # [steps]
    rates: np.ndarray  # [runs, steps]
    rows: np.ndarray  # [runs, steps, columns]
    histograms: HistogramBatch | None  # a row per run and histogram step, run-major

    def part(self, start: int, stop: int) -> Captured:
        """Runs start .. stop - 1 of them."""
        histograms = self.histograms
        if histograms is not None:
            marked = len(histograms) // self.rates.shape[0]
            histograms = histograms.part(start * marked, stop * marked)
        return Captured(self.steps, self.walls, self.rates[start:stop], self.rows[start:stop], histograms)


def split_parameters(
    model: torch.nn.Module, max_elements: int
) -> tuple[list[tuple[str, torch.nn.Parameter]], list[tuple[str, torch.nn.Parameter]]]:
    """The parameters logged element by element, and those logged as norms, by name."""
    named = list(model.named_parameters())
    return (
        [(n, p) for n, p in named if p.numel() <= max_elements],
        [(n, p) for n, p in named if p.numel() > max_elements],
    )
