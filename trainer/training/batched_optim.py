"""The batched engine's optimizers and schedules: each optimizer kind's update rule (registered
with the kind, trainer.kinds.optim) and torch's schedulers' learning rates, for a leading run
dimension, each run with its own settings. Updates use only exactly rounded operations (no fused
multiply-add), so that a run's numbers do not depend on which other runs share its program.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trainer.kinds.optim import RuleStep, build_schedule, rule_of
from trainer.spec.plan import RunPlan


def rates(runs: list[RunPlan], steps: int) -> np.ndarray:
    """Every run's learning rate at every step, [runs, steps] (float64, as torch's schedulers give
    them: each distinct schedule is replayed once with its torch scheduler)."""
    table = np.empty((len(runs), steps))
    replayed: dict[tuple[float, Any], np.ndarray] = {}
    for r, run in enumerate(runs):
        key = (run.config.optimizer.lr, run.config.schedule)
        if key not in replayed:
            replayed[key] = _replay(run.config.optimizer.lr, run.config.schedule, steps)
        table[r] = replayed[key]
    return table


class _Rate(torch.optim.Optimizer):
    """Only the learning rate of an optimizer, which is all a torch scheduler reads and writes. A
    real optimizer would do as well, but making the first one imports torch's compiler (seconds)."""

    def __init__(self, lr: float):  # no super().__init__(): there are no parameters
        self.param_groups = [{"lr": lr}]

    def step(self, closure: Any = None) -> None:
        pass


def _replay(lr: float, schedule_spec: Any, steps: int) -> np.ndarray:
    optimizer = _Rate(lr)
    schedule = build_schedule(schedule_spec, optimizer, steps)
    if schedule is None:
        return np.full(steps, lr)
    out = np.empty(steps)
    for step in range(steps):
        out[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()  # torch warns of a schedule stepped before its optimizer
        schedule.step()
    return out


class Optimizer:
    """An optimizer kind's batched update (its BatchedRule, trainer.kinds.optim) over the runs of one
    program: the per-run settings and the state are tensors with a leading run dimension, sliced
    (a run leaving the program) and taken apart or stacked (a run's own state) alike for every kind."""

    def __init__(self, runs: list[RunPlan], params: list[torch.Tensor]):
        settings = [r.config.optimizer for r in runs]
        self.spec = settings[0]
        rule = rule_of(self.spec)
        if rule is None:
            raise ValueError(f"the optimizer kind {self.spec.kind} has no batched update rule")
        self.rule = rule
        device = params[0].device

        def column(values: list[float], double: bool = False) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64 if double else torch.float32, device=device)

        self.columns = rule.columns(settings, column)
        self.constants = rule.constants(settings)
        self.state: dict[str, list[torch.Tensor | None]] = {
            name: [None] * len(params) for name in rule.state(self.spec)
        }
        self.count = 0  # updates so far: the same for every run of the program

    def keep(self, index: torch.Tensor) -> None:
        """Only the runs at `index` go on."""
        self.columns = {name: values[index] for name, values in self.columns.items()}
        self.state = {
            name: [t if t is None else t[index] for t in tensors] for name, tensors in self.state.items()
        }

    def run_state(self, row: int) -> dict[str, Any]:
        """The state of the program's run at `row` alone: the updates so far and each state tensor."""
        return {
            "count": self.count,
            "state": {
                name: [t if t is None else t[row] for t in tensors] for name, tensors in self.state.items()
            },
        }

    def load(self, states: list[dict[str, Any]]) -> None:
        """Go on from the runs' own states (run_state's, one per row of the program, in its order)."""
        counts = {s["count"] for s in states}
        if len(counts) != 1:
            raise ValueError(f"the runs of one program must have taken as many updates, got {sorted(counts)}")
        self.count = counts.pop()
        for name, tensors in self.state.items():
            for i in range(len(tensors)):
                parts = [s["state"][name][i] for s in states]
                tensors[i] = None if parts[0] is None else torch.stack(parts)

    def step(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], lr: torch.Tensor, lr_64: torch.Tensor
    ) -> list[torch.Tensor]:
        """The parameters after one update with these gradients and per-run learning rates [runs]."""
        self.count += 1
        step = RuleStep(self.spec, self.columns, self.constants, self.state, self.count, lr, lr_64)
        return self.rule.update(step, params, grads)


def clip(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """torch.nn.utils.clip_grad_norm_ for each run: its gradients' total norm brought to max_norm."""
    runs = grads[0].shape[0]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(runs, -1), dim=1) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * coefficient.view((-1,) + (1,) * (g.dim() - 1)) for g in grads]


# --- the group's training -------------------------------------------------------------------------
