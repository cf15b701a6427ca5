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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.core.status import Status
from trainer.kinds import data, losses, metrics
from trainer.kinds.layers import activation, dense
from trainer.kinds.losses import build_loss
from trainer.kinds.models import build_model
from trainer.spec.plan import RunPlan
from trainer.training.batched_optim import Optimizer, clip, rates
from trainer.training.batches import step_indices
from trainer.training.callbacks import Callbacks, ChunkEnd, Stop, end_chunk, pruning_of
from trainer.training.context import RunContext
from trainer.training.ending import Outcome, conclude
from trainer.training.evaluate import Evaluator
from trainer.training.handover import GroupPending, Shown, hand_over_group
from trainer.training.loop import choose_device, chunk_steps
from trainer.training.sink import Evaluation, NullSink, Sink

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


class Program:
    """The group's tensors, each with a leading run dimension (a row per run still in the program):
    the parameters, the optimizer's state, the learning rates of every step and the rows each
    step draws."""

    def __init__(self, runs: list[RunPlan], modules: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor):
        config, steps = runs[0].config, runs[0].steps
        device = x.device
        names = [n for n, _ in modules[0].named_parameters()]
        self.params = [
            torch.stack([dict(m.named_parameters())[n].detach() for m in modules]).to(device) for n in names
        ]
        self.spec, self.reduction = config.model, config.loss.reduction
        self.loss_fn, self.max_norm = Loss(config.loss), config.train.clip_grad_norm
        self.optimizer = Optimizer(runs, self.params)
        self.lr_table = rates(runs, steps)
        self.lr_steps = torch.tensor(self.lr_table.T.copy(), device=device)  # [steps, runs], float64
        self.lr_steps_32 = self.lr_steps.float()
        full = config.train.batch_size == "full"
        index = [
            step_indices(
                len(x), None if full else r.batch_size, steps, config.train.sampling, r.config.train.seed
            )
            for r in runs
        ]
        self.x, self.y, self.shared_rows = x, y, index[0] is None
        if not self.shared_rows:
            self.index_all = torch.stack(index).to(device)  # [runs, steps, batch]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each run's rows of this step."""
        if self.shared_rows:
            return self.x, self.y.expand(len(self.params[0]), *self.y.shape)
        if step % GATHER_STEPS == 0:  # the rows of the next steps, step-major: a step's are contiguous
            rows_ahead = self.index_all[:, step : step + GATHER_STEPS].transpose(0, 1)
            self.xs, self.ys = self.x[rows_ahead], self.y[rows_ahead]
        return self.xs[step % GATHER_STEPS], self.ys[step % GATHER_STEPS]

    def gradients(self, step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every run's loss [runs] on its batch of this step, and the (clipped) gradients."""
        xb, yb = self.batch(step)
        params = [p.requires_grad_() for p in self.params]
        loss = self.loss_fn(forward(self.spec, params, xb), yb, self.reduction)
        grads = list(torch.autograd.grad(loss.sum(), params))
        self.params = [p.detach() for p in params]
        if self.max_norm is not None:
            grads = clip(grads, self.max_norm)
        return loss, grads

    def update(self, step: int, grads: list[torch.Tensor]) -> None:
        self.params = self.optimizer.step(self.params, grads, self.lr_steps_32[step], self.lr_steps[step])

    def keep(self, keep: list[int]) -> None:
        """Only these rows (runs) from now on."""
        kept = torch.tensor(keep, device=self.params[0].device)
        self.params = [p[kept] for p in self.params]
        self.optimizer.keep(kept)
        self.lr_steps, self.lr_steps_32 = self.lr_steps[:, kept], self.lr_steps_32[:, kept]
        if not self.shared_rows:
            self.index_all, self.xs, self.ys = self.index_all[kept], self.xs[:, kept], self.ys[:, kept]


def train_group(
    runs: list[RunPlan], sinks: list[Sink] | None = None, context: RunContext | None = None
) -> list[Outcome]:
    """Train every run of a group to its end, its divergence, until context.should_stop() says so
    between chunks, or until its callbacks stop it (a search's pruner, told each evaluation's
    reported value at the end of the chunk it fell in); the outcomes in the runs' order, each as the
    loop engine would give it. A pruned run leaves the program, as a diverged one does."""
    sinks, context = sinks or [NullSink() for _ in runs], context or RunContext()
    first, steps, config = runs[0], runs[0].steps, runs[0].config
    modules, device, dataset = _load(runs)
    program = Program(runs, modules, dataset.train.x, dataset.train.y)
    evaluator = Evaluator(first, modules[0].to(device), dataset, device)
    evaluate = Evaluate(first, dataset, program.loss_fn, evaluator.truth)
    shown = Shown(modules[0], config.log)
    for sink, module in zip(sinks, modules):
        sink.begin(module, None, evaluator.tags, capturing=False)
    eval_every, chunk = config.eval.every, chunk_steps(list(modules[0].parameters()))
    callbacks = [Callbacks([pruning_of(r, evaluator.tags, context, as_made=False)], steps) for r in runs]
    # A chunk ends where a run's callbacks act (a pruner's verdict), so that the run stops there.
    ends = set().union(*(found for c in callbacks for found in c.ends))
    alive = list(range(len(runs)))  # which run each row of the program's tensors is
    ended: dict[int, Ended] = {}  # the runs that left the program, and the callbacks' stops
    stops: dict[int, Stop] = {}
    histories: list[list[Evaluation]] = [[] for _ in runs]
    pending = GroupPending(0)
    for step in range(steps):
        loss, grads = program.gradients(step)
        params = program.params
        # logging (reads only): the losses, the evaluation, the weights and gradients before the update
        pending.losses.append(loss.detach())
        if step % eval_every == 0:
            pending.evals.append((step, evaluate(params)))
        shown.capture(step, params, grads, pending)
        program.update(step, grads)
        if (step + 1) % chunk and step + 1 != steps and step + 1 not in ends:
            continue
        bad = hand_over_group(sinks, alive, pending, program.lr_table, shown.layout, histories)
        pending = GroupPending(step + 1)
        context.on_progress(step + 1)
        stopping = context.should_stop() and step + 1 < steps
        going = [run for run in alive if bad[run] is None]
        told = end_chunk(
            [(callbacks[run], ChunkEnd(step + 1, steps, stopping, histories[run])) for run in going]
        )
        stops.update((run, stop) for run, stop in zip(going, told) if stop is not None)
        # A run pruned at this step ends with the weights it was judged by, as under the loop engine.
        before = params if step + 1 in ends else None
        alive = _leave(program, alive, bad, stops, stopping, step, before, ended)
        if not alive:
            break
    final_values = evaluate(program.params).tolist() if alive and len(ended) < len(runs) else []
    finals = dict(zip(alive, final_values))
    ended.update(
        (r, Ended(Status.COMPLETE, steps - 1, [p[i] for p in program.params])) for i, r in enumerate(alive)
    )
    return [
        _outcome(
            run,
            sinks[r],
            modules[r],
            str(device),
            evaluator,
            histories[r],
            finals.get(r),
            stops.get(r),
            ended[r],
        )
        for r, run in enumerate(runs)
    ]


def _load(runs: list[RunPlan]) -> tuple[list[torch.nn.Module], torch.device, data.Dataset]:
    """Each run's model (as the loop engine builds it), the group's device and its data."""
    modules = [build_model(r.config.model, r.shape, r.config.train.seed) for r in runs]
    device = choose_device(runs[0], modules[0], len(runs))
    dataset = data.load(runs[0].config.data, Path(runs[0].data_folder), device)
    if dataset.train.dataset is None and dataset.train.x.dim() != 2:
        raise NotBatchable("the rows are not flat feature vectors")
    return modules, device, dataset


def _leave(
    program: Program,
    alive: list[int],
    bad: dict[int, int | None],
    stops: dict[int, Stop],
    stopping: bool,
    step: int,
    before: list[torch.Tensor] | None,
    ended: dict[int, Ended],
) -> list[int]:
    """Take the runs that diverged, stopped or were pruned at this chunk's end (after `step`) out of
    the program, into `ended`; the runs still in it. `before`: the parameters before this step's
    update, where a pruner may have judged this step."""
    params = program.params
    gone = [i for i, run in enumerate(alive) if bad[run] is not None or stopping or run in stops]
    for i in gone:
        run = alive[i]
        if bad[run] is not None:
            ended[run] = Ended(Status.DIVERGED, bad[run], [p[i] for p in params])
        elif run in stops and before is not None and stops[run].step == step:
            ended[run] = Ended(Status.PRUNED, step - 1, [p[i] for p in before])
        elif run in stops:
            ended[run] = Ended(Status.PRUNED, step, [p[i] for p in params])
        else:
            ended[run] = Ended(Status.INTERRUPTED, step, [p[i] for p in params])
    if not gone:
        return alive
    keep = [i for i in range(len(alive)) if i not in set(gone)]
    if keep:
        program.keep(keep)
    return [alive[i] for i in keep]


def _outcome(
    run: RunPlan,
    sink: Sink,
    module: torch.nn.Module,
    device: str,
    evaluator: Evaluator,
    history: list[Evaluation],
    final_values: list[float] | None,
    stop: Stop | None,
    ended: Ended,
) -> Outcome:
    """A run's outcome, its model holding the weights it ended with."""
    model = module.cpu()
    with torch.no_grad():
        for p, value in zip(model.parameters(), ended.params):
            p.copy_(value)
    stopped = (stop.step, stop.reason) if ended.status == Status.PRUNED else None
    return conclude(
        run, sink, model, device, evaluator, history, final_values, ended.status, ended.last, stopped
    )
