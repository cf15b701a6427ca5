"""A planned run: one run of a sweep, fully validated, as every later layer receives it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from trainer.kinds import models
from trainer.spec.schema import Config, ReportSettings, as_data

# The evaluation's tag of the distance from the weights to the true weights, where the data knows them.
DISTANCE = "eval/distance"


@dataclass(frozen=True)
class Trial:
    """A run's place in a search: its trial's number and drawn values, and what it reports at each
    evaluation for pruning (None: nothing)."""

    number: int
    params: tuple[tuple[str, Any], ...]  # (dotted key, value) of every searched setting
    space: tuple[
        tuple[str, tuple[float, float, bool]], ...
    ] = ()  # (key, (low, high, log)) of each numeric one
    reports: str | None = None  # the evaluation tag pruning compares (val/loss), where runs are pruned
    method: str = "grid"  # how the search drew it
    pruner: str = "none"
    metric: str = ""  # what the search optimizes (final/val/loss), and which way
    direction: str = "minimize"
    replicates: tuple[str, ...] = ()  # the settings its trials repeat over
    verdicts: tuple[int, ...] = ()  # the evaluation steps at which its pruner may stop it
    search: str = ""  # what drew it, as JSON (trainer.spec.trials.identity): its study's identity


@dataclass(frozen=True)
class RunPlan:
    """One run, fully validated: where it goes and what it trains."""

    experiment: str
    name: str
    config: Config
    swept: tuple[tuple[str, Any], ...]  # (dotted key, value) pairs that name the run
    spec_path: str
    data_folder: str  # CSV paths and user modules are looked up here
    rows: int  # training rows
    features: int  # of a row of a table (0 for images and other shapes)
    steps: int
    batch_size: int
    has_truth: bool  # the data knows the true weights of this linear model
    validation_rows: int = 0
    input_shape: tuple[int, ...] = ()
    outputs: int = 1  # of a built-in model
    classes: int | None = None  # class labels: how many; None for real targets
    labels: tuple[int, int] | None = None  # the smallest and largest class label over all the data
    parameters: int | None = None  # the model's parameter elements, where known
    regression: bool = True  # a built-in regression loss: convergence within eval.tolerance means something
    code: tuple[tuple[str, str], ...] = ()  # (where, import path) of every piece of user code the run calls
    report: ReportSettings = ReportSettings()  # the spec's report section: replicates, ranking metric
    true_weights: tuple[float, ...] | None = None  # of a linear model where the data knows them
    trial: Trial | None = None  # of a search: its trial, whose replicates are its other runs
    # The spec's `executor:` section: (executor, option, value, 'file:line'); not part of the run's identity.
    executor: tuple[tuple[str, str, Any, str], ...] = ()

    @property
    def folder(self) -> str:
        """The run's folder, relative to the log folder."""
        return f"{self.experiment}/{self.name}"

    @functools.cached_property
    def config_data(self) -> dict[str, Any]:
        """The configuration as plain data (as config.yaml and the record hold it), made once and
        carried to the workers; read it, never change it."""
        return as_data(self.config)

    @property
    def swept_keys(self) -> list[str]:
        return [k for k, _ in self.swept]

    @property
    def shape(self) -> models.Shape:
        return models.Shape(self.features, self.outputs, self.input_shape, self.classes)

    def cost(self) -> float:
        """A rough relative duration, so the longest runs start first."""
        return self.steps * (1.0 + self.batch_size * (self.parameters or 10_000) / 20_000)
