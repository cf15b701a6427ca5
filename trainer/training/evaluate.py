"""Evaluations: the loss and the metrics on all training rows and on all validation rows.

The loss is measured as a mean per row, so runs of any batch size and reduction compare. The
values of an evaluation stay on the device as one tensor; the loop brings them to the host once
per chunk. A run's summary holds each value's final and best.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trainer.kinds import data, losses, metrics, models
from trainer.kinds.data import Dataset, Split
from trainer.kinds.losses import build_loss
from trainer.spec.plan import RunPlan
from trainer.training.batches import to_device
from trainer.training.sink import DISTANCE, Evaluation

# Rows evaluated in one forward pass: bounds the memory an evaluation takes.
EVAL_ROWS = 4096


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout, batch norm's running statistics) for a while; logging
    never changes training state, so the mode is restored after."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


class Evaluator:
    """Calling it evaluates the model now: [train/loss, train/<metric>..., val/loss, val/<metric>...,
    eval/distance], the last only where the data knows the true weights."""

    def __init__(self, run: RunPlan, model: torch.nn.Module, dataset: Dataset, device: torch.device):
        self.model = model
        self.collate = data.collate_of(run.config.data, Path(run.data_folder))
        # The built-in models have no layer that acts differently in eval mode (dropout, batch norm),
        # so they are evaluated without switching modes, which would cost more than their evaluation.
        self.switches_mode = not models.is_builtin(run.config.model)
        self.device = device
        self.loss = build_loss(run.config.loss, reduction="mean")
        self.squeezes = losses.squeezes(run.config.loss)
        self.metrics = [
            metrics.resolve(name, Path(run.data_folder), f"eval.metrics[{i}]")
            for i, name in enumerate(run.config.eval.metrics)
        ]
        self.splits = [("train", dataset.train)]
        if dataset.validation is not None:
            self.splits.append(("val", dataset.validation))
        self.main = self.splits[-1][0]  # the split whose values rank runs: validation where there is one
        self.truth = None
        if run.has_truth:
            truth = [dataset.true_weights.view(-1)]
            if run.config.model.bias:
                truth.append(torch.tensor([dataset.true_bias or 0.0], device=device))
            self.truth = torch.cat(truth)
        greater = {"loss": False}
        for metric in self.metrics:
            names = [metric.name]
            if metric not in metrics.BUILTIN.values():
                # A user's metric may return a dict: its names are known once it has run.
                with torch.no_grad(), evaluating(model):
                    names = list(metrics.values(metric, *self._outputs(self.splits[0][1])))
            greater.update((name, metrics.greater_is_better(metric, name)) for name in names)
        self.names = list(greater)
        self.tags = [f"{split}/{name}" for split, _ in self.splits for name in self.names]
        self.better = {f"{split}/{name}": greater[name] for split, _ in self.splits for name in self.names}
        if self.truth is not None:
            self.tags.append(DISTANCE)

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        """Every value of `tags`, as one tensor left on the device."""
        if not self.switches_mode:
            return torch.stack(self._all())
        with evaluating(self.model):
            return torch.stack(self._all())

    def _all(self) -> list[torch.Tensor]:
        values = []
        for _, split in self.splits:
            output, target = self._outputs(split)
            values.append(self.loss(self._fit(output, target), target).float())
            for metric in self.metrics:
                values += [self._scalar(v) for v in metrics.values(metric, output, target).values()]
        if self.truth is not None:
            weights = torch.cat([p.detach().view(-1) for p in self.model.parameters()])
            values.append(torch.linalg.vector_norm(weights - self.truth))
        return values

    def _scalar(self, value: Any) -> torch.Tensor:
        """A metric's value as a 0-d float32 tensor on the device (a number, or a tensor of one value)."""
        if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype == torch.float32:
            return value
        return torch.as_tensor(value, dtype=torch.float32, device=self.device).reshape(())

    def _fit(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[N, 1] outputs meet [N] targets of a built-in regression or binary loss."""
        return losses.fit(output, target) if self.squeezes else output

    def _outputs(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's outputs for every row of a split, and the targets."""
        if split.dataset is None:
            x, y = split.x, split.y
            if x.shape[0] <= EVAL_ROWS:
                return self.model(x), y
            return torch.cat([self.model(part) for part in x.split(EVAL_ROWS)]), y
        from torch.utils.data import DataLoader

        outputs, targets = [], []
        for x, y in DataLoader(split.dataset, batch_size=min(EVAL_ROWS, 1024), collate_fn=self.collate):
            outputs.append(self.model(to_device(x, self.device)))
            targets.append(y.to(self.device))
        return torch.cat(outputs), torch.cat(targets)

    def summary(self, history: list[Evaluation], final: Evaluation | None) -> dict[str, Any]:
        """The run's metrics: every value's final (None where the run did not finish), and the best
        value of the main split's loss and metrics over all evaluations."""
        out: dict[str, Any] = {}
        for i, tag in enumerate(self.tags):
            key = "final/weight_distance" if tag == DISTANCE else f"final/{tag}"
            out[key] = final.values[i] if final is not None else None
        for i, tag in enumerate(self.tags):
            if not tag.startswith(self.main + "/"):
                continue
            seen = [ev.values[i] for ev in history if ev.values[i] == ev.values[i]]  # NaN is never best
            out[f"best/{tag}"] = (max(seen) if self.better[tag] else min(seen)) if seen else None
        return out
