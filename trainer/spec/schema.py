"""The experiment schema: one run's configuration as frozen dataclasses.

The sections with kinds (data, model, loss, optimizer, schedule) take their types from the kind
registry (trainer.kinds); the converter that builds them from YAML data is trainer.core.strict.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass
from typing import Any, Literal

from trainer.core.strict import (  # noqa: F401
    SEED,
    Invalid,
    as_data,
    at_least,
    at_most,
    build,
    check_key,
    describe,
    greater_than,
    setting,
    show,
    suggest,
    type_name,
    variants,
)
from trainer.core.untrusted import EXPERIMENT_NAME
from trainer.kinds import (
    data,
    losses,
    models,
    optim,  # noqa: F401  (each registers its kinds)
)
from trainer.kinds import registry as kinds

# An experiment name is a folder under the log folder: one plain path component, never '.' or '..'.


def experiment_name(name: Any) -> str | None:
    if "tfevents" in name:  # TensorBoard takes such a name for an event file, as the log folder's index is
        return f"{show(name)} is reserved: TensorBoard reads a name holding 'tfevents' as an event file"
    if EXPERIMENT_NAME.match(name):
        return None
    return (
        f"{show(name)} is not a valid experiment name: use letters, digits, '.', '_' and '-', "
        f"starting with a letter or digit, at most 64 characters"
    )


# --- training, evaluation, logging ------------------------------------------------------------

# A year: more is no limit, and more than the process's alarm can count.
MAX_TIMEOUT = 365 * 24 * 3600

# Settings that leave what a run computes as it is: no part of its name or its configuration's digest.
NOT_IDENTITY = ("train.engine", "train.timeout", "data.loader", "log.checkpoint_every")
# Settings added later: part of a run's identity only once set, so older runs keep theirs.
UNSET_NOT_IDENTITY = ("data.collate", "data.classes", "train.early_stopping", "log.sinks")

# A metric of an evaluation: <split>/<name>, as the curves are tagged.
EVAL_TAG = re.compile(r"^(train|val)/[^/\s]+$")


def eval_tag(name: Any) -> str | None:
    if name is None or EVAL_TAG.match(name):
        return None
    return (
        f"{show(name)} is not an evaluation's value; use <split>/<name> with split train or val "
        f"(val/loss, val/accuracy, train/loss)"
    )


@dataclass(frozen=True, kw_only=True)
class EarlyStopping:
    """End a run, as complete, once a metric has stopped improving."""

    metric: str | None = setting(
        None,
        eval_tag,
        doc="the evaluation value watched (val/loss); default: the main loss (val/loss "
        "where rows are held out, else train/loss)",
    )
    patience: int = setting(5, at_least(1), doc="evaluations without an improvement before the run stops")
    min_delta: float = setting(0.0, at_least(0), doc="how much better than the best so far counts as better")
    higher_is_better: bool | None = setting(
        None, doc="the metric's direction; known for the loss and the built-in metrics"
    )


def beside_identity(key: str) -> bool:
    """Whether a dotted setting is, or lies under, one of NOT_IDENTITY."""
    return any(key == k or key.startswith(k + ".") for k in NOT_IDENTITY)


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How long, on what batches, from which seed, on which device."""

    steps: int | None = setting(None, at_least(1), doc="optimizer steps (default 1000); or give epochs")
    epochs: int | None = setting(None, at_least(1), doc="passes over the data, instead of steps")
    batch_size: int | Literal["full"] = setting(1, at_least(1), doc="rows per step, or 'full' for all rows")
    sampling: Literal["with_replacement", "shuffle", "sequential"] = setting(
        "with_replacement",
        doc="rows drawn at random with replacement (the notebook), a fresh permutation each epoch, or in order",
    )
    seed: int = setting(0, SEED, doc="seeds the model's initial weights and the batch sampler")
    device: Literal["auto", "cpu", "cuda"] = setting(
        "auto", doc="'auto' takes the GPU only for models big enough to gain from it"
    )
    engine: Literal["auto", "loop", "batched"] = setting(
        "auto",
        doc="'batched' trains the runs of a spec that differ only in rates, decay, betas, schedule "
        "settings, initial weights and seeds as one vectorized program; 'auto' does so for groups of two "
        "or more; 'loop' trains one run at a time (docs/batched.md says what falls back)",
    )
    clip_grad_norm: float | None = setting(
        None,
        greater_than(0),
        doc="clip the gradients' total norm to this before each update (logged clipped)",
    )
    timeout: float | None = setting(
        None,
        greater_than(0),
        at_most(MAX_TIMEOUT),
        doc="wall seconds a run may take; one that takes longer ends as failed (timed out) and frees its "
        "worker. A batched group has the largest of its runs' limits. Not part of the run's identity",
    )
    early_stopping: EarlyStopping | None = setting(
        None,
        doc="stop a run, as complete, once early_stopping.metric has not improved for "
        "early_stopping.patience evaluations",
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.steps is not None and self.epochs is not None:
            return [("epochs", "give either train.steps or train.epochs, not both")]
        return []


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """The loss and metrics on all training rows and all validation rows, as a mean per row so runs
    of any batch size compare."""

    every: int = setting(10, at_least(1), doc="steps between evaluations (and always at the end)")
    metrics: tuple[str, ...] = setting(
        (), doc="metrics besides the loss: accuracy, mae, rmse, or module:function of your own"
    )
    tolerance: float = setting(
        0.05,
        greater_than(0),
        doc="converged once the training loss stays at or below this to the end (regression losses)",
    )


# The sinks a run can write through, by name: trainer.sinks.SINKS builds each (a test pins the two).
SINK_KINDS = ("tensorboard", "jsonl")


def sink_names(names: tuple[str, ...]) -> str | None:
    """Why a list of sinks is not one a run can write through, or None."""
    for name in names:
        if name not in SINK_KINDS:
            return f"unknown sink {show(name)}{suggest(name, list(SINK_KINDS))}; the sinks: {', '.join(SINK_KINDS)}"
    if "tensorboard" not in names:
        return f"must include 'tensorboard', whose event file status, resume and reports read; got {show(list(names))}"
    if len(set(names)) != len(names):
        return f"names a sink twice: {show(list(names))}"
    return None


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    """What reaches TensorBoard and how often."""

    every: int = setting(1, at_least(1), doc="steps between logged minibatch losses, weights and gradients")
    histograms_every: int = setting(
        10, at_least(0), doc="steps between weight and gradient histograms; 0 for none"
    )
    max_elements: int = setting(
        16, at_least(0), doc="parameters with more elements get norm curves instead of one curve each"
    )
    hook: str | None = setting(
        None,
        doc="module:function called at each evaluation as "
        "hook(writer, step, model, **context) to log anything of your own",
    )
    checkpoint: Literal["final", "best", "both", "none"] = setting(
        "final",
        doc="keep the final weights (model.pt), the weights of the best evaluation (best.pt: by "
        "train.early_stopping's metric, else the report's), both, or none",
    )
    checkpoint_every: int | Literal["auto"] = setting(
        "auto",
        at_least(0),
        doc="steps between checkpoints a stopped run resumes from (resume.pt); 'auto' takes one "
        "every 10 s or more, at most 2% of the run's time; 0 for none. Not part of the run's identity",
    )
    sinks: tuple[str, ...] | None = setting(
        None,
        sink_names,
        doc="where a run's values are written, side by side: tensorboard (its event file) and "
        "jsonl (metrics.jsonl: the loss, learning rate, evaluations and final metrics, a JSON object "
        "a line); unset: [tensorboard] alone. tensorboard is always among them",
    )


# A section is any kind of its family: a built-in name, or a user's 'module:attribute'.
DataSpec = kinds.union("data")
ModelSpec = kinds.union("model")
LossSpec = kinds.union("loss")
OptimizerSpec = kinds.union("optimizer")
ScheduleSpec = kinds.union("schedule")


@dataclass(frozen=True, kw_only=True)
class Config:
    """One run's complete configuration."""

    name: str = setting(MISSING, experiment_name, doc="experiment name: the folder under the log folder")
    description: str = setting("", doc="free text, shown with the run")
    data: DataSpec = setting(data.SeedToyData(), doc="the data to learn from")
    model: ModelSpec = setting(models.LinearModel(), doc="what is trained")
    loss: LossSpec = setting(losses.L1Loss(), doc="the training loss")
    optimizer: OptimizerSpec = setting(optim.SgdOptimizer(), doc="the torch optimizer")
    schedule: ScheduleSpec = setting(
        optim.ConstantSchedule(), doc="learning-rate schedule, stepped every step"
    )
    train: TrainSettings = setting(TrainSettings(), doc="length, batches, seed, device")
    eval: EvalSettings = setting(
        EvalSettings(), doc="evaluations: loss and metrics on training and validation rows"
    )
    log: LogSettings = setting(
        LogSettings(), doc="what is written for TensorBoard, and beside it (log.sinks)"
    )


# --- how a report reads the runs ----------------------------------------------------------------

# A metric a report ranks by: a final or best value of the loss or a metric on the training or
# validation rows, or the distance to the true weights.
RANK_METRIC = re.compile(r"^(final|best)/(train|val)/[A-Za-z0-9_.:-]+$|^final/weight_distance$")


def rank_metric(name: Any) -> str | None:
    if name is None or RANK_METRIC.match(name):
        return None
    return (
        f"{show(name)} is not a metric a run records; use final/<split>/<name> or best/<split>/<name> "
        f"with split train or val (final/val/loss, best/val/accuracy), or final/weight_distance"
    )


@dataclass(frozen=True, kw_only=True)
class ReportSettings:
    """Spec-level: which runs repeat one configuration, and which metric ranks the configurations.
    Not part of a run's configuration: changing it changes no run."""

    replicates: tuple[str, ...] = setting(
        ("train.seed",),
        doc="settings whose values only repeat a configuration (seeds); runs differing only in them form a group",
    )
    metric: str | None = setting(
        None,
        rank_metric,
        doc="the metric that ranks the groups; final/val/loss where rows are held out, else final/train/loss",
    )
    higher_is_better: bool | None = setting(
        None, doc="the metric's direction; known for loss, accuracy, mae, rmse and the distance"
    )
