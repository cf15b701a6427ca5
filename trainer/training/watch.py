"""The watched metric of a run: its best evaluation so far (with the weights there, where the best
checkpoint is kept), and early stopping once it stops improving.

The metric is train.early_stopping's, else the report's ranking metric, else the main loss
(validation where rows are held out). It is read at each evaluation as it is made, one number to
the host, so that a run stops at the evaluation that ends its patience and the best weights are
those of the best evaluation, not of the end of a chunk.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from trainer.spec.plan import RunPlan
from trainer.training.sink import DISTANCE

_REPORTED = re.compile(r"^(final|best)/(.+)$")


def watched_tag(run: RunPlan, main: str) -> tuple[str, bool | None]:
    """The evaluation tag a run watches and, where the spec says it, whether higher is better;
    `main` is the split whose values rank runs (val where rows are held out)."""
    stopping = run.config.train.early_stopping
    if stopping is not None and stopping.metric is not None:
        return stopping.metric, stopping.higher_is_better
    higher = stopping.higher_is_better if stopping is not None else None
    metric = run.report.metric
    if metric is not None and stopping is None:
        if metric == "final/weight_distance":
            return DISTANCE, False
        found = _REPORTED.match(metric)
        if found:
            return found.group(2), run.report.higher_is_better
    return f"{main}/loss", higher


class Watch:
    """Follows the watched value over a run's evaluations: the best so far, the weights there (with
    `keep_best`) and, with train.early_stopping, when the run is to stop."""

    def __init__(
        self,
        run: RunPlan,
        tags: list[str],
        better: dict[str, bool],
        main: str,
        model: torch.nn.Module,
        keep_best: bool,
    ):
        self.tag, higher = watched_tag(run, main)
        if self.tag not in tags:
            key = "train.early_stopping.metric" if run.config.train.early_stopping else "report.metric"
            raise ValueError(
                f"{key}: {self.tag!r} is not among this run's evaluation values ({', '.join(tags)})"
            )
        self.index = tags.index(self.tag)
        self.higher = better.get(self.tag, False) if higher is None else higher
        self.stopping = run.config.train.early_stopping
        self.model = model
        self.keep_best = keep_best
        self.best: tuple[int, float] | None = None  # (step, value)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.waited = 0  # evaluations since the best

    def _improves(self, value: float) -> bool:
        if value != value:  # NaN is never better
            return False
        if self.best is None:
            return True
        margin = self.stopping.min_delta if self.stopping is not None else 0.0
        return value > self.best[1] + margin if self.higher else value < self.best[1] - margin

    def seen(self, step: int, values: torch.Tensor) -> str | None:
        """Take the evaluation at `step` (its values still on the device); the reason to stop the
        run here, or None."""
        value = float(values[self.index])
        if self._improves(value):
            self.best, self.waited = (step, value), 0
            if self.keep_best:
                self.best_state = {k: t.detach().clone() for k, t in self.model.state_dict().items()}
            return None
        self.waited += 1
        if self.stopping is not None and self.waited >= self.stopping.patience:
            assert self.best is not None
            by = f" by more than {self.stopping.min_delta:g}" if self.stopping.min_delta else ""
            return (
                f"early stopping: {self.tag} did not improve{by} for {self.waited} evaluations "
                f"(best {self.best[1]:.6g} at step {self.best[0]})"
            )
        return None

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the watch."""
        return {"best": self.best, "waited": self.waited, "best_state": self.best_state}

    def restore(self, saved: dict[str, Any]) -> None:
        self.best = tuple(saved["best"]) if saved["best"] is not None else None
        self.waited = saved["waited"]
        self.best_state = saved["best_state"]

    def record(self) -> dict[str, Any] | None:
        """The best evaluation, as a run's record keeps it."""
        if self.best is None:
            return None
        return {"metric": self.tag, "step": self.best[0], "value": self.best[1]}
