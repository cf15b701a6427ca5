"""Units of work: the runs of a sweep that can share one vectorized program, grouped, and the rest
one by one. A unit is what a worker (or any executor) is handed: one run for the loop engine, or a
group of runs for the batched engine (trainer.batched). Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from trainer.kinds import losses, metrics, models
from trainer.kinds import registry as kinds
from trainer.kinds.optim import rule_of
from trainer.spec.plan import RunPlan

# 'auto' batches groups of at least this many runs; a group of one gains nothing from it.
MIN_GROUP = 2
# Runs per program: bounds its memory and the event files it holds open at once.
MAX_GROUP = 1024
# What runs of one group may differ in besides their optimizer's per-run settings (which its kind's
# update rule names, trainer.kinds.optim): settings that become per-run numbers of one program.
PER_RUN = {
    "train": ("seed", "engine"),
    "model": ("init",),
}


@dataclass(frozen=True)
class Unit:
    """Runs handed to one worker together: several for the batched engine, else one for the loop
    engine, with why it was not batched (None where the spec asked for the loop)."""

    runs: tuple[RunPlan, ...]
    engine: str  # "loop" or "batched"
    reason: str | None = None

    def cost(self) -> float:
        """A rough relative duration, so the longest units start first."""
        if self.engine == "loop":
            return self.runs[0].cost()
        # One program: about one run's steps, plus a share per run for logging and files.
        return self.runs[0].cost() + 0.05 * sum(r.cost() for r in self.runs)


def unbatchable(run: RunPlan) -> str | None:
    """Why the batched engine cannot train this run, or None."""
    config = run.config
    if not models.is_builtin(config.model):
        return f"the model is user code ({config.model.kind}); the batched engine trains linear and mlp"
    if len(run.input_shape) != 1:
        return "the rows are not flat feature vectors"
    if losses.task_of(config.loss) is None:
        return f"the loss is user code ({config.loss.kind})"
    for family, section in (
        ("optimizer", config.optimizer),
        ("schedule", config.schedule),
        ("data", config.data),
    ):
        kind = kinds.kind_of(section)
        if not kind.batched:
            what = "user code" if kind.is_user_code else "a kind the batched engine does not train"
            return f"the {family} is {what} ({section.kind})"
    if config.log.hook is not None:
        return "log.hook is called with each run's own model"
    if config.train.early_stopping is not None:
        return "train.early_stopping ends each run at its own step"
    if config.log.checkpoint in ("best", "both"):
        return f"log.checkpoint: {config.log.checkpoint} keeps each run's best weights"
    user = [m for m in config.eval.metrics if m not in metrics.BUILTIN]
    if user:
        return f"eval.metrics holds user code ({user[0]})"
    train = config.train
    if train.sampling != "with_replacement" and run.batch_size < run.rows and run.rows % run.batch_size:
        return (
            f"the last batch of each epoch is smaller ({run.rows} rows in batches of {run.batch_size}); "
            f"the batched engine needs equal batches"
        )
    return None


def inexact(run: RunPlan) -> str | None:
    """Why 'auto' trains a batchable run alone: its batched result could differ in the last bits.
    'auto' batches only optimizers whose update rule rounds as torch.optim's whatever the run's
    neighbours, so that a run trained alone and in a group gives the same bits."""
    kind = run.config.optimizer.kind
    if rule_of(run.config.optimizer).exact:
        return None
    return (
        f"{kind}'s batched update can differ from torch's in the last bits (relative 1e-6), so 'auto' "
        f"trains it alone, as it would be reproduced; train.engine: batched batches it anyway"
    )


def group_key(run: RunPlan) -> str:
    """Runs with equal keys can train as one program."""
    data = {section: dict(v) if isinstance(v, dict) else v for section, v in run.config_data.items()}
    data.pop("description", None)
    rule = rule_of(run.config.optimizer)
    for section, keys in (PER_RUN | {"optimizer": rule.per_run}).items():
        for key in keys:
            data[section].pop(key, None)
    data["optimizer"] |= rule.program(run.config.optimizer)
    data["schedule"] = {"kind": run.config.schedule.kind}
    shared = {
        "spec": run.spec_path,
        "folder": run.data_folder,
        "experiment": run.experiment,
        "steps": run.steps,
        "batch_size": run.batch_size,
    }
    return json.dumps([data, shared], sort_keys=True, default=str)


def units_of(runs: list[RunPlan], workers: int = 1) -> list[Unit]:
    """The sweep's runs as units, longest first: each group of runs that can share a program is one
    unit, or several of near-equal size when it is large (at most MAX_GROUP runs) or when there are
    fewer groups than workers; the rest run one by one, each with the reason it is not batched."""
    groups: dict[str, list[RunPlan]] = {}
    singles: list[Unit] = []
    for run in runs:
        engine = run.config.train.engine
        if engine == "loop":
            singles.append(Unit((run,), "loop"))
            continue
        reason = unbatchable(run) or (inexact(run) if engine == "auto" else None)
        if reason is not None:
            singles.append(Unit((run,), "loop", reason))
            continue
        groups.setdefault(group_key(run), []).append(run)
    units = list(singles)
    batched = []
    for group in groups.values():
        if len(group) < MIN_GROUP and group[0].config.train.engine == "auto":
            units += [Unit((run,), "loop", "no other run of its spec can share its program") for run in group]
        else:
            batched.append(group)
    # A program's step costs about the same for few runs as for many: split a group only to give
    # every worker a part.
    share = math.ceil(max(1, workers) / len(batched)) if batched else 1
    for group in batched:
        # A pruned search's group is one program: its pruner then hears every run's evaluations in
        # one order, so that what it prunes depends on no timing between workers.
        pruned = group[0].trial is not None and group[0].trial.reports is not None
        split = 1 if pruned else min(share, len(group) // MIN_GROUP)
        parts = max(math.ceil(len(group) / MAX_GROUP), split, 1)
        size = math.ceil(len(group) / parts)
        units += [Unit(tuple(group[i : i + size]), "batched") for i in range(0, len(group), size)]
    return sorted(units, key=lambda u: -u.cost())


def engine_record(unit: Unit) -> dict[str, Any]:
    """What a run's record says of the engine that trained it."""
    if unit.engine == "batched":
        return {"name": "batched", "runs": len(unit.runs)}
    return {"name": "loop", "reason": unit.reason}
