"""Logging sinks: the training loop hands them values, they decide what reaches disk and when.

Per-step values stay on the training device as small tensors and reach the host once per chunk
of steps, so logging costs one device-to-host copy per chunk instead of one `.item()` per value.
Logging only reads: it never draws random numbers or touches the model's state.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import summary as tb_summary

from trainer import events
from trainer.events import EventFile, ScalarTags, summary_event
from trainer.hparams import METRIC_TAGS, session_end_pb, session_start_pb
from trainer.schema import LogSettings

HISTOGRAM_BINS = 30


@dataclass
class Evaluation:
    """The full-data loss (mean per row) and the distance to the true weights at one step."""

    step: int
    loss: float
    distance: float | None


class NullSink:
    """Writes nothing; the loop computes exactly what it computes with a real sink."""

    def begin(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def capture(self, step: int) -> None:
        pass

    def write(self, first_step: int, losses: list[float], evaluations: list[Evaluation], last_step: int) -> None:
        pass

    def finish(self, status: str, steps: int, metrics: dict[str, Any], final: Evaluation | None) -> None:
        pass

    def close(self) -> None:
        pass


# Tags. They are short on purpose: a step's event repeats every tag, so tag length is most of a
# run's disk size. w/... are weights, g/... their gradients, one curve per element.
LOSS = "loss"                    # the minibatch loss, with the spec's reduction
LR = "lr"                        # written when it changes
EVAL_LOSS = "eval/loss"          # the full-data loss, mean per row
EVAL_DISTANCE = "eval/distance"  # distance from the weights to the true weights


def element_names(name: str, shape: torch.Size, linear: bool = False) -> list[str]:
    """Curve names for a parameter's elements: '0'.. for a linear model's weights, 'b' for its
    bias, 'name[i,j]' elsewhere (leading size-1 dimensions dropped)."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    if linear and name == "weight":
        return [str(i) for i in range(dims[-1])]
    if linear and name == "bias":
        return ["b"]
    if not dims or dims == [1]:
        return [name]
    return [f"{name}[{','.join(map(str, index))}]" for index in itertools.product(*(range(d) for d in dims))]


def histogram_stats(t: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """min, max, sum, sum of squares and bucket counts of a tensor, computed on its device."""
    flat = t.detach().reshape(-1).float()
    lo, hi = torch.aminmax(flat)
    width = (hi - lo).clamp_min(1e-30) / bins
    # NaN and inf land in an edge bucket instead of failing: logging never stops a run.
    index = ((flat - lo) / width).nan_to_num(0.0).clamp(0, bins - 1).long()
    counts = torch.zeros(bins, device=flat.device).index_add_(0, index, torch.ones_like(flat))
    return torch.cat([lo.view(1), hi.view(1), flat.sum().view(1), flat.dot(flat).view(1), counts])


def histogram_value(tag: str, stats: list[float], count: int) -> bytes:
    """Encode [min, max, sum, sum of squares, *bucket counts] as a histogram with equal-width buckets."""
    lo, hi, total, squares, *counts = stats
    if not hi > lo:   # all equal (or not finite): one bucket holds everything
        return events.histogram_value(tag, lo, hi, count, total, squares, [hi], [float(count)])
    bins = len(counts)
    limits = [lo + (hi - lo) * (i + 1) / bins for i in range(bins)]
    return events.histogram_value(tag, lo, hi, count, total, squares, limits, counts)


def binned(values: list[float]) -> list[float]:
    """histogram_stats for a few values already on the host, with no more buckets than values."""
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    lo, hi = min(finite), max(finite)
    bins = min(HISTOGRAM_BINS, len(values))
    counts = [0.0] * bins
    width = (hi - lo) / bins
    for v in values:
        i = int((v - lo) / width) if width > 0 and math.isfinite(v) else 0
        counts[min(max(i, 0), bins - 1)] += 1
    return [lo, hi, math.fsum(values), math.fsum(v * v for v in values), *counts]


class TensorBoardSink:
    """Writes a run's curves, histograms, configuration and hparams into one event file.

    A logged step holds, in order: the weights of small parameters (one value per element) and the
    norms of large ones, then the same for the gradients.
    """

    def __init__(self, folder: str | Path, settings: LogSettings, hparams: dict[str, Any], config_text: str,
                 has_truth: bool):
        self.folder = Path(folder)
        self.every = settings.every
        self.histograms_every = settings.histograms_every
        self.max_elements = settings.max_elements
        self.hparams = hparams
        self.config_text = config_text
        self.has_truth = has_truth
        self.events: EventFile | None = None

    def begin(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.events = EventFile(self.folder)
        self.optimizer = optimizer
        named = list(model.named_parameters())
        self.small = [(n, p) for n, p in named if p.numel() <= self.max_elements]
        self.large = [(n, p) for n, p in named if p.numel() > self.max_elements]
        self.small_params = [p for _, p in self.small]
        # Views of the parameters: the optimizer updates in place, so these always show the current values.
        views = [p.detach().view(-1) for p in self.small_params]
        self.copy_weights = (lambda: views[0].clone()) if len(views) == 1 else (lambda: torch.cat(views))
        self.small_size = sum(p.numel() for p in self.small_params)
        linear = isinstance(model, torch.nn.Linear)
        curves = [e for n, p in self.small for e in element_names(n, p.shape, linear)]
        curves += [f"{n}.norm" for n, _ in self.large]
        self.step_tags = ScalarTags([LOSS, *(f"w/{c}" for c in curves), *(f"g/{c}" for c in curves)])
        self.lr_tags = ScalarTags([LR])
        self.last_lr: float | None = None
        self.final_tags = ScalarTags([f"w/{c}" for c in curves])
        self.eval_tags = ScalarTags([EVAL_LOSS, EVAL_DISTANCE] if self.has_truth else [EVAL_LOSS])
        self._reset()
        start = time.time()
        self.events.write_summary(session_start_pb(self.hparams, start), 0, start)
        indented = "\n".join("    " + line for line in self.config_text.splitlines())
        self.events.write_summary(tb_summary.text("config", indented), 0, start)
        self.events.flush()

    def _reset(self) -> None:
        self.info: list[tuple[int, float, float]] = []       # (step, wall time, learning rate)
        self.weights: list[torch.Tensor] = []                # small parameters' elements, copied
        self.grads: list[list[torch.Tensor | None]] = []     # small parameters' gradients, by reference
        self.norms: list[torch.Tensor] = []                  # large parameters' weight and gradient norms
        self.large_histograms: list[torch.Tensor] = []       # per histogram step, binned on the device

    def capture(self, step: int) -> None:
        """Keep this step's weights and gradients (before the update) on the device."""
        histogram = self.histograms_every and step % self.histograms_every == 0
        if step % self.every and not histogram:
            return
        self.info.append((step, time.time(), self.optimizer.param_groups[0]["lr"]))
        if self.small_params:
            self.weights.append(self.copy_weights())
            # zero_grad() leaves .grad as None and backward() makes a new tensor each step, which
            # torch's optimizers only read: keeping a reference is as good as a copy, and free.
            self.grads.append([p.grad for p in self.small_params])
        if self.large:
            self.norms.append(torch.stack([torch.linalg.vector_norm(t.detach()) for _, p in self.large
                                           for t in (p, _grad(p))]))
            if histogram:
                self.large_histograms.append(torch.stack([histogram_stats(t) for _, p in self.large
                                                          for t in (p, _grad(p))]))

    def _rows(self) -> list[list[float]]:
        """The captured steps as host values, in the logged layout, with one transfer per kind."""
        count = len(self.info)
        parts = []
        if self.small_params:
            parts.append(torch.stack(self.weights).view(count, -1))
        if self.large:
            parts.append(torch.stack(self.norms)[:, 0::2])
        if self.small_params:
            for i, p in enumerate(self.small_params):
                parts.append(torch.stack([g[i] if g[i] is not None else torch.zeros_like(p) for g in self.grads])
                             .view(count, -1))
        if self.large:
            parts.append(torch.stack(self.norms)[:, 1::2])
        return torch.cat(parts, dim=1).tolist() if count else []

    def write(self, first_step: int, losses: list[float], evaluations: list[Evaluation], last_step: int) -> None:
        """Write the captured steps up to last_step, with the losses of steps first_step onward."""
        rows = self._rows()
        # Evaluations usually fall on logged steps; any that do not go in their own event, in step order.
        pending = {ev.step: self._encode_evaluation(ev) for ev in evaluations if ev.step <= last_step}
        between = sorted(s for s in pending if s % self.every)
        encode, every, write = self.step_tags.encode, self.every, self.events.write_raw
        for (step, wall, lr), row in zip(self.info, rows):
            if step > last_step:
                break
            while between and between[0] < step:
                early = between.pop(0)
                write(summary_event(early, wall, pending.pop(early)))
            if step % every == 0:
                body = encode([losses[step - first_step], *row])
                if lr != self.last_lr:
                    body += self.lr_tags.encode([lr])
                    self.last_lr = lr
                write(summary_event(step, wall, body + pending.pop(step) if step in pending else body))
        for step in sorted(pending):
            write(summary_event(step, time.time(), pending[step]))
        if self.histograms_every:
            self._write_histograms(rows, last_step)
        self._reset()
        self.events.flush()

    def _encode_evaluation(self, ev: Evaluation) -> bytes:
        return self.eval_tags.encode([ev.loss, ev.distance] if self.has_truth else [ev.loss])

    def _write_histograms(self, rows: list[list[float]], last_step: int) -> None:
        """Small parameters are binned here from their captured values; large ones were binned on the device."""
        large = iter(torch.stack(self.large_histograms).tolist() if self.large_histograms else [])
        grad_start = self.small_size + len(self.large)
        for (step, wall, _), row in zip(self.info, rows):
            if step % self.histograms_every:
                continue
            large_stats = next(large, [])
            if step > last_step:
                break
            body = []
            offset = 0
            for name, p in self.small:
                size = p.numel()
                weights, grads = row[offset:offset + size], row[grad_start + offset:grad_start + offset + size]
                body.append(histogram_value(f"hist/w/{name}", binned(weights), size))
                body.append(histogram_value(f"hist/g/{name}", binned(grads), size))
                offset += size
            for (name, p), weights, grads in zip(self.large, large_stats[0::2], large_stats[1::2]):
                body.append(histogram_value(f"hist/w/{name}", weights, p.numel()))
                body.append(histogram_value(f"hist/g/{name}", grads, p.numel()))
            self.events.write_raw(summary_event(step, wall, b"".join(body)))

    def finish(self, status: str, steps: int, metrics: dict[str, Any], final: Evaluation | None) -> None:
        """The final weights and evaluation, the HParams metrics and the session's end."""
        now = time.time()
        body = []
        if status == "complete":
            weights = [p.detach().view(-1) for p in self.small_params]
            weights += [torch.linalg.vector_norm(p.detach()).view(1) for _, p in self.large]
            body.append(self.final_tags.encode(torch.cat(weights).tolist()))
            if final is not None:
                body.append(self._encode_evaluation(final))
        numbers = {tag: metrics.get(tag.removeprefix("final/")) for tag in METRIC_TAGS}
        present = [(tag, float(v)) for tag, v in numbers.items() if v is not None and math.isfinite(v)]
        body.append(ScalarTags([t for t, _ in present]).encode([v for _, v in present]))
        self.events.write_raw(summary_event(steps, now, b"".join(body)))
        self.events.write_summary(session_end_pb(status, now), steps, now)
        self.events.flush()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)
