"""Loss kinds: regression (l1, mse, huber), classification (cross_entropy, nll), binary
(bce_with_logits), or the user's own: a function (output, target) -> scalar tensor, or an
nn.Module class called with its settings.

A builder takes (kind, spec, reduction): `reduction` overrides the spec's ('mean' for the
evaluations, so runs of any batch size compare). Built-in losses are torch's functional forms:
the same numbers as its modules, without the module call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from trainer.core.strict import at_least, at_most, greater_than, setting
from trainer.kinds import registry as kinds

Reduction = Literal["sum", "mean"]
REDUCTION_DOC = "'sum' over the batch (the notebook) or 'mean' (torch's default)"

# What a built-in loss expects of the targets.
REGRESSION, CLASSES, BINARY = "regression", "classes", "binary"


@dataclass(frozen=True, kw_only=True)
class Reduced:
    """The setting every built-in loss has."""

    reduction: Reduction = setting("mean", doc=REDUCTION_DOC)


@dataclass(frozen=True, kw_only=True)
class L1Loss(Reduced):
    """Absolute error."""

    task: ClassVar[str] = REGRESSION
    kind: Literal["l1"] = "l1"


@dataclass(frozen=True, kw_only=True)
class MseLoss(Reduced):
    """Squared error."""

    task: ClassVar[str] = REGRESSION
    kind: Literal["mse"] = "mse"


@dataclass(frozen=True, kw_only=True)
class HuberLoss(Reduced):
    """Squared error below delta, absolute error above."""

    task: ClassVar[str] = REGRESSION
    kind: Literal["huber"] = "huber"
    delta: float = setting(1.0, greater_than(0), doc="where the loss turns from squared to linear")


@dataclass(frozen=True, kw_only=True)
class CrossEntropyLoss(Reduced):
    """Softmax cross-entropy of class scores (logits, one per class) against integer class labels."""

    task: ClassVar[str] = CLASSES
    kind: Literal["cross_entropy"] = "cross_entropy"
    label_smoothing: float = setting(
        0.0, at_least(0), at_most(1), doc="weight moved from the true class to all classes evenly, in [0, 1]"
    )


@dataclass(frozen=True, kw_only=True)
class NllLoss(Reduced):
    """Negative log-likelihood of log-probabilities (a model ending in log_softmax) against class labels."""

    task: ClassVar[str] = CLASSES
    kind: Literal["nll"] = "nll"


@dataclass(frozen=True, kw_only=True)
class BceWithLogitsLoss(Reduced):
    """Binary cross-entropy of one logit per target against 0/1 targets."""

    task: ClassVar[str] = BINARY
    kind: Literal["bce_with_logits"] = "bce_with_logits"


def _functional(name: str, **fixed: Any) -> Callable[..., Any]:
    def build(kind: kinds.Kind, spec: Any, reduction: str | None = None) -> Callable[[Any, Any], Any]:
        from torch.nn import functional as F

        extra = {key: getattr(spec, key) for key in fixed}
        return functools.partial(getattr(F, name), reduction=reduction or spec.reduction, **extra)

    return build


def _bce(kind: kinds.Kind, spec: Any, reduction: str | None = None) -> Callable[[Any, Any], Any]:
    from torch.nn import functional as F

    reduction = reduction or spec.reduction
    return lambda output, target: F.binary_cross_entropy_with_logits(
        output, target.to(output.dtype), reduction=reduction
    )


def _user_loss(kind: kinds.Kind, spec: Any, reduction: str | None = None) -> Callable[[Any, Any], Any]:
    # A class (an nn.Module such as torch.nn:SmoothL1Loss) is instantiated with the settings;
    # a function is called with them after (output, target).
    if isinstance(kind.target, type):
        return kind.target(**kinds.settings(spec))
    settings = kinds.settings(spec)
    return functools.partial(kind.target, **settings) if settings else kind.target


# A user function's first two parameters are (output, target); a class takes only its settings.
kinds.define_family(
    "loss",
    "a function (output, target) -> scalar tensor, or an nn.Module class",
    _user_loss,
    passed=lambda target: 0 if isinstance(target, type) else 2,
)
kinds.register("loss", L1Loss, _functional("l1_loss"))
kinds.register("loss", MseLoss, _functional("mse_loss"))
kinds.register("loss", HuberLoss, _functional("huber_loss", delta=None))
kinds.register("loss", CrossEntropyLoss, _functional("cross_entropy", label_smoothing=None))
kinds.register("loss", NllLoss, _functional("nll_loss"))
kinds.register("loss", BceWithLogitsLoss, _bce)


def build_loss(spec: Any, reduction: str | None = None) -> Callable[[Any, Any], Any]:
    """The loss function; `reduction` overrides the spec's."""
    return kinds.build(spec, reduction)


def task_of(spec: Any) -> str | None:
    """What a built-in loss expects of the targets (regression, classes, binary); None for user code."""
    return getattr(type(spec), "task", None) if not kinds.kind_of(spec).is_user_code else None


def squeezes(spec: Any) -> bool:
    """Whether outputs of shape [N, 1] meet targets of shape [N] (built-in regression and binary
    losses compare them element by element)."""
    return task_of(spec) in (REGRESSION, BINARY)


def one_per_row(output: Any, target: Any) -> bool:
    """Whether the outputs are [N, 1] (or [..., 1]) for targets of shape [N] (or [...])."""
    return output.dim() == target.dim() + 1 and output.shape[-1] == 1


def fit(output: Any, target: Any) -> Any:
    """Outputs of shape [N, 1] as [N], to meet targets of shape [N]; other outputs as they are."""
    return output.squeeze(-1) if one_per_row(output, target) else output


def check_targets(spec: Any, classes: int | None) -> list[tuple[str, str]]:
    """Whether a built-in loss fits the data's targets: problems as (key, message)."""
    task = task_of(spec)
    if task == REGRESSION and classes is not None:
        return [
            (
                "loss.kind",
                f"{spec.kind!r} is a regression loss, but the targets are class labels; use cross_entropy",
            )
        ]
    if task == CLASSES and classes is None:
        return [
            (
                "loss.kind",
                f"{spec.kind!r} needs integer class labels, but the targets are real numbers; "
                f"use l1, mse or huber",
            )
        ]
    return []
