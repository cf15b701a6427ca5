"""The batched engine's optimizers and schedules: torch.optim's update rules (SGD, Adam, AdamW)
and torch's schedulers' learning rates, for a leading run dimension, each run with its own
settings. Updates use only exactly rounded operations (no fused multiply-add), so that a run's
numbers do not depend on which other runs share its program.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trainer.kinds.optim import build_schedule
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


def _column(values: list[float], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


class Optimizer:
    """torch.optim's SGD, Adam or AdamW update, each run with its own settings. Written with exactly
    rounded operations only, so that a run's numbers never depend on its neighbours."""

    def __init__(self, runs: list[RunPlan], params: list[torch.Tensor]):
        spec = runs[0].config.optimizer
        device = params[0].device
        self.kind = spec.kind
        self.settings = [r.config.optimizer for r in runs]
        get = lambda key: [getattr(s, key) for s in self.settings]  # noqa: E731
        self.weight_decay = _column(get("weight_decay"), device)
        self.decays = any(get("weight_decay"))
        self.state: dict[str, list[torch.Tensor | None]] = {}
        if self.kind == "sgd":
            self.momentum = _column(get("momentum"), device)
            self.uses_momentum = spec.momentum > 0  # the same for every run of a group
            self.nesterov = spec.nesterov
            self.state["buffer"] = [None] * len(params)
        else:
            betas = get("betas")
            self.beta1_64 = _column([b[0] for b in betas], device, torch.float64)
            self.beta2_64 = _column([b[1] for b in betas], device, torch.float64)
            # As torch.optim computes them: in double precision, then used in float32.
            self.beta2 = self.beta2_64.float()
            self.one_minus_beta1, self.one_minus_beta2 = (
                (1 - self.beta1_64).float(),
                (1 - self.beta2_64).float(),
            )
            self.eps = _column(get("eps"), device)
            self.weight_decay_64 = _column(get("weight_decay"), device, torch.float64)
            self.amsgrad = spec.amsgrad
            self.step_count = 0
            self.state["exp_avg"] = [torch.zeros_like(p) for p in params]
            self.state["exp_avg_sq"] = [torch.zeros_like(p) for p in params]
            if self.amsgrad:
                self.state["max_exp_avg_sq"] = [torch.zeros_like(p) for p in params]

    def keep(self, index: torch.Tensor) -> None:
        """Only the runs at `index` go on."""
        for name in (
            "weight_decay",
            "momentum",
            "beta1_64",
            "beta2_64",
            "beta2",
            "one_minus_beta1",
            "one_minus_beta2",
            "eps",
            "weight_decay_64",
        ):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[index])
        for name, tensors in self.state.items():
            self.state[name] = [t[index] if t is not None else None for t in tensors]

    def step(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], lr: torch.Tensor, lr_64: torch.Tensor
    ) -> list[torch.Tensor]:
        """The parameters after one update with these gradients and per-run learning rates [runs]."""
        if self.kind == "sgd":
            return [self._sgd(i, p, g, lr) for i, (p, g) in enumerate(zip(params, grads))]
        self.step_count += 1
        step = self.step_count
        bias1 = 1 - self.beta1_64**step
        bias2_sqrt = (1 - self.beta2_64**step) ** 0.5
        step_size = (lr_64 / bias1).float()
        decay = (1 - lr_64 * self.weight_decay_64).float() if self.kind == "adamw" else None
        return [
            self._adam(i, p, g, step_size, bias2_sqrt.float(), decay)
            for i, (p, g) in enumerate(zip(params, grads))
        ]

    def _sgd(self, i: int, p: torch.Tensor, g: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        # torch's `a.add(b, alpha=x)` rounds once (a fused multiply-add on the CPU), as addcmul with
        # a per-run column does; `a + x * b` would round twice. Each line is one of torch's calls.
        shape = (-1,) + (1,) * (p.dim() - 1)
        if self.decays:
            g = torch.addcmul(g, p, self.weight_decay.view(shape))  # grad.add(param, alpha=decay)
        if self.uses_momentum:
            momentum = self.momentum.view(shape)
            buffer = self.state["buffer"][i]
            # buf.mul_(momentum).add_(grad): a product rounded, then a sum
            buffer = g.clone() if buffer is None else buffer * momentum + g
            self.state["buffer"][i] = buffer
            g = torch.addcmul(g, buffer, momentum) if self.nesterov else buffer  # grad.add(buf, alpha=m)
        return torch.addcmul(p, g, -lr.view(shape))  # param.add_(grad, alpha=-lr)

    def _adam(
        self,
        i: int,
        p: torch.Tensor,
        g: torch.Tensor,
        step_size: torch.Tensor,
        bias2_sqrt: torch.Tensor,
        decay: torch.Tensor | None,
    ) -> torch.Tensor:
        shape = (-1,) + (1,) * (p.dim() - 1)
        if decay is not None:
            p = p * decay.view(shape)
        elif self.decays:
            g = torch.addcmul(g, p, self.weight_decay.view(shape))  # grad.add(param, alpha=decay)
        exp_avg, exp_avg_sq = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
        # Each line is torch's kernel, operation by operation (lerp rounds as torch.lerp, addcmul).
        exp_avg = torch.lerp(exp_avg, g, self.one_minus_beta1.view(shape))
        exp_avg_sq = exp_avg_sq * self.beta2.view(shape) + self.one_minus_beta2.view(shape) * g * g
        self.state["exp_avg"][i], self.state["exp_avg_sq"][i] = exp_avg, exp_avg_sq
        second = exp_avg_sq
        if self.amsgrad:
            second = torch.maximum(self.state["max_exp_avg_sq"][i], exp_avg_sq)
            self.state["max_exp_avg_sq"][i] = second
        denom = second.sqrt() / bias2_sqrt.view(shape) + self.eps.view(shape)
        return p - step_size.view(shape) * exp_avg / denom  # addcdiv: (value * t1) / t2


def clip(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """torch.nn.utils.clip_grad_norm_ for each run: its gradients' total norm brought to max_norm."""
    runs = grads[0].shape[0]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(runs, -1), dim=1) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * coefficient.view((-1,) + (1,) * (g.dim() - 1)) for g in grads]


# --- the group's training -------------------------------------------------------------------------
