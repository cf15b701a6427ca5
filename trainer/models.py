"""Models and losses built from their specs."""
from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from trainer.schema import HuberLoss, L1Loss, LinearModel, LossSpec, MlpModel, ModelSpec, MseLoss

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
}


def build_model(spec: ModelSpec, features: int, seed: int) -> nn.Module:
    """A model with one output per row; torch's default init is seeded with the run's seed."""
    torch.manual_seed(seed)
    if isinstance(spec, LinearModel):
        model = nn.Linear(features, 1, bias=spec.bias)
        if isinstance(spec.init, tuple):
            with torch.no_grad():
                model.weight.copy_(torch.tensor(spec.init, dtype=torch.float32).view(1, -1))
                if model.bias is not None:
                    model.bias.zero_()
    elif isinstance(spec, MlpModel):
        layers: list[tuple[str, nn.Module]] = []
        width = features
        for i, hidden in enumerate(spec.hidden, start=1):
            layers += [(f"hidden{i}", nn.Linear(width, hidden, bias=spec.bias)),
                       (f"act{i}", ACTIVATIONS[spec.activation]())]
            width = hidden
        layers.append(("output", nn.Linear(width, 1, bias=spec.bias)))
        model = nn.Sequential(OrderedDict(layers))
    else:
        raise TypeError(f"unknown model spec {spec!r}")
    if spec.init == "zeros":
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    return model


def build_loss(spec: LossSpec, reduction: str | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function (torch's functional form: the same numbers as its module, without the
    module call); `reduction` overrides the spec's (evaluation always takes the mean)."""
    reduction = reduction or spec.reduction
    if isinstance(spec, L1Loss):
        return functools.partial(F.l1_loss, reduction=reduction)
    if isinstance(spec, MseLoss):
        return functools.partial(F.mse_loss, reduction=reduction)
    if isinstance(spec, HuberLoss):
        return functools.partial(F.huber_loss, reduction=reduction, delta=spec.delta)
    raise TypeError(f"unknown loss spec {spec!r}")
