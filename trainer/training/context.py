"""What the caller of a run hands its training besides the plan: when to stop, whom to tell of
its progress and its checkpoints, which search judges it, the claims on its folder and the engine
its record names. One frozen value, built once where a unit of work starts (trainer.run.job)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.spec.plan import RunPlan

# A search's pruner, as a run reaches it: (run folder, evaluation step, reported value) -> prune it?
Judge = Callable[[str, int, float], bool]


def _never() -> bool:
    return False


def _ignore(steps: int) -> None:
    pass


@dataclass(frozen=True)
class RunContext:
    """The callbacks and settings that travel with a unit of work, from its executor to its runs'
    training. Every field has a default that asks for nothing: a run trained on its own."""

    should_stop: Callable[[], bool] = _never  # asked between chunks of steps
    on_progress: Callable[[int], None] = _ignore  # told the steps done at the end of each chunk
    judge: Judge | None = None  # a search's pruner, told each run's reported evaluation values
    on_checkpoint: Callable[[Path], None] | None = None  # told the run's folder after each checkpoint
    claims: Mapping[str, Any] = field(default_factory=dict)  # trainer.run.claims.Claim by run folder
    engine: dict[str, Any] | None = None  # the record's engine entry: {name, reason}

    def judge_of(self, run: RunPlan) -> Callable[[int, float], bool] | None:
        """The pruner's verdict on this run's evaluations; None where the run reports nothing."""
        judge = self.judge
        if judge is None or run.trial is None or run.trial.reports is None:
            return None
        return lambda step, value: judge(run.folder, step, value)

    def claim(self, run: RunPlan) -> Any:
        """This sweep's claim on the run's folder, or None (a run of its own process)."""
        return self.claims.get(run.folder)
