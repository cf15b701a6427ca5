"""Optimizers and learning-rate schedules: torch's own, configured from their specs."""
from __future__ import annotations

from typing import Iterable

import torch

from trainer.schema import (AdamOptimizer, AdamWOptimizer, ConstantSchedule, CosineSchedule,
                            ExponentialSchedule, OptimizerSpec, ScheduleSpec, SgdOptimizer, StepSchedule)

# Below this many parameter elements the per-tensor loop beats torch's multi-tensor path;
# both compute the same update.
FOREACH_MIN_ELEMENTS = 4096


def build_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    foreach = sum(p.numel() for p in params) >= FOREACH_MIN_ELEMENTS
    if isinstance(spec, SgdOptimizer):
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay, foreach=foreach)
    if isinstance(spec, (AdamOptimizer, AdamWOptimizer)):
        cls = torch.optim.Adam if isinstance(spec, AdamOptimizer) else torch.optim.AdamW
        return cls(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
                   amsgrad=spec.amsgrad, foreach=foreach)
    raise TypeError(f"unknown optimizer spec {spec!r}")


def build_schedule(spec: ScheduleSpec, optimizer: torch.optim.Optimizer,
                   steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A scheduler stepped once per training step, or None for a constant rate."""
    if isinstance(spec, ConstantSchedule):
        return None
    if isinstance(spec, StepSchedule):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
    if isinstance(spec, CosineSchedule):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.t_max or steps,
                                                          eta_min=spec.eta_min)
    if isinstance(spec, ExponentialSchedule):
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=spec.gamma)
    raise TypeError(f"unknown schedule spec {spec!r}")


