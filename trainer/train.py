"""The training loop: compute each step, hand values to the sink, stop on divergence or when asked."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from trainer import data
from trainer.batches import batches
from trainer.models import build_loss, build_model
from trainer.optim import build_optimizer, build_schedule
from trainer.sink import Evaluation, NullSink
from trainer.sweep import RunPlan, parameter_count

# Steps between host syncs (the divergence check, the logging flush and the stop check): as many
# as keep a chunk's captured weights and gradients near CHUNK_BYTES, within these bounds. A tiny
# model gets long chunks, since a flush has a fixed cost that would otherwise outweigh its steps.
MIN_CHUNK, MAX_CHUNK, CHUNK_BYTES = 100, 1000, 64 * 1024
# Below this many multiply-adds per step a GPU only adds kernel-launch latency (measured: the
# notebook's model runs about six times slower on an H100 than on one CPU core).
GPU_MIN_WORK = 1_000_000


@dataclass
class Outcome:
    """How a run ended and what it reached."""

    status: str                       # complete, diverged or interrupted
    steps_done: int
    device: str
    metrics: dict[str, Any]
    final_weights: dict[str, list[float]] = field(default_factory=dict)
    weights_sha256: str = ""          # of all final parameters' bytes: equal digests, identical weights


def choose_device(run: RunPlan) -> torch.device:
    """The spec's device; 'auto' takes the GPU only for models big enough to gain from it."""
    wanted = run.config.train.device
    if wanted != "auto":
        return torch.device(wanted)
    work = parameter_count(run.config, run.features) * run.batch_size
    return torch.device("cuda" if torch.cuda.is_available() and work >= GPU_MIN_WORK else "cpu")


class Evaluator:
    """The full-data loss as a mean per row, so runs of any batch size and reduction compare."""

    def __init__(self, run: RunPlan, model: torch.nn.Module, dataset: data.Dataset):
        self.model = model
        self.x, self.y = dataset.x, dataset.y
        self.loss = build_loss(run.config.loss, reduction="mean")
        self.truth = None
        if run.has_truth:
            truth = [dataset.true_weights.view(-1)]
            if run.config.model.bias:
                truth.append(torch.tensor([dataset.true_bias or 0.0], device=dataset.x.device))
            self.truth = torch.cat(truth)

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        """[loss] or [loss, distance to the true weights], left on the device."""
        loss = self.loss(self.model(self.x).view(-1), self.y).view(1)
        if self.truth is None:
            return loss
        weights = torch.cat([p.detach().view(-1) for p in self.model.parameters()])
        return torch.cat([loss, torch.linalg.vector_norm(weights - self.truth).view(1)])


def chunk_steps(params: list[torch.nn.Parameter]) -> int:
    """Steps per chunk for a model with these parameters (each step keeps 8 bytes an element)."""
    elements = max(1, sum(p.numel() for p in params))
    return max(MIN_CHUNK, min(MAX_CHUNK, CHUNK_BYTES // (8 * elements)))


def converged_step(evaluations: list[Evaluation], tolerance: float) -> int | None:
    """The first evaluation step from which the loss stayed within tolerance to the end."""
    found = None
    for ev in reversed(evaluations):
        if not ev.loss <= tolerance:
            break
        found = ev.step
    return found


def train(run: RunPlan, sink: Any = None, should_stop: Callable[[], bool] = lambda: False,
          on_progress: Callable[[int], None] = lambda steps: None) -> Outcome:
    """Train one run to the end, to divergence, or until should_stop() says so between chunks."""
    sink = sink or NullSink()
    config = run.config
    device = choose_device(run)
    dataset = data.load(config.data, Path(run.data_folder), device)
    model = build_model(config.model, run.features, config.train.seed).to(device)
    loss_fn = build_loss(config.loss)
    optimizer = build_optimizer(config.optimizer, model.parameters())
    schedule = build_schedule(config.schedule, optimizer, run.steps)
    evaluate = Evaluator(run, model, dataset)
    full = config.train.batch_size == "full"
    steps = batches(dataset.x, dataset.y, None if full else run.batch_size, run.steps,
                    config.train.sampling, config.train.seed)
    eval_every = config.eval.every
    params = list(model.parameters())
    chunk = chunk_steps(params)
    sink.begin(model, optimizer)

    history: list[Evaluation] = []
    losses: list[torch.Tensor] = []
    evals: list[tuple[int, torch.Tensor]] = []
    first = 0
    status, last = "complete", run.steps - 1
    for step, (x, y) in enumerate(steps):
        loss = loss_fn(model(x).view(-1), y)
        # What optimizer.zero_grad() does, without its profiler and compiler hooks (16 us a step,
        # a tenth of a notebook step); the update itself is torch's optimizer, untouched.
        for p in params:
            p.grad = None
        loss.backward()
        # logging (reads only): the loss, the evaluation and the sink's capture, all before the update
        losses.append(loss.detach())
        if step % eval_every == 0:
            evals.append((step, evaluate()))
        sink.capture(step)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if (step + 1) % chunk and step + 1 != run.steps:
            continue
        bad = _flush(sink, first, losses, evals, history)
        losses, evals, first = [], [], step + 1
        on_progress(step + 1)
        if bad is not None:
            status, last = "diverged", bad
            break
        if should_stop() and step + 1 < run.steps:
            status, last = "interrupted", step
            break

    final = None
    if status == "complete":
        final = _evaluation(run.steps, evaluate().tolist())
        if not math.isfinite(final.loss):
            status, last = "diverged", run.steps
        history.append(final)
    tolerance = config.eval.tolerance
    reached = converged_step(history, tolerance) if status == "complete" else None
    metrics = {
        "eval_loss": final.loss if status == "complete" else None,
        "weight_distance": final.distance if status == "complete" and final else None,
        "converged": reached is not None,
        "converged_step": reached,
        "diverged": status == "diverged",
        "diverged_step": last if status == "diverged" else None,
    }
    sink.finish(status, run.steps if status == "complete" else last, metrics, final)
    # JSON has no NaN: a diverged weight is recorded as null.
    weights = {name: [v if math.isfinite(v) else None for v in p.detach().view(-1).tolist()]
               for name, p in model.named_parameters() if p.numel() <= config.log.max_elements}
    digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()
    return Outcome(status, last + 1 if status != "complete" else run.steps, str(device), metrics, weights, digest)


def _evaluation(step: int, values: list[float]) -> Evaluation:
    return Evaluation(step, values[0], values[1] if len(values) > 1 else None)


def _flush(sink: Any, first: int, losses: list[torch.Tensor], evals: list[tuple[int, torch.Tensor]],
           history: list[Evaluation]) -> int | None:
    """Bring a chunk's values to the host, hand them to the sink; the first diverged step or None."""
    host_losses = torch.stack(losses).tolist()
    host_evals = torch.stack([v for _, v in evals]).tolist() if evals else []
    evaluations = [_evaluation(step, values) for (step, _), values in zip(evals, host_evals)]
    bad = next((first + i for i, v in enumerate(host_losses) if not math.isfinite(v)), None)
    bad_eval = next((ev.step for ev in evaluations if not math.isfinite(ev.loss)), None)
    if bad_eval is not None and (bad is None or bad_eval < bad):
        bad = bad_eval
    last = bad if bad is not None else first + len(host_losses) - 1
    history.extend(ev for ev in evaluations if ev.step <= last)
    sink.write(first, host_losses, evaluations, last)
    return bad
