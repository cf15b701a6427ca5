"""Logging sinks: the training loop hands them values, they decide what reaches disk and when.

Per-step values stay on the training device as small tensors and reach the host once per chunk
of steps, so logging costs one device-to-host copy per chunk instead of one `.item()` per value.
Logging only reads: it never draws random numbers or touches the model's state.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensorboard.compat.proto import summary_pb2
from torch.utils.tensorboard import summary as tb_summary

from trainer.events import EventFile, ScalarTags, scalar_event
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


def element_names(name: str, shape: torch.Size) -> list[str]:
    """'weight[2]' for each element of a parameter; leading size-1 dimensions are dropped."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    if not dims:
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


def histogram_pb(stats: list[float], count: int) -> summary_pb2.HistogramProto:
    lo, hi, total, squares, *counts = stats
    bins = len(counts)
    if not hi > lo:   # all equal (or not finite): one bucket holds everything
        return summary_pb2.HistogramProto(min=lo, max=hi, num=count, sum=total, sum_squares=squares,
                                          bucket_limit=[hi], bucket=[float(count)])
    limits = [lo + (hi - lo) * (i + 1) / bins for i in range(bins)]
    return summary_pb2.HistogramProto(min=lo, max=hi, num=count, sum=total, sum_squares=squares,
                                      bucket_limit=limits, bucket=counts)


class TensorBoardSink:
    """Writes a run's curves, histograms, configuration and hparams into one event file."""

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
        named = [(n, p) for n, p in model.named_parameters()]
        small = [(n, p) for n, p in named if p.numel() <= self.max_elements]
        large = [(n, p) for n, p in named if p.numel() > self.max_elements]
        self.params = [p for _, p in named]
        self.small_params = [p for _, p in small]
        self.large_params = [p for _, p in large]
        # Views of the parameters: the optimizer updates in place, so these always show the current values.
        self.small_views = [p.detach().view(-1) for p in self.small_params]
        weight_tags = [f"weights/{e}" for n, p in small for e in element_names(n, p.shape)]
        grad_tags = [f"gradients/{e}" for n, p in small for e in element_names(n, p.shape)]
        weight_tags += [f"weights/{n}.norm" for n, _ in large]
        grad_tags += [f"gradients/{n}.norm" for n, _ in large]
        self.step_tags = ScalarTags(["loss/train", "train/lr", *weight_tags, *grad_tags])
        self.final_tags = ScalarTags(weight_tags)
        self.eval_tags = ScalarTags(["eval/loss", "eval/distance_to_truth"] if self.has_truth else ["eval/loss"])
        self.histogram_tags = [f"histograms/{kind}/{n}" for n, _ in named for kind in ("weights", "gradients")]
        self.param_sizes = [p.numel() for _, p in named]
        self.rows: list[torch.Tensor] = []
        self.row_steps: list[int] = []
        self.row_info: list[tuple[float, float]] = []      # (wall time, learning rate)
        self.histograms: list[tuple[int, float, torch.Tensor]] = []
        start = time.time()
        self.events.write_summary(session_start_pb(self.hparams, start), 0, start)
        indented = "\n".join("    " + line for line in self.config_text.splitlines())
        self.events.write_summary(tb_summary.text("config", indented), 0, start)
        self.events.flush()

    def _weights(self) -> list[torch.Tensor]:
        return [*self.small_views, *(torch.linalg.vector_norm(p.detach()).view(1) for p in self.large_params)]

    def capture(self, step: int) -> None:
        """Keep this step's weights and gradients (before the update) on the device."""
        if step % self.every == 0:
            grads = [p.grad.view(-1) if p.grad is not None else torch.zeros_like(v)
                     for p, v in zip(self.small_params, self.small_views)]
            grads += [torch.linalg.vector_norm(p.grad).view(1) if p.grad is not None
                      else torch.zeros(1, device=p.device) for p in self.large_params]
            self.rows.append(torch.cat([*self._weights(), *grads]))
            self.row_steps.append(step)
            self.row_info.append((time.time(), self.optimizer.param_groups[0]["lr"]))
        if self.histograms_every and step % self.histograms_every == 0:
            stats = [histogram_stats(t) for p in self.params
                     for t in (p, p.grad if p.grad is not None else torch.zeros_like(p))]
            self.histograms.append((step, time.time(), torch.stack(stats)))

    def write(self, first_step: int, losses: list[float], evaluations: list[Evaluation], last_step: int) -> None:
        """Write the captured steps up to last_step, with the losses of steps first_step onward."""
        bodies: dict[int, list[bytes]] = {}
        times: dict[int, float] = {}
        if self.rows:
            values = torch.stack(self.rows).tolist()
            for step, (wall, lr), row in zip(self.row_steps, self.row_info, values):
                if step <= last_step:
                    bodies[step] = [self.step_tags.encode([losses[step - first_step], lr, *row])]
                    times[step] = wall
        for ev in evaluations:
            if ev.step <= last_step:
                bodies.setdefault(ev.step, []).append(self._encode_evaluation(ev))
                times.setdefault(ev.step, time.time())
        for step in sorted(bodies):
            self.events.write_raw(scalar_event(step, times[step], b"".join(bodies[step])))
        if self.histograms:
            self._write_histograms(last_step)
        self.rows, self.row_steps, self.row_info, self.histograms = [], [], [], []
        self.events.flush()

    def _encode_evaluation(self, ev: Evaluation) -> bytes:
        return self.eval_tags.encode([ev.loss, ev.distance] if self.has_truth else [ev.loss])

    def _write_histograms(self, last_step: int) -> None:
        all_stats = torch.stack([s for _, _, s in self.histograms]).tolist()
        for (step, wall, _), stats in zip(self.histograms, all_stats):
            if step > last_step:
                continue
            summary = summary_pb2.Summary()
            for tag, size, row in zip(self.histogram_tags, (s for s in self.param_sizes for _ in (0, 1)), stats):
                summary.value.add(tag=tag, histo=histogram_pb(row, size))
            self.events.write_summary(summary, step, wall)

    def finish(self, status: str, steps: int, metrics: dict[str, Any], final: Evaluation | None) -> None:
        """The final weights and evaluation, the HParams metrics and the session's end."""
        now = time.time()
        body = []
        if status == "complete":
            body.append(self.final_tags.encode(torch.cat(self._weights()).tolist()))
            if final is not None:
                body.append(self._encode_evaluation(final))
        numbers = {tag: metrics.get(tag.removeprefix("final/")) for tag in METRIC_TAGS}
        present = [(tag, float(v)) for tag, v in numbers.items() if v is not None and v == v and abs(v) != float("inf")]
        body.append(ScalarTags([t for t, _ in present]).encode([v for _, v in present]))
        self.events.write_raw(scalar_event(steps, now, b"".join(body)))
        self.events.write_summary(session_end_pb(status, now), steps, now)
        self.events.flush()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
