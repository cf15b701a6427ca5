"""A run's callbacks, shared by both engines: early stopping (and the best weights), a search's
pruning, the user's log.hook and checkpoints, each told the events of the run it belongs to.

Events, in the order a run meets them:
- `on_evaluation(step, values, stop)`: an evaluation as the loop engine makes it (its values still
  on the device), before that step's update; `stop` is what the callbacks before this one decided.
  A callback returns the run's stop (a Stop, or None to go on).
- `on_chunk_end(end)`: a chunk of steps whose values have reached the sink, of a run that neither
  diverged nor stopped in it; `after_chunk_end(end)` once every run of the program had its
  on_chunk_end (what one run learns from another's, as a trial pruned by another replicate).
- `on_final(step, values)`: the final evaluation of a run that trained all its steps.
- `chunk_ends(steps)`: the steps done (of a run of `steps`) at which a chunk must end, for the
  callback to act there.

Each callback only reads the run: no random draws, no change to the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from trainer.core.errors import StopRun
from trainer.core.status import Status
from trainer.core.strict import as_data
from trainer.kinds import data
from trainer.kinds import registry as kinds
from trainer.spec.plan import RunPlan
from trainer.training.context import RunContext
from trainer.training.evaluate import Evaluator, evaluating
from trainer.training.resume import Checkpoints
from trainer.training.sink import Evaluation, Sink
from trainer.training.watch import Watch


@dataclass(frozen=True)
class Stop:
    """Where a run stops before its end, and why: complete there, or pruned."""

    step: int
    reason: str
    status: Status = Status.COMPLETE


@dataclass(frozen=True)
class ChunkEnd:
    """The end of a chunk of a run's steps: the steps done, the run's own steps, whether the run is
    to stop here (a stop request), and its evaluations so far."""

    steps_done: int
    steps: int
    stopping: bool
    history: list[Evaluation]


class Callback:
    """Told a run's events (see the module's docstring); each method asks for nothing by default."""

    def on_evaluation(self, step: int, values: torch.Tensor, stop: Stop | None) -> Stop | None:
        return stop

    def on_chunk_end(self, end: ChunkEnd) -> Stop | None:
        return None

    def after_chunk_end(self, end: ChunkEnd) -> Stop | None:
        return None

    def on_final(self, step: int, values: torch.Tensor) -> None:
        pass

    def chunk_ends(self, steps: int) -> Collection[int]:
        return ()


class Callbacks:
    """A run's callbacks (of a run of `steps`), each told every event in this order."""

    def __init__(self, items: list[Callback | None], steps: int):
        self.items = [c for c in items if c is not None]
        self.ends = [found for c in self.items if (found := c.chunk_ends(steps))]

    def ends_chunk(self, steps_done: int) -> bool:
        """Whether a chunk must end after `steps_done` steps, for a callback to act there."""
        return bool(self.ends) and any(steps_done in found for found in self.ends)

    def evaluation(self, step: int, values: torch.Tensor) -> Stop | None:
        stop = None
        for callback in self.items:
            stop = callback.on_evaluation(step, values, stop)
        return stop

    def chunk_end(self, end: ChunkEnd) -> Stop | None:
        return _first([c.on_chunk_end(end) for c in self.items])

    def after_chunk_end(self, end: ChunkEnd) -> Stop | None:
        return _first([c.after_chunk_end(end) for c in self.items])

    def final(self, step: int, values: torch.Tensor) -> None:
        for callback in self.items:
            callback.on_final(step, values)


def _first(stops: list[Stop | None]) -> Stop | None:
    return next((s for s in stops if s is not None), None)


def end_chunk(runs: list[tuple[Callbacks, ChunkEnd]]) -> list[Stop | None]:
    """Tell the runs of a program (or the one run of the loop engine) that a chunk ended: every
    run's on_chunk_end, then after_chunk_end for each that goes on; each run's stop, or None."""
    stops = [callbacks.chunk_end(end) for callbacks, end in runs]
    return [stop or callbacks.after_chunk_end(end) for stop, (callbacks, end) in zip(stops, runs)]


class EarlyStopping(Callback):
    """The watched metric (trainer.training.watch): its best evaluation so far and, with
    train.early_stopping, the stop once it stopped improving."""

    def __init__(self, watch: Watch):
        self.watch = watch

    def on_evaluation(self, step: int, values: torch.Tensor, stop: Stop | None) -> Stop | None:
        reason = self.watch.seen(step, values)
        return Stop(step, reason) if reason is not None else stop

    def on_final(self, step: int, values: torch.Tensor) -> None:
        self.watch.seen(step, values)


class Pruning(Callback):
    """A search's pruner (`judge`: evaluation step, reported value -> prune?) on one run.

    The loop engine judges each evaluation as it is made (`as_made`), before that step's update. The
    batched engine, whose evaluations reach the host at a chunk's end, ends a chunk at each step a
    pruner decides at (`verdicts`), tells the judge the evaluations of those steps there, and asks
    again about the last evaluation once the program's other runs have reported theirs."""

    def __init__(self, judge: Callable[[int, float], bool], tag: int, verdicts: list[int], as_made: bool):
        self.judge, self.tag, self.verdicts, self.as_made = judge, tag, set(verdicts), as_made
        self.told = 0  # evaluations of the history told at a chunk's end

    def on_evaluation(self, step: int, values: torch.Tensor, stop: Stop | None) -> Stop | None:
        if self.as_made and stop is None and self.judge(step, float(values[self.tag])):
            return Stop(step, "pruned", Status.PRUNED)
        return stop

    def on_chunk_end(self, end: ChunkEnd) -> Stop | None:
        if self.as_made or end.steps_done >= end.steps:
            return None
        new = [ev for ev in end.history[self.told :] if ev.step in self.verdicts]
        self.told = len(end.history)
        return next((self._pruned(ev) for ev in new if self.judge(ev.step, float(ev.values[self.tag]))), None)

    def after_chunk_end(self, end: ChunkEnd) -> Stop | None:
        if self.as_made or end.steps_done >= end.steps or not end.history:
            return None
        last = end.history[-1]  # a replicate pruned after this one reported: its trial is pruned
        return self._pruned(last) if self.judge(last.step, float(last.values[self.tag])) else None

    def chunk_ends(self, steps: int) -> Collection[int]:
        return () if self.as_made else {step + 1 for step in self.verdicts}

    @staticmethod
    def _pruned(ev: Evaluation) -> Stop:
        return Stop(ev.step, "pruned", Status.PRUNED)


class LogHook(Callback):
    """The user's log.hook, called with the sink's SummaryWriter at each evaluation and at the final
    one; StopRun raised in it ends the run, complete at that step."""

    def __init__(self, call: Callable[[Any, int, torch.nn.Module], None], sink: Sink, model: torch.nn.Module):
        self.call, self.sink, self.model = call, sink, model

    def on_evaluation(self, step: int, values: torch.Tensor, stop: Stop | None) -> Stop | None:
        try:
            self.call(self.sink.writer(), step, self.model)
        except StopRun as raised:  # complete here: this step's weights are the final ones
            reason = str(raised) or "raised StopRun"
            return replace(stop, step=step, reason=reason) if stop is not None else Stop(step, reason)
        return stop

    def on_final(self, step: int, values: torch.Tensor) -> None:
        if math.isfinite(values.tolist()[0]):  # a final loss that is not finite: the run diverged
            self.call(self.sink.writer(), step, self.model)


class Checkpointing(Callback):
    """Checkpoints between chunks (trainer.training.resume), as log.checkpoint_every asks and
    always before a stop request ends the run; `snapshot(steps_done)` is what one holds."""

    def __init__(self, checkpoints: Checkpoints, snapshot: Callable[[int], dict[str, Any]]):
        self.checkpoints, self.snapshot = checkpoints, snapshot

    def on_chunk_end(self, end: ChunkEnd) -> Stop | None:
        if end.steps_done < end.steps and (end.stopping or self.checkpoints.due(end.steps_done)):
            self.checkpoints.take(self.snapshot(end.steps_done))
        return None

    def chunk_ends(self, steps: int) -> Collection[int]:
        every = self.checkpoints.every
        return range(every, steps + 1, every) if isinstance(every, int) and every > 0 else ()


# --- each callback as a run's spec asks for it --------------------------------------------------


def watch_of(run: RunPlan, evaluate: Evaluator, model: torch.nn.Module) -> Watch | None:
    """The run's watched metric, where early stopping or the best checkpoint needs one."""
    keep_best = run.config.log.checkpoint in ("best", "both")
    if run.config.train.early_stopping is None and not keep_best:
        return None
    return Watch(run, evaluate.tags, evaluate.better, evaluate.main, model, keep_best)


def reported_tag(run: RunPlan, tags: list[str]) -> int | None:
    """Which of the evaluation's values a search's run reports for pruning (None: it reports none)."""
    if run.trial is None or run.trial.reports is None:
        return None
    return tags.index(run.trial.reports)


def pruning_of(run: RunPlan, tags: list[str], context: RunContext, as_made: bool) -> Pruning | None:
    """The run's pruning, where its search judges it."""
    judge = context.judge_of(run)
    if judge is None:
        return None
    tag = reported_tag(run, tags)
    assert tag is not None  # judge_of gives a judge only to a run that reports
    return Pruning(judge, tag, list(run.trial.verdicts), as_made)


def hook_of(
    run: RunPlan, dataset: data.Dataset, device: torch.device, sink: Sink, model: torch.nn.Module
) -> LogHook | None:
    """The user's log.hook, bound to what it is given besides (writer, step, model), or None."""
    name = run.config.log.hook
    if name is None:
        return None
    function = kinds.import_attribute(name, str(Path(run.data_folder).resolve()), "log.hook")
    shown = dataset.validation if dataset.validation is not None else dataset.train
    context = {
        "inputs": shown.x,
        "targets": shown.y,
        "dataset": shown.dataset,
        "split": "validation" if dataset.validation is not None else "train",
        "train_inputs": dataset.train.x,
        "train_targets": dataset.train.y,
        "classes": dataset.classes,
        "config": as_data(run.config),
        "run": run.folder,
        "device": device,
    }

    def call(writer: Any, step: int, model: torch.nn.Module) -> None:
        if writer is None:  # logging is off: nothing would reach a file
            return
        with torch.no_grad(), evaluating(model):
            function(writer, step, model, **context)

    return LogHook(call, sink, model)
