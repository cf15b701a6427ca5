"""A chunk's values, brought to the host and handed to the sinks, each run's up to its first
diverged step: one run's (the loop engine) or every run's of a program at once (the batched
engine, through the sink class's write_group)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainer.training.capture import Layout
from trainer.training.sink import Captured, Evaluation, Sink, split_parameters


@dataclass
class Pending:
    """A chunk's values still on the device: the losses from step `first` on, the evaluations."""

    first: int
    losses: list[torch.Tensor] = field(default_factory=list)
    evals: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    def flush(self, sink: Sink, history: list[Evaluation], next_step: int) -> int | None:
        """Hand the values to the sink (see flush) and start the next chunk at `next_step`."""
        bad = flush(sink, self.first, self.losses, self.evals, history)
        self.first, self.losses, self.evals = next_step, [], []
        return bad


def flush(
    sink: Sink,
    first: int,
    losses: list[torch.Tensor],
    evals: list[tuple[int, torch.Tensor]],
    history: list[Evaluation],
) -> int | None:
    """Bring a chunk's values to the host, hand them to the sink; the first diverged step or None."""
    host_losses = torch.stack(losses).tolist()
    host_evals = torch.stack([v for _, v in evals]).tolist() if evals else []
    evaluations = [Evaluation(step, values) for (step, _), values in zip(evals, host_evals)]
    return hand_over(sink.write, first, host_losses, evaluations, history)


NO_STEP = np.iinfo(np.int64).max  # no step diverged


def first_diverged(
    losses: np.ndarray, first: int, eval_steps: np.ndarray, eval_losses: np.ndarray
) -> np.ndarray:
    """Each run's first step whose minibatch loss (losses [runs, steps], from step `first` on) or
    whose evaluation's loss (eval_losses [runs, evaluations], at eval_steps) is not finite; NO_STEP
    where every one is."""
    return np.minimum(
        _first_bad(losses, first + np.arange(losses.shape[1])), _first_bad(eval_losses, eval_steps)
    )


def _first_bad(values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Each row's step of its first value that is not finite (NO_STEP where all are)."""
    bad = ~np.isfinite(values)
    if not bad.shape[1]:
        return np.full(values.shape[0], NO_STEP)
    return np.where(bad.any(axis=1), steps[bad.argmax(axis=1)], NO_STEP)


def hand_over(
    write: Callable[[int, list[float], list[Evaluation], int], None],
    first: int,
    host_losses: list[float],
    evaluations: list[Evaluation],
    history: list[Evaluation],
) -> int | None:
    """Hand a chunk's values (on the host) to the sink's write, up to the first diverged step,
    which is returned (None if every value is finite)."""
    eval_steps = np.array([ev.step for ev in evaluations], dtype=np.int64)
    eval_losses = np.array([ev.loss for ev in evaluations], dtype=np.float64).reshape(1, -1)
    found = int(first_diverged(np.array([host_losses], dtype=np.float64), first, eval_steps, eval_losses)[0])
    bad = None if found == NO_STEP else found
    last = bad if bad is not None else first + len(host_losses) - 1
    history.extend(ev for ev in evaluations if ev.step <= last)
    write(first, host_losses, evaluations, last)
    return bad


class Shown:
    """What the sinks log of the program's weights and gradients: at which steps, in their order
    (small parameters first), laid out as trainer.training.capture.Layout says."""

    def __init__(self, module: torch.nn.Module, log: Any):
        small, large = split_parameters(module, log.max_elements)
        names = [n for n, _ in module.named_parameters()]
        self.order = [names.index(n) for n, _ in small + large]
        self.layout = Layout([p.numel() for _, p in small], [p.numel() for _, p in large])
        self.every, self.histograms_every = log.every, log.histograms_every

    def capture(
        self, step: int, params: list[torch.Tensor], grads: list[torch.Tensor], pending: GroupPending
    ) -> None:
        """Keep this step's weights and gradients (before the update) where it is logged."""
        histogram = bool(self.histograms_every) and step % self.histograms_every == 0
        if step % self.every == 0 or histogram:
            shown = [params[i] for i in self.order] + [grads[i] for i in self.order]
            pending.captured.append((step, time.time(), histogram, shown))


@dataclass
class GroupPending:
    """A chunk's values still on the device, for every run in the program: the losses from step
    `first` on, the evaluations, and the captured steps (step, wall time, histogram, weights+grads)."""

    first: int
    losses: list[torch.Tensor] = field(default_factory=list)
    evals: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    captured: list[tuple[int, float, bool, list[torch.Tensor]]] = field(default_factory=list)


def hand_over_group(
    sinks: list[Sink],
    alive: list[int],
    pending: GroupPending,
    lr_table: np.ndarray,
    layout: Layout,
    histories: list[list[Evaluation]],
) -> dict[int, int | None]:
    """Bring a chunk's values to the host and write every run's at once (trainer.tensorboard.sink.write_group),
    each up to its first diverged step, which is returned (None where all is finite), as
    hand_over does for one run."""
    runs, first, evals, captured = len(alive), pending.first, pending.evals, pending.captured
    host_losses = torch.stack(pending.losses, dim=1).cpu().numpy().astype(np.float64)  # [runs, steps]
    eval_steps = np.array([step for step, _ in evals], dtype=np.int64)
    tags = evals[0][1].shape[1] if evals else 0
    eval_values = (
        torch.stack([v for _, v in evals], dim=1).cpu().numpy().astype(np.float64)
        if evals
        else np.zeros((runs, 0, tags))
    )  # [runs, evaluations, tags]
    count = len(captured)
    steps = np.array([c[0] for c in captured], dtype=np.int64)
    walls = np.array([c[1] for c in captured])
    flags = np.array([c[2] for c in captured], dtype=bool)
    rows, histograms = np.zeros((runs, count, 0)), None
    if count:
        tensors = zip(*(c[3] for c in captured))  # each parameter's, then each gradient's, over the steps
        values = torch.cat([torch.stack(t, dim=1).reshape(runs, count, -1) for t in tensors], dim=2)
        values = values.cpu().numpy()  # [runs, captured, 2 * total]
        total = layout.total
        weights, grads = values[:, :, :total], values[:, :, total:]
        rows = layout.rows(weights.reshape(runs * count, total), grads.reshape(runs * count, total))
        rows = rows.reshape(runs, count, -1)
        marked = int(flags.sum())
        if marked:
            histograms = layout.histograms(values[:, flags].reshape(runs * marked, 2 * total))
    # A chunk may hold no evaluation (the last one, after a chunk that ended at a pruner's verdict).
    eval_losses = eval_values[:, :, 0] if eval_values.shape[2] else np.zeros((runs, 0))
    bad = first_diverged(host_losses, first, eval_steps, eval_losses)
    last = np.where(bad == NO_STEP, first + host_losses.shape[1] - 1, bad)
    for i, run in enumerate(alive):
        kept = int(np.searchsorted(eval_steps, last[i], side="right"))
        histories[run] += [
            Evaluation(s, v) for s, v in zip(eval_steps[:kept].tolist(), eval_values[i, :kept].tolist())
        ]
    # The sinks of a group are of one class, whose write_group writes all of them at once.
    type(sinks[alive[0]]).write_group(
        [sinks[run] for run in alive],
        first,
        host_losses,
        eval_steps,
        eval_values,
        last,
        Captured(steps, walls, lr_table[alive][:, steps], rows, histograms),
    )
    return {run: (int(b) if b != NO_STEP else None) for run, b in zip(alive, bad.tolist())}
