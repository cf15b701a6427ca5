"""Model kinds: a linear model and a small MLP built in, or any nn.Module of the user's.

A model kind's builder takes (kind, spec, shape): `shape` says what the data and loss need, the
features of a row and the outputs. A user's kind is an nn.Module class or a function returning
one, called with its settings as keyword arguments; the parameters of CONTEXT that it declares are
filled from the data unless the spec sets them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from trainer.core.strict import Invalid, at_least, each, non_empty, setting
from trainer.kinds import registry as kinds

if TYPE_CHECKING:
    from torch import nn

OUTPUTS_DOC = "outputs per row; 'auto' is one per class for a classification loss, else one per target value"


@dataclass(frozen=True, kw_only=True)
class LinearModel:
    """y = x @ w (+ b): the notebook's Linear(features, 1)."""

    kind: Literal["linear"] = "linear"
    bias: bool = setting(False, doc="learn an intercept")
    init: Literal["default", "zeros"] | tuple[float, ...] = setting(
        "default", doc="'default' (torch's, seeded by train.seed), 'zeros', or one weight per feature"
    )
    outputs: int | Literal["auto"] = setting("auto", at_least(1), doc=OUTPUTS_DOC)


@dataclass(frozen=True, kw_only=True)
class MlpModel:
    """A small multilayer perceptron."""

    kind: Literal["mlp"] = "mlp"
    hidden: tuple[int, ...] = setting((32, 32), non_empty, each(at_least(1)), doc="hidden layer widths")
    activation: Literal["relu", "tanh", "gelu", "sigmoid"] = setting("relu", doc="activation between layers")
    bias: bool = setting(True, doc="learn biases")
    init: Literal["default", "zeros"] = setting("default", doc="'default' (torch's, seeded) or 'zeros'")
    outputs: int | Literal["auto"] = setting("auto", at_least(1), doc=OUTPUTS_DOC)


@dataclass(frozen=True)
class Shape:
    """What a model must fit: the features of a row (0 for inputs of another shape), the outputs per
    row, and for a user's model, one input's shape and the class count (None for real targets)."""

    features: int
    outputs: int
    input_shape: tuple[int, ...] = ()
    classes: int | None = None


# The parameters a user's model may declare to be given what the data says (name -> type, doc).
CONTEXT: dict[str, tuple[Any, str]] = {
    "num_classes": (int, "the number of classes of the labels"),
    "outputs": (int, "outputs per row: one per class for a classification loss, else one per target value"),
    "in_features": (int, "the features of a row of a table"),
    "input_shape": (tuple[int, ...], "the shape of one input (without the batch)"),
}


def _linear(kind: kinds.Kind, spec: LinearModel, shape: Shape) -> nn.Module:
    import torch

    from trainer.kinds.layers import Dense

    model = Dense(shape.features, shape.outputs, bias=spec.bias)
    if isinstance(spec.init, tuple):
        with torch.no_grad():
            model.weight.copy_(
                torch.tensor(spec.init, dtype=torch.float32).view(1, -1).expand_as(model.weight)
            )
            if model.bias is not None:
                model.bias.zero_()
    return _zeroed(model, spec.init)


def _mlp(kind: kinds.Kind, spec: MlpModel, shape: Shape) -> nn.Module:
    from torch import nn

    from trainer.kinds.layers import ACTIVATIONS, Dense

    layers: list[tuple[str, nn.Module]] = []
    width = shape.features
    for i, hidden in enumerate(spec.hidden, start=1):
        layers += [
            (f"hidden{i}", Dense(width, hidden, bias=spec.bias)),
            (f"act{i}", ACTIVATIONS[spec.activation]()),
        ]
        width = hidden
    layers.append(("output", Dense(width, shape.outputs, bias=spec.bias)))
    return _zeroed(nn.Sequential(OrderedDict(layers)), spec.init)


def _zeroed(model: nn.Module, init: Any) -> nn.Module:
    import torch

    if init == "zeros":
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    return model


def _user_model(kind: kinds.Kind, spec: Any, shape: Shape | None) -> nn.Module:
    from torch import nn

    model = kind.target(**(kinds.settings(spec) | context_values(spec, shape)))
    if not isinstance(model, nn.Module):
        raise Invalid([("model.kind", f"{kind.name} returned {type(model).__name__}, not a torch.nn.Module")])
    return model


def context_values(spec: Any, shape: Shape | None) -> dict[str, Any]:
    """The context parameters a user's model declares and its spec leaves 'auto', with what the
    data says for them (nothing for a built-in model); Invalid where the data cannot say."""
    if is_builtin(spec):
        return {}
    return {
        name: _context_value(name, spec.kind, shape)
        for name in CONTEXT
        if getattr(spec, name, None) == "auto"
    }


def _context_value(name: str, kind: str, shape: Shape | None) -> Any:
    """What the data says for a context parameter, or Invalid saying which key to set."""
    value = None
    if shape is not None:
        value = {
            "num_classes": shape.classes,
            "outputs": shape.outputs,
            "in_features": shape.features or None,
            "input_shape": list(shape.input_shape) or None,
        }[name]
    if value is None:
        why = {
            "num_classes": "the targets are real numbers, not class labels",
            "in_features": "one input of this data is not a row of features",
        }.get(name, "the data does not say it")
        raise Invalid([(f"model.{name}", f"{kind} takes {name}, but {why}; set model.{name}")])
    return value


kinds.define_family(
    "model", "an nn.Module class, or a function returning an nn.Module", _user_model, context=CONTEXT
)
kinds.register("model", LinearModel, _linear)
kinds.register("model", MlpModel, _mlp)


def build_model(spec: Any, shape: Shape | None, seed: int) -> nn.Module:
    """The run's model; its initial weights are seeded with the run's seed."""
    import random

    import numpy as np
    import torch

    if is_builtin(spec):
        # Built on the CPU: its generator is the one to seed. torch.manual_seed would also queue a
        # seed for CUDA, with a stack trace of the call (a millisecond a run, a second a sweep).
        torch.default_generator.manual_seed(seed)
    else:
        # User code may draw on any device, and from NumPy's and Python's generators too: all are
        # seeded, so that a run of user code is the same run each time.
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
    return kinds.build(spec, shape)


def parameter_count(spec: Any, shape: Shape) -> int | None:
    """Parameters of a built-in model, found without building it; None for user code."""
    if isinstance(spec, LinearModel):
        return (shape.features + int(spec.bias)) * shape.outputs
    if isinstance(spec, MlpModel):
        widths = [shape.features, *spec.hidden, shape.outputs]
        return sum(a * b + (b if spec.bias else 0) for a, b in zip(widths, widths[1:]))
    return None


def is_builtin(spec: Any) -> bool:
    return isinstance(spec, (LinearModel, MlpModel))


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1
