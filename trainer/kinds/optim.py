"""Optimizer and schedule kinds: torch's own, configured from their specs, or the user's.

An optimizer's builder takes (kind, spec, params); a user's optimizer is a class called as
`cls(params, **settings)` (torch.optim:RMSprop works as it is). A schedule's builder takes
(kind, spec, optimizer, steps) and gives a scheduler stepped once per training step, or None for
a constant rate; a user's schedule is a class called as `cls(optimizer, **settings)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from trainer.core.strict import at_least, at_most, below, each, greater_than, setting
from trainer.kinds import registry as kinds

if TYPE_CHECKING:
    import torch

# Below this many parameter elements the per-tensor loop beats torch's multi-tensor path;
# both compute the same update.
FOREACH_MIN_ELEMENTS = 4096

LR_DOC = "learning rate"
WEIGHT_DECAY_DOC = "L2 penalty coefficient"


@dataclass(frozen=True, kw_only=True)
class SgdOptimizer:
    """torch.optim.SGD."""

    kind: Literal["sgd"] = "sgd"
    lr: float = setting(0.1, greater_than(0), doc=LR_DOC)
    momentum: float = setting(0.0, at_least(0), below(1), doc="momentum factor, in [0, 1)")
    nesterov: bool = setting(False, doc="Nesterov momentum (needs momentum > 0)")
    weight_decay: float = setting(0.0, at_least(0), doc=WEIGHT_DECAY_DOC)

    def problems(self) -> list[tuple[str, str]]:
        if self.nesterov and self.momentum == 0:
            return [("nesterov", "needs momentum > 0 (torch refuses Nesterov without momentum)")]
        return []


@dataclass(frozen=True, kw_only=True)
class AdamOptimizer:
    """torch.optim.Adam."""

    kind: Literal["adam"] = "adam"
    lr: float = setting(0.001, greater_than(0), doc=LR_DOC)
    betas: tuple[float, float] = setting(
        (0.9, 0.999),
        each(at_least(0)),
        each(below(1)),
        doc="decay rates of the moment estimates, each in [0, 1)",
    )
    eps: float = setting(1e-8, greater_than(0), doc="added to the denominator")
    weight_decay: float = setting(0.0, at_least(0), doc=WEIGHT_DECAY_DOC)
    amsgrad: bool = setting(False, doc="use the AMSGrad variant")


@dataclass(frozen=True, kw_only=True)
class AdamWOptimizer(AdamOptimizer):
    """torch.optim.AdamW (decoupled weight decay)."""

    kind: Literal["adamw"] = "adamw"
    weight_decay: float = setting(0.01, at_least(0), doc="decoupled weight decay coefficient")


@dataclass(frozen=True, kw_only=True)
class ConstantSchedule:
    """The learning rate stays as given."""

    kind: Literal["constant"] = "constant"


@dataclass(frozen=True, kw_only=True)
class StepSchedule:
    """Multiply the learning rate by gamma every step_size steps."""

    kind: Literal["step"] = "step"
    step_size: int = setting(100, at_least(1), doc="steps between decays")
    gamma: float = setting(0.5, greater_than(0), at_most(1), doc="decay factor, in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class CosineSchedule:
    """Cosine annealing from lr to eta_min over t_max steps."""

    kind: Literal["cosine"] = "cosine"
    t_max: int | None = setting(
        None, at_least(1), doc="steps of one half-period; the run's length when omitted"
    )
    eta_min: float = setting(0.0, at_least(0), doc="lowest learning rate")


@dataclass(frozen=True, kw_only=True)
class ExponentialSchedule:
    """Multiply the learning rate by gamma every step."""

    kind: Literal["exponential"] = "exponential"
    gamma: float = setting(0.999, greater_than(0), at_most(1), doc="decay factor per step, in (0, 1]")


def _foreach(params: list[Any]) -> bool:
    return sum(p.numel() for p in params) >= FOREACH_MIN_ELEMENTS


def _sgd(kind: kinds.Kind, spec: SgdOptimizer, params: list[Any]) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(
        params,
        lr=spec.lr,
        momentum=spec.momentum,
        nesterov=spec.nesterov,
        weight_decay=spec.weight_decay,
        foreach=_foreach(params),
    )


def _adam(kind: kinds.Kind, spec: AdamOptimizer | AdamWOptimizer, params: list[Any]) -> torch.optim.Optimizer:
    import torch

    cls = torch.optim.Adam if spec.kind == "adam" else torch.optim.AdamW
    return cls(
        params,
        lr=spec.lr,
        betas=spec.betas,
        eps=spec.eps,
        weight_decay=spec.weight_decay,
        amsgrad=spec.amsgrad,
        foreach=_foreach(params),
    )


def _user_optimizer(kind: kinds.Kind, spec: Any, params: list[Any]) -> torch.optim.Optimizer:
    return kind.target(params, **kinds.settings(spec))


def _constant(kind: kinds.Kind, spec: ConstantSchedule, optimizer: Any, steps: int) -> None:
    return None


def _step(kind: kinds.Kind, spec: StepSchedule, optimizer: Any, steps: int) -> Any:
    import torch

    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)


def _cosine(kind: kinds.Kind, spec: CosineSchedule, optimizer: Any, steps: int) -> Any:
    import torch

    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=spec.t_max or steps, eta_min=spec.eta_min
    )


def _exponential(kind: kinds.Kind, spec: ExponentialSchedule, optimizer: Any, steps: int) -> Any:
    import torch

    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=spec.gamma)


def _user_schedule(kind: kinds.Kind, spec: Any, optimizer: Any, steps: int) -> Any:
    return kind.target(optimizer, **kinds.settings(spec))


kinds.define_family(
    "optimizer", "a torch.optim.Optimizer class, called as cls(params, **settings)", _user_optimizer, passed=1
)
kinds.register("optimizer", SgdOptimizer, _sgd, batched=True)
kinds.register("optimizer", AdamOptimizer, _adam, batched=True)
kinds.register("optimizer", AdamWOptimizer, _adam, batched=True)
kinds.define_family(
    "schedule",
    "a learning-rate scheduler class, called as cls(optimizer, **settings)",
    _user_schedule,
    passed=1,
)
kinds.register("schedule", ConstantSchedule, _constant, batched=True)
kinds.register("schedule", StepSchedule, _step, batched=True)
kinds.register("schedule", CosineSchedule, _cosine, batched=True)
kinds.register("schedule", ExponentialSchedule, _exponential, batched=True)


def build_optimizer(spec: Any, params: Iterable[Any]) -> torch.optim.Optimizer:
    return kinds.build(spec, list(params))


def build_schedule(spec: Any, optimizer: Any, steps: int) -> Any:
    """A scheduler stepped once per training step, or None for a constant rate."""
    return kinds.build(spec, optimizer, steps)
