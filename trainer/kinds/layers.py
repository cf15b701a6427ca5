"""The arithmetic of the built-in models' layers, written once over a leading run dimension.

The loop engine's built-in modules call `dense` for one run, the batched engine for a whole group,
so a run's forward and backward pass is the same batched matrix product (`torch.bmm`) with the same
per-run shapes whichever engine trains it and however many runs share its program. With
`nn.Linear`, one run alone took another kernel (BLAS's gemm through `torch.mm`) than the runs of a
program (`torch.bmm`, which sums small products in a plain loop of its own): the two agree on some
processors and not on others (a dot product of four terms summed in another order), so a run's
logged loss depended on whether it shared a program. One kernel for both makes it independent of
the processor's BLAS as well. The activations between layers are one table for both engines too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor

# The built-in models' activations (model.activation), as the layers an MLP holds.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


@functools.cache
def activation(name: str) -> Callable[[Tensor], Tensor]:
    """An activation as a function of tensors of any shape, a leading run dimension included: the
    forward of the layer a built-in MLP holds, so that both engines compute it alike."""
    return ACTIVATIONS[name]().forward


def dense(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weight.T + bias for many runs: x [runs, rows, in] (or [rows, in], the same rows for every
    run), weight [runs, out, in], bias [runs, out] or None; the outputs [runs, rows, out]."""
    if x.dim() == 2:
        x = x.expand(weight.shape[0], *x.shape)
    h = torch.bmm(x, weight.mT)
    return h if bias is None else h + bias.unsqueeze(-2)


class Dense(nn.Linear):
    """nn.Linear, computed as the batched engine computes one run of its program (see `dense`);
    its parameters, their names and its state dict are nn.Linear's."""

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(1, -1, x.shape[-1])
        bias = None if self.bias is None else self.bias.unsqueeze(0)
        return dense(rows, self.weight.unsqueeze(0), bias).reshape(*x.shape[:-1], self.out_features)
