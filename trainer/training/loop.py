"""The training loop: compute each step, hand values to the sink, stop on divergence or when asked."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.core.status import Status
from trainer.kinds import data, losses
from trainer.kinds.losses import build_loss
from trainer.kinds.models import build_model
from trainer.kinds.optim import build_optimizer, build_schedule
from trainer.spec.plan import RunPlan
from trainer.training.batches import batches, loader_batches
from trainer.training.callbacks import (
    Callbacks,
    Checkpointing,
    ChunkEnd,
    EarlyStopping,
    Stop,
    end_chunk,
    hook_of,
    pruning_of,
    watch_of,
)
from trainer.training.capture import ModelParameters
from trainer.training.context import RunContext
from trainer.training.ending import Outcome, conclude
from trainer.training.evaluate import Evaluator
from trainer.training.handover import Pending
from trainer.training.resume import Checkpoints, Resumed, set_random_state
from trainer.training.resume import state as resume_state
from trainer.training.sink import Evaluation, NullSink, Sink
from trainer.training.watch import Watch

# Steps between host syncs (the divergence check, the logging flush and the stop check): as many
# as keep a chunk's captured weights and gradients near CHUNK_BYTES, within these bounds. A tiny
# model gets long chunks, since a flush has a fixed cost that would otherwise outweigh its steps.
MIN_CHUNK, MAX_CHUNK, CHUNK_BYTES = 100, 1000, 64 * 1024
# Below this many multiply-adds per step a GPU only adds kernel-launch latency (measured: the
# notebook's model runs about six times slower on an H100 than on one CPU core).
GPU_MIN_WORK = 1_000_000


def choose_device(run: RunPlan, model: torch.nn.Module, runs: int = 1) -> torch.device:
    """The spec's device; 'auto' takes the GPU only for a program with enough work a step to gain
    from it (a model's, or all the runs' of a batched group)."""
    wanted = run.config.train.device
    if wanted != "auto":
        return torch.device(wanted)
    work = sum(p.numel() for p in model.parameters()) * run.batch_size * runs
    return torch.device("cuda" if torch.cuda.is_available() and work >= GPU_MIN_WORK else "cpu")


def chunk_steps(params: list[torch.nn.Parameter]) -> int:
    """Steps per chunk for a model with these parameters (each step keeps 8 bytes an element)."""
    elements = max(1, sum(p.numel() for p in params))
    return max(MIN_CHUNK, min(MAX_CHUNK, CHUNK_BYTES // (8 * elements)))


@dataclass
class Parts:
    """What a run of the loop engine trains with, built from its spec (and restored from `resume`)."""

    model: torch.nn.Module
    device: torch.device
    dataset: data.Dataset
    loss_fn: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer
    schedule: Any
    evaluate: Evaluator
    watch: Watch | None

    def update(self) -> None:
        """The step's update, by torch's optimizer and schedule."""
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()


class TrainStep:
    """One step's math: the loss of a batch and its gradients (the loss handed back detached)."""

    def __init__(self, run: RunPlan, parts: Parts):
        self.model, self.loss_fn = parts.model, parts.loss_fn
        self.squeezes, self.squeeze = losses.squeezes(run.config.loss), None
        self.clip = run.config.train.clip_grad_norm
        self.current = ModelParameters(parts.model)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        output = self.model(x)
        if self.squeeze is None:  # [N, 1] outputs meet [N] targets of a built-in regression or binary loss
            self.squeeze = self.squeezes and losses.one_per_row(output, y)
        loss = self.loss_fn(output.squeeze(-1) if self.squeeze else output, y)
        # What optimizer.zero_grad() does, without its profiler and compiler hooks (16 us a step,
        # a tenth of a notebook step); the update itself is torch's optimizer, untouched.
        params = self.current()  # as the model holds them now: user code may have put in new ones
        for p in params:
            p.grad = None
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        return loss.detach()


@dataclass(frozen=True)
class Ending:
    """How the steps ended: the run's status, its last step, and the callbacks' stop if they stopped it."""

    status: Status
    last: int
    stop: Stop | None = None


def train(
    run: RunPlan,
    sink: Sink | None = None,
    context: RunContext | None = None,
    checkpoints: Checkpoints | None = None,
    resume: Resumed | None = None,
) -> Outcome:
    """Train one run to the end, to divergence, until its callbacks stop it (early stopping, the
    user's StopRun, a search's pruner told each evaluation), or until context.should_stop() says so
    between chunks; taking `checkpoints` between chunks, and going on from `resume` where given."""
    sink, context = sink or NullSink(), context or RunContext()
    parts = build(run, resume)
    model, evaluate, watch = parts.model, parts.evaluate, parts.watch
    start, history = (0, []) if resume is None else (resume.step, resume.history)

    def snapshot(steps_done: int) -> dict[str, Any]:
        watched = None if watch is None else watch.state()
        state = sink.state()
        return resume_state(
            steps_done, model, parts.optimizer, parts.schedule, history, watched, state, checkpoints.identity
        )

    steps = _batches(run, parts.dataset, parts.device, start)
    train_step, pending = TrainStep(run, parts), Pending(start)
    chunk, eval_every = chunk_steps(train_step.current()), run.config.eval.every
    callbacks = Callbacks(
        [
            EarlyStopping(watch) if watch is not None else None,
            pruning_of(run, evaluate.tags, context, as_made=True),
            hook_of(run, parts.dataset, parts.device, sink, model),
            Checkpointing(checkpoints, snapshot) if checkpoints is not None and checkpoints.on else None,
        ],
        run.steps,
    )
    sink.begin(model, parts.optimizer, evaluate.tags, resume=None if resume is None else (start, resume.sink))
    if resume is not None:  # last: whatever was drawn while the run was built is drawn no more
        set_random_state(resume.rng)
    ending, stop, step = Ending(Status.COMPLETE, run.steps - 1), None, start
    try:
        for step, (x, y) in enumerate(steps, start):
            # logging (reads only): the loss, the evaluation and the sink's capture, all before the update
            pending.losses.append(train_step(x, y))
            if step % eval_every == 0:
                values = evaluate()
                pending.evals.append((step, values))
                stop = callbacks.evaluation(step, values)
            if stop is None:
                sink.capture(step)
                parts.update()
            if stop is None and _mid_chunk(step + 1, chunk, run.steps, callbacks):
                continue
            found = _end_chunk(run, sink, context, callbacks, pending, history, stop, step)
            if found is not None:
                ending = found
                break
    except BaseException as exc:  # TimedOut too (trainer.core.deadline)
        with contextlib.suppress(AttributeError):  # the steps before it: the record says where it stopped
            exc.steps_done = step
        raise
    outcome = _ended(run, sink, parts, callbacks, history, ending)
    if watch is not None:
        outcome.best, outcome.best_state = watch.record(), watch.best_state
    return outcome


def build(run: RunPlan, resume: Resumed | None) -> Parts:
    """The model, data, optimizer, schedule, evaluator and watched metric of a run, as `resume` left
    them where given."""
    config = run.config
    model = build_model(config.model, run.shape, config.train.seed)
    device = choose_device(run, model)
    model.to(device)
    dataset = data.load(config.data, Path(run.data_folder), device)
    loss_fn = build_loss(config.loss)
    optimizer = build_optimizer(config.optimizer, model.parameters())
    schedule = build_schedule(config.schedule, optimizer, run.steps)
    evaluate = Evaluator(run, model, dataset, device)
    watch = watch_of(run, evaluate, model)
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        if schedule is not None:
            schedule.load_state_dict(resume.schedule)
        if watch is not None and resume.watch is not None:
            watch.restore(resume.watch)
    return Parts(model, device, dataset, loss_fn, optimizer, schedule, evaluate, watch)


def _mid_chunk(steps_done: int, chunk: int, steps: int, callbacks: Callbacks) -> bool:
    """Whether the steps go on within a chunk here: a chunk ends every `chunk` steps, at the run's
    end, and where a callback acts (a checkpoint every N steps)."""
    return bool(steps_done % chunk) and steps_done != steps and not callbacks.ends_chunk(steps_done)


def _end_chunk(
    run: RunPlan,
    sink: Sink,
    context: RunContext,
    callbacks: Callbacks,
    pending: Pending,
    history: list[Evaluation],
    stop: Stop | None,
    step: int,
) -> Ending | None:
    """A chunk's end, after `step`: its values to the sink, then how the run ends here, or None."""
    bad = pending.flush(sink, history, step + 1)
    context.on_progress(step + 1)
    if bad is not None:
        return Ending(Status.DIVERGED, bad)
    if stop is not None:  # a pruned run stops before this step's update
        return Ending(stop.status, step - 1 if stop.status == Status.PRUNED else step, stop)
    stopping = context.should_stop() and step + 1 < run.steps
    end_chunk([(callbacks, ChunkEnd(step + 1, run.steps, stopping, history))])
    return Ending(Status.INTERRUPTED, step) if stopping else None


def _ended(
    run: RunPlan, sink: Sink, parts: Parts, callbacks: Callbacks, history: list[Evaluation], ending: Ending
) -> Outcome:
    """Conclude a run whose steps ended so: its final evaluation where it trained them all."""
    model, device, evaluate, stop = parts.model, str(parts.device), parts.evaluate, ending.stop
    if stop is not None:
        stopped = (stop.step, stop.reason)
        return conclude(
            run, sink, model, device, evaluate, history, None, ending.status, ending.last, stopped
        )
    values = evaluate() if ending.status == Status.COMPLETE else None
    if values is not None:
        callbacks.final(run.steps, values)
    final_values = values.tolist() if values is not None else None
    return conclude(run, sink, model, device, evaluate, history, final_values, ending.status, ending.last)


def _batches(run: RunPlan, dataset: data.Dataset, device: torch.device, start: int) -> Any:
    """Each step's (x, y) from step `start` on: rows of tensors, or batches a DataLoader makes."""
    config = run.config
    batch_size = None if config.train.batch_size == "full" else run.batch_size
    rows = dataset.train
    if rows.dataset is None:
        return batches(rows.x, rows.y, batch_size, run.steps, config.train.sampling, config.train.seed, start)
    return loader_batches(
        rows.dataset,
        batch_size,
        run.steps,
        config.train.sampling,
        config.train.seed,
        device,
        data.collate_of(config.data, Path(run.data_folder)),
        config.data.loader,
        start,
    )
