"""The batched engine: a group of runs (see trainer.units) trained as one program.

Every tensor has a leading run dimension: the parameters, the gradients, the optimizer's state and
the per-run settings (learning rates, decay, betas, eps, the schedules' rates). Each run starts from
the weights and draws the rows the loop engine (trainer.train) gives it from its seed, and its update
is torch.optim's rule with its own settings; runs never mix, since the program's loss is the sum of
the runs' losses. Updates use only exactly rounded operations (no fused multiply-add), so a run's
numbers do not depend on which other runs share its program.

Steps go in the loop engine's chunks: at the end of a chunk the captured values reach the host and
every run's sink, a run whose loss stopped being finite is marked diverged at its own step and
leaves the program (the others go on, a smaller batch), and a stop request ends the group.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.core.status import Status
from trainer.kinds import data, losses, metrics
from trainer.kinds.layers import activation, dense
from trainer.kinds.losses import build_loss
from trainer.kinds.models import build_model
from trainer.spec.plan import RunPlan
from trainer.training.batched_optim import Optimizer, clip, rates
from trainer.training.batches import step_indices
from trainer.training.capture import Layout
from trainer.training.evaluate import Evaluator
from trainer.training.loop import (
    NO_STEP,
    Outcome,
    choose_device,
    chunk_steps,
    conclude,
    first_diverged,
    reported_tag,
)
from trainer.training.sink import Captured, Evaluation, NullSink, Sink, split_parameters

# Steps whose rows are gathered at once: one gather instead of one a step, in bounded memory.
GATHER_STEPS = 100


class NotBatchable(Exception):
    """The group cannot train as one program (found once its data is loaded); the message says why."""


# --- the model, the loss and the evaluation, for many runs at once ---------------------------------


def forward(spec: Any, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The outputs [runs, rows, outputs] of a built-in model for rows x ([runs, rows, features], or
    [rows, features] shared by every run); params in the model's parameter order, each [runs, ...]."""
    per_layer = 2 if spec.bias else 1
    layers = [params[i : i + per_layer] for i in range(0, len(params), per_layer)]
    h = x
    for depth, layer in enumerate(layers):
        h = dense(h, layer[0], layer[1] if spec.bias else None)
        if depth < len(layers) - 1:
            h = activation(spec.activation)(h)
    return h


def per_run(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Each run's sum or mean of its [runs, ...] values."""
    flat = values.reshape(values.shape[0], -1)
    return flat.sum(dim=1) if reduction == "sum" else flat.mean(dim=1)


class Loss:
    """A built-in loss of every run at once: [runs]."""

    def __init__(self, spec: Any):
        self.elementwise = build_loss(spec, reduction="none")
        self.squeezes = losses.squeezes(spec)

    def __call__(self, output: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        runs = output.shape[0]
        if self.squeezes:
            output = losses.fit(output, target)  # outputs [runs, N, 1] as [runs, N]
        values = self.elementwise(output.flatten(0, 1), target.flatten(0, 1))
        return per_run(values.view(runs, -1), reduction)


class Evaluate:
    """Evaluator's values for every run: [runs, tags]."""

    def __init__(self, run: RunPlan, dataset: data.Dataset, loss: Loss, truth: torch.Tensor | None):
        self.spec = run.config.model
        self.loss = loss
        self.metrics = [metrics.BUILTIN[name].over_runs for name in run.config.eval.metrics]
        self.splits = [dataset.train] + ([dataset.validation] if dataset.validation is not None else [])
        self.truth = truth

    @torch.no_grad()
    def __call__(self, params: list[torch.Tensor]) -> torch.Tensor:
        runs = params[0].shape[0]
        values = []
        for split in self.splits:
            output = forward(self.spec, params, split.x)
            target = split.y.expand(runs, *split.y.shape)
            values.append(self.loss(output, target, "mean").float())
            values += [metric(output, target) for metric in self.metrics]
        if self.truth is not None:
            weights = torch.cat([p.reshape(runs, -1) for p in params], dim=1)
            values.append(torch.linalg.vector_norm(weights - self.truth, dim=1))
        return torch.stack(values, dim=1)


@dataclass
class Ended:
    """A run that left the program: how, at which step, and its parameters then."""

    status: Status
    last: int
    params: list[torch.Tensor]


def train_group(
    runs: list[RunPlan],
    sinks: list[Sink] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int], None] = lambda steps: None,
    judges: list[Callable[[int, float], bool] | None] | None = None,
) -> list[Outcome]:
    """Train every run of a group to its end, its divergence, until should_stop() says so between
    chunks, or until its judge (a search's pruner, told each evaluation's reported value at the end
    of the chunk it fell in) prunes it; the outcomes in the runs' order, each as the loop engine
    would give it. A pruned run leaves the program, as a diverged one does."""
    sinks = sinks or [NullSink() for _ in runs]
    first = runs[0]
    config = first.config
    spec = config.model
    steps = first.steps
    modules = [build_model(r.config.model, r.shape, r.config.train.seed) for r in runs]
    device = choose_device(first, modules[0], len(runs))
    dataset = data.load(config.data, Path(first.data_folder), device)
    if dataset.train.dataset is None and dataset.train.x.dim() != 2:
        raise NotBatchable("the rows are not flat feature vectors")
    names = [n for n, _ in modules[0].named_parameters()]
    params = [
        torch.stack([dict(m.named_parameters())[n].detach() for m in modules]).to(device) for n in names
    ]
    loss_fn = Loss(config.loss)
    evaluator = Evaluator(first, modules[0].to(device), dataset, device)
    evaluate = Evaluate(first, dataset, loss_fn, evaluator.truth)
    optimizer = Optimizer(runs, params)
    lr_table = rates(runs, steps)
    lr_steps = torch.tensor(lr_table.T.copy(), device=device)  # [steps, runs], float64
    lr_steps_32 = lr_steps.float()
    full = config.train.batch_size == "full"
    x, y = dataset.train.x, dataset.train.y
    index = [
        step_indices(
            len(x), None if full else r.batch_size, steps, config.train.sampling, r.config.train.seed
        )
        for r in runs
    ]
    shared_rows = index[0] is None
    if not shared_rows:
        index_all = torch.stack(index).to(device)  # [runs, steps, batch]
    small, large = split_parameters(modules[0], config.log.max_elements)
    order = [names.index(n) for n, _ in small + large]  # the sink's order: small parameters first
    layout = Layout([p.numel() for _, p in small], [p.numel() for _, p in large])
    for sink, module in zip(sinks, modules):
        sink.begin(module, None, evaluator.tags, capturing=False)
    every, histograms_every = config.log.every, config.log.histograms_every
    eval_every, max_norm = config.eval.every, config.train.clip_grad_norm
    chunk = chunk_steps(list(modules[0].parameters()))
    judges = judges or [None] * len(runs)
    reported = [reported_tag(r, evaluator.tags) if j is not None else None for r, j in zip(runs, judges)]
    # A chunk ends at each step a pruner may decide at, so that a pruned run stops there.
    verdicts = {s for r, i in zip(runs, reported) if i is not None for s in r.trial.verdicts}
    told = [0] * len(runs)  # evaluations of each run told to its judge
    pruned: dict[int, int] = {}  # run -> the evaluation step its trial was pruned at

    alive = list(range(len(runs)))  # which run each row of the program's tensors is
    ended: dict[int, Ended] = {}
    histories: list[list[Evaluation]] = [[] for _ in runs]
    first_step = 0
    losses_: list[torch.Tensor] = []
    evals: list[tuple[int, torch.Tensor]] = []
    captured: list[tuple[int, float, bool, list[torch.Tensor]]] = []  # step, wall, histogram, weights+grads
    for step in range(steps):
        params = [p.requires_grad_() for p in params]
        if shared_rows:
            xb, yb = x, y.expand(len(alive), *y.shape)
        else:
            if step % GATHER_STEPS == 0:  # the rows of the next steps, step-major: a step's are contiguous
                rows_ahead = index_all[:, step : step + GATHER_STEPS].transpose(0, 1)
                xs, ys = x[rows_ahead], y[rows_ahead]
            xb, yb = xs[step % GATHER_STEPS], ys[step % GATHER_STEPS]
        loss = loss_fn(forward(spec, params, xb), yb, config.loss.reduction)
        grads = list(torch.autograd.grad(loss.sum(), params))
        params = [p.detach() for p in params]
        if max_norm is not None:
            grads = clip(grads, max_norm)
        # logging (reads only): the losses, the evaluation, the weights and gradients before the update
        losses_.append(loss.detach())
        if step % eval_every == 0:
            evals.append((step, evaluate(params)))
        histogram = bool(histograms_every) and step % histograms_every == 0
        if step % every == 0 or histogram:
            captured.append(
                (step, time.time(), histogram, [params[i] for i in order] + [grads[i] for i in order])
            )
        # A run pruned at this step ends with the weights it was judged by, as under the loop engine.
        before = params if step in verdicts else None
        params = optimizer.step(params, grads, lr_steps_32[step], lr_steps[step])
        if (step + 1) % chunk and step + 1 != steps and step not in verdicts:
            continue
        bad = _hand_over(sinks, alive, first_step, losses_, evals, captured, lr_table, layout, histories)
        losses_, evals, captured, first_step = [], [], [], step + 1
        on_progress(step + 1)
        stopping = should_stop() and step + 1 < steps
        if step + 1 < steps:
            for run in alive:
                if reported[run] is not None and bad[run] is None:
                    new = [ev for ev in histories[run][told[run] :] if ev.step in verdicts]
                    verdict = _judge(judges[run], new, reported[run])
                    told[run] = len(histories[run])
                    if verdict is not None:
                        pruned[run] = verdict
            for run in alive:  # a replicate pruned after this one reported: its trial is pruned
                if reported[run] is not None and bad[run] is None and run not in pruned and histories[run]:
                    last_ev = histories[run][-1]
                    if judges[run](last_ev.step, float(last_ev.values[reported[run]])):
                        pruned[run] = last_ev.step
        gone = [i for i, run in enumerate(alive) if bad[run] is not None or stopping or run in pruned]
        for i in gone:
            run = alive[i]
            if bad[run] is not None:
                ended[run] = Ended(Status.DIVERGED, bad[run], [p[i] for p in params])
            elif run in pruned and before is not None and pruned[run] == step:
                ended[run] = Ended(Status.PRUNED, step - 1, [p[i] for p in before])
            elif run in pruned:
                ended[run] = Ended(Status.PRUNED, step, [p[i] for p in params])
            else:
                ended[run] = Ended(Status.INTERRUPTED, step, [p[i] for p in params])
        if gone:
            keep = [i for i in range(len(alive)) if i not in set(gone)]
            alive = [alive[i] for i in keep]
            if not alive:
                break
            kept = torch.tensor(keep, device=device)
            params = [p[kept] for p in params]
            optimizer.keep(kept)
            lr_steps, lr_steps_32 = lr_steps[:, kept], lr_steps_32[:, kept]
            if not shared_rows:
                index_all, xs, ys = index_all[kept], xs[:, kept], ys[:, kept]

    final_values = evaluate(params).tolist() if alive and len(ended) < len(runs) else []
    outcomes = []
    finals = dict(zip(alive, final_values))
    for r, (run, sink, module) in enumerate(zip(runs, sinks, modules)):
        if r in ended:
            status, last, weights = ended[r].status, ended[r].last, ended[r].params
        else:
            status, last, weights = Status.COMPLETE, steps - 1, [p[alive.index(r)] for p in params]
        model = module.cpu()
        with torch.no_grad():
            for p, value in zip(model.parameters(), weights):
                p.copy_(value)
        stopped = (pruned[r], "pruned") if status == Status.PRUNED else None
        outcomes.append(
            conclude(
                run,
                sink,
                model,
                str(device),
                evaluator,
                histories[r],
                finals.get(r),
                status,
                last,
                stopped=stopped,
            )
        )
    return outcomes


def _judge(judge: Callable[[int, float], bool], evaluations: list[Evaluation], tag: int) -> int | None:
    """Tell a run's judge its new evaluations in order; the step of the first it prunes the run at."""
    for ev in evaluations:
        if judge(ev.step, float(ev.values[tag])):
            return ev.step
    return None


def _hand_over(
    sinks: list[Sink],
    alive: list[int],
    first: int,
    losses_: list[torch.Tensor],
    evals: list[tuple[int, torch.Tensor]],
    captured: list[tuple[int, float, bool, list[torch.Tensor]]],
    lr_table: np.ndarray,
    layout: Layout,
    histories: list[list[Evaluation]],
) -> dict[int, int | None]:
    """Bring a chunk's values to the host and write every run's at once (trainer.tensorboard.sink.write_group),
    each up to its first diverged step, which is returned (None where all is finite), as
    trainer.training.loop.hand_over does for one run."""
    runs = len(alive)
    host_losses = torch.stack(losses_, dim=1).cpu().numpy().astype(np.float64)  # [runs, steps]
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
