"""How a run ends, the same for both engines: its final evaluation, metrics and the sink's last
events (conclude), and what the job records of it (Outcome)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.core.status import Status
from trainer.spec.plan import RunPlan
from trainer.training.evaluate import Evaluator
from trainer.training.sink import Evaluation, Sink


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


def converged_step(evaluations: list[Evaluation], tolerance: float) -> int | None:
    """The first evaluation step from which the training loss stayed within tolerance to the end."""
    found = None
    for ev in reversed(evaluations):
        if not ev.loss <= tolerance:
            break
        found = ev.step
    return found


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
