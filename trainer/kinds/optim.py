"""Optimizer and schedule kinds: torch's own, configured from their specs, or the user's.

An optimizer's builder takes (kind, spec, params); a user's optimizer is a class called as
`cls(params, **settings)` (torch.optim:RMSprop works as it is). A schedule's builder takes
(kind, spec, optimizer, steps) and gives a scheduler stepped once per training step, or None for
a constant rate; a user's schedule is a class called as `cls(optimizer, **settings)`.

An optimizer kind the batched engine trains is registered with its update rule (a BatchedRule):
torch.optim's update written for a leading run dimension, the settings that may differ between
the runs of one program, and the state it keeps. The engine (trainer.training.batched_optim) and
the grouping of runs (trainer.spec.units) read all they need of the kind from that entry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from trainer.core.strict import at_least, at_most, below, each, greater_than, setting
from trainer.core.strict import hints as strict_hints
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


# --- the batched engine's update rules -------------------------------------------------------------


@dataclass(frozen=True)
class RuleStep:
    """What a batched update rule is given at a step; every tensor has a leading run dimension."""

    spec: Any  # the first run's settings: those not per run are the whole program's
    columns: dict[str, Any]  # the per-run settings, as the rule's `columns` made them: [runs] each
    constants: dict[str, Any]  # what the rule's `constants` found of the program's runs at its start
    state: dict[str, list[Any]]  # name -> a tensor per parameter (None until set); the rule updates it
    count: int  # the updates so far, this one included
    lr: Any  # each run's learning rate at this step, float32 [runs]
    lr_64: Any  # the same in float64, as torch's schedulers give it


@dataclass(frozen=True, kw_only=True)
class BatchedRule:
    """An optimizer kind's update in the batched engine: torch.optim's rule for a leading run
    dimension, each run with its own settings, written with exactly rounded operations only (no
    fused multiply-add) so that a run's numbers never depend on its neighbours. The engine slices,
    stacks and keeps what the rule declares, whatever the kind."""

    # Settings that may differ between the runs of one program, each a number or a tuple of numbers
    # (the group key leaves them out, trainer.spec.units); every other setting is the program's.
    per_run: tuple[str, ...]
    # The names of the tensors kept per parameter under these settings (torch.optim's names).
    state: Callable[[Any], tuple[str, ...]]
    # (the runs' settings, column) -> name -> [runs] tensor; column(values, double=False) makes a
    # float32 (or float64) tensor on the program's device.
    columns: Callable[[list[Any], Callable[..., Any]], dict[str, Any]]
    # (step, params, grads) -> the parameters after one update.
    update: Callable[[RuleStep, list[Any], list[Any]], list[Any]]
    # The runs' settings -> what the program holds to from its start, whichever runs leave it.
    constants: Callable[[list[Any]], dict[str, Any]] = lambda settings: {}
    # A run's settings -> what the runs of one program share besides the settings not per run.
    program: Callable[[Any], dict[str, Any]] = lambda spec: {}
    # Rounds as torch.optim whatever the run's neighbours: 'auto' batches only such kinds.
    exact: bool = False


def _run_shape(p: Any) -> tuple[int, ...]:
    """The shape that spreads a [runs] column over a parameter [runs, ...]."""
    return (-1,) + (1,) * (p.dim() - 1)


def _decays(settings: list[Any]) -> dict[str, Any]:
    return {"decays": any(s.weight_decay for s in settings)}


def _sgd_columns(settings: list[Any], column: Callable[..., Any]) -> dict[str, Any]:
    return {
        "weight_decay": column([s.weight_decay for s in settings]),
        "momentum": column([s.momentum for s in settings]),
    }


def _sgd_update(step: RuleStep, params: list[Any], grads: list[Any]) -> list[Any]:
    # torch's `a.add(b, alpha=x)` rounds once (a fused multiply-add on the CPU), as addcmul with a
    # per-run column does; `a + x * b` would round twice. Each line is one of torch's calls.
    spec, columns, buffers = step.spec, step.columns, step.state.get("momentum_buffer")
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        shape = _run_shape(p)
        if step.constants["decays"]:
            g = g.addcmul(p, columns["weight_decay"].view(shape))  # grad.add(param, alpha=decay)
        if buffers is not None:
            momentum = columns["momentum"].view(shape)
            # buf.mul_(momentum).add_(grad): a product rounded, then a sum
            buffer = g.clone() if buffers[i] is None else buffers[i] * momentum + g
            buffers[i] = buffer
            g = g.addcmul(buffer, momentum) if spec.nesterov else buffer  # grad.add(buf, alpha=m)
        out.append(p.addcmul(g, -step.lr.view(shape)))  # param.add_(grad, alpha=-lr)
    return out


def _adam_columns(settings: list[Any], column: Callable[..., Any]) -> dict[str, Any]:
    beta1 = column([s.betas[0] for s in settings], double=True)
    beta2 = column([s.betas[1] for s in settings], double=True)
    decay = [s.weight_decay for s in settings]
    return {
        "beta1_64": beta1,
        "beta2_64": beta2,
        # As torch.optim computes them: in double precision, then used in float32.
        "beta2": beta2.float(),
        "one_minus_beta1": (1 - beta1).float(),
        "one_minus_beta2": (1 - beta2).float(),
        "eps": column([s.eps for s in settings]),
        "weight_decay": column(decay),
        "weight_decay_64": column(decay, double=True),
    }


def _adam_state(spec: AdamOptimizer) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if spec.amsgrad else ())


def _adam_update(step: RuleStep, params: list[Any], grads: list[Any], decoupled: bool) -> list[Any]:
    columns, state = step.columns, step.state
    bias1 = 1 - columns["beta1_64"] ** step.count
    bias2_sqrt = ((1 - columns["beta2_64"] ** step.count) ** 0.5).float()
    step_size = (step.lr_64 / bias1).float()
    decay = (1 - step.lr_64 * columns["weight_decay_64"]).float() if decoupled else None
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        shape = _run_shape(p)
        if decay is not None:
            p = p * decay.view(shape)
        elif step.constants["decays"]:
            g = g.addcmul(p, columns["weight_decay"].view(shape))  # grad.add(param, alpha=decay)
        exp_avg, exp_avg_sq = state["exp_avg"][i], state["exp_avg_sq"][i]
        if exp_avg is None:  # the first update: torch.optim's moments start at zero
            exp_avg = exp_avg_sq = p.new_zeros(p.shape)
        # Each line is torch's kernel, operation by operation (lerp rounds as torch.lerp, addcmul).
        exp_avg = exp_avg.lerp(g, columns["one_minus_beta1"].view(shape))
        exp_avg_sq = (
            exp_avg_sq * columns["beta2"].view(shape) + columns["one_minus_beta2"].view(shape) * g * g
        )
        state["exp_avg"][i], state["exp_avg_sq"][i] = exp_avg, exp_avg_sq
        second = exp_avg_sq
        if step.spec.amsgrad:
            highest = state["max_exp_avg_sq"][i]
            if highest is None:
                highest = exp_avg_sq.new_zeros(exp_avg_sq.shape)
            second = highest.maximum(exp_avg_sq)
            state["max_exp_avg_sq"][i] = second
        denom = second.sqrt() / bias2_sqrt.view(shape) + columns["eps"].view(shape)
        out.append(p - step_size.view(shape) * exp_avg / denom)  # addcdiv: (value * t1) / t2
    return out


SGD_RULE = BatchedRule(
    per_run=("lr", "weight_decay", "momentum"),
    state=lambda spec: ("momentum_buffer",) if spec.momentum > 0 else (),
    columns=_sgd_columns,
    update=_sgd_update,
    constants=_decays,
    program=lambda spec: {"momentum>0": spec.momentum > 0},
    exact=True,
)
ADAM_RULE = BatchedRule(
    per_run=("lr", "weight_decay", "betas", "eps"),
    state=_adam_state,
    columns=_adam_columns,
    update=functools.partial(_adam_update, decoupled=False),
    constants=_decays,
)
ADAMW_RULE = BatchedRule(
    per_run=ADAM_RULE.per_run,
    state=_adam_state,
    columns=_adam_columns,
    update=functools.partial(_adam_update, decoupled=True),
    constants=_decays,
)


def register_optimizer(
    config: type, build: Callable[..., Any], rule: BatchedRule | None = None
) -> kinds.Kind:
    """Add a built-in optimizer kind; with an update rule, the batched engine trains it too.
    ValueError, in one sentence, where the rule names a per-run key the engine cannot make per run."""
    for key in rule.per_run if rule is not None else ():
        problem = _per_run_problem(config, key)
        if problem is not None:
            name = get_args(strict_hints(config)["kind"])[0]
            raise ValueError(f"optimizer kind {name!r}: per-run key {key!r} {problem}")
    return kinds.register("optimizer", config, build, batched=rule is not None, rule=rule)


def _per_run_problem(config: type, key: str) -> str | None:
    """Why a setting cannot differ between the runs of one program, or None."""
    settings = [f.name for f in fields(config) if f.name != "kind"]
    if key not in settings:
        return f"is not one of its settings ({', '.join(settings)})"
    tp = strict_hints(config)[key]
    parts = [a for a in get_args(tp) if a is not Ellipsis] if get_origin(tp) is tuple else [tp]
    if all(a in (int, float) for a in parts):
        return None
    shown = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
    return f"is a {shown} setting; only a number or a tuple of numbers can differ between the runs of one program"


kinds.define_family(
    "optimizer", "a torch.optim.Optimizer class, called as cls(params, **settings)", _user_optimizer, passed=1
)
register_optimizer(SgdOptimizer, _sgd, SGD_RULE)
register_optimizer(AdamOptimizer, _adam, ADAM_RULE)
register_optimizer(AdamWOptimizer, _adam, ADAMW_RULE)
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


def rule_of(spec: Any) -> BatchedRule | None:
    """The batched update rule of an optimizer section's kind; None where the batched engine does
    not train it (user code, or a kind registered without one)."""
    return kinds.kind_of(spec).rule
