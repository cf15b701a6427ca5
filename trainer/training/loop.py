"""The training loop: compute each step, hand values to the sink, stop on divergence or when asked."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
from trainer.training.evaluate import Evaluator
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


@dataclass
class Outcome:
    """How a run ended, what it reached, and the trained model."""

    status: Status
    steps_done: int
    device: str
    metrics: dict[str, Any]
    final_weights: dict[str, list[float]] = field(default_factory=dict)
    weights_sha256: str = ""  # of all final parameters' bytes: equal digests, identical weights
    model: torch.nn.Module | None = None
    eval_tags: list[str] = field(default_factory=list)  # the evaluator's tags, training loss first
    history: list[Evaluation] = field(default_factory=list)  # every evaluation, the final one last
    stopped: dict[str, Any] | None = None  # {step, reason}: StopRun in user code, or early stopping
    best: dict[str, Any] | None = None  # the watched metric's best evaluation: {metric, step, value}
    best_state: dict[str, torch.Tensor] | None = None  # the weights there, where log.checkpoint keeps them


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


def converged_step(evaluations: list[Evaluation], tolerance: float) -> int | None:
    """The first evaluation step from which the training loss stayed within tolerance to the end."""
    found = None
    for ev in reversed(evaluations):
        if not ev.loss <= tolerance:
            break
        found = ev.step
    return found


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


@dataclass
class Pending:
    """A chunk's values still on the device: the losses from step `first` on, the evaluations."""

    first: int
    losses: list[torch.Tensor] = field(default_factory=list)
    evals: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    def flush(self, sink: Sink, history: list[Evaluation], next_step: int) -> int | None:
        """Hand the values to the sink (see _flush) and start the next chunk at `next_step`."""
        bad = _flush(sink, self.first, self.losses, self.evals, history)
        self.first, self.losses, self.evals = next_step, [], []
        return bad


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
                done = step + 1
                if done % chunk and done != run.steps and not callbacks.ends_chunk(done):
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


def conclude(
    run: RunPlan,
    sink: Sink,
    model: torch.nn.Module,
    device: str,
    evaluate: Evaluator,
    history: list[Evaluation],
    final_values: list[float] | None,
    status: Status,
    last: int,
    stopped: tuple[int, str] | None = None,
) -> Outcome:
    """End a run whose steps are done (or stopped at `last`): its final evaluation (given as
    final_values where it completed), metrics, the sink's last events, and its outcome. A run its
    user code stopped (`stopped`: step, reason) is complete at that step, its evaluation there the
    final one, logged once."""
    config = run.config
    final = None
    if status == Status.PRUNED:
        pass  # no final evaluation: never counted as complete
    elif stopped is not None:
        final = history[-1]  # the evaluation at the step it stopped, already logged
    elif status == Status.COMPLETE:
        final = Evaluation(run.steps, final_values)
        if not math.isfinite(final.loss):  # its callbacks' on_final saw the same (see LogHook)
            status, last = Status.DIVERGED, run.steps
        history.append(final)
    metrics = evaluate.summary(history, final if status == Status.COMPLETE else None)
    if run.regression:
        reached = converged_step(history, config.eval.tolerance) if status == Status.COMPLETE else None
        metrics.update({"final/converged": reached is not None, "final/converged_step": reached})
    metrics.update(
        {
            "final/diverged": status == Status.DIVERGED,
            "diverged_step": last if status == Status.DIVERGED else None,
            "final/stopped_step": stopped[0] if stopped is not None else None,
        }
    )
    if run.trial is not None and run.trial.reports is not None:  # HParams columns of a pruned search
        metrics["final/pruned"] = status == Status.PRUNED
        metrics["final/steps_trained"] = last + 1 if status != Status.COMPLETE else run.steps
    ended = stopped[0] if stopped is not None else run.steps if status == Status.COMPLETE else last
    if status in (
        Status.INTERRUPTED,
        Status.PRUNED,
    ):  # after its last step (a resumed run's events begin there)
        ended = last + 1
    sink.finish(status, ended, metrics, None if stopped is not None else final)
    # JSON has no NaN: a diverged weight is recorded as null.
    weights = {
        name: [v if math.isfinite(v) else None for v in p.detach().view(-1).tolist()]
        for name, p in model.named_parameters()
        if p.numel() <= config.log.max_elements
    }
    digest = hashlib.sha256(
        b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())
    ).hexdigest()
    return Outcome(
        status,
        last + 1
        if status == Status.PRUNED
        else stopped[0]
        if stopped is not None
        else last + 1
        if status != Status.COMPLETE
        else run.steps,
        device,
        metrics,
        weights,
        digest,
        model,
        evaluate.tags,
        history,
        _stopped(run, evaluate, history, stopped, status),
    )


def _stopped(
    run: RunPlan,
    evaluate: Evaluator,
    history: list[Evaluation],
    stopped: tuple[int, str] | None,
    status: Status,
) -> dict[str, Any] | None:
    """Where a run stopped before its end, and why; a pruned run also says the value it was judged by."""
    if stopped is None:
        return None
    found: dict[str, Any] = {"step": stopped[0], "reason": stopped[1]}
    if status == Status.PRUNED and run.trial is not None and run.trial.reports in evaluate.tags:
        judged = [ev for ev in history if ev.step <= stopped[0]]
        if judged:
            found[run.trial.reports] = judged[-1].values[evaluate.tags.index(run.trial.reports)]
    return found


def _flush(
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
