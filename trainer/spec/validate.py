"""Validating one run of a spec before any run starts: its settings against its data (batch size,
targets, model widths, metrics, hooks), made into the planned run every later layer receives."""

from __future__ import annotations

import math
from typing import Any

from trainer.core.strict import is_import_path
from trainer.kinds import data, losses, metrics, models
from trainer.kinds import registry as kinds
from trainer.kinds.models import LinearModel
from trainer.spec.apart import Apart
from trainer.spec.files import Spec
from trainer.spec.plan import RunPlan
from trainer.spec.probe import inspect_apart, width_problem
from trainer.spec.schema import Config, Invalid, build

DEFAULT_STEPS = 1000


def total_steps(config: Config, rows: int, batch_size: int) -> int:
    train = config.train
    if train.steps is not None:
        return train.steps
    if train.epochs is not None:
        return train.epochs * math.ceil(rows / batch_size)
    return DEFAULT_STEPS


def validate_run(
    spec: Spec, raw: dict[str, Any], name: str, swept: tuple[tuple[str, Any], ...], apart: Apart | None
) -> RunPlan:
    with kinds.searching(spec.folder):
        config: Config = build(Config, raw)
    if apart is not None and kinds.kind_of(config.data).is_user_code:
        info = inspect_apart(config.data, spec.folder, config.train.timeout, spec.path, apart)
    else:
        info = data.inspect(config.data, spec.folder)
    problems: list[tuple[str, str]] = []
    batch = config.train.batch_size
    batch_size = info.rows if batch == "full" else batch
    if batch_size > info.rows:
        held = f" after {info.validation_rows} held out for validation" if info.validation_rows else ""
        problems.append(
            (
                "train.batch_size",
                f"{batch} is larger than the training data ({info.rows} rows{held}); "
                f"use at most {info.rows}, or 'full'",
            )
        )
    problems += losses.check_targets(config.loss, info.classes)
    model = config.model
    outputs = _outputs(config, info)
    if models.is_builtin(model) and len(info.input_shape) != 1:
        problems.append(
            (
                "model.kind",
                f"{model.kind!r} takes rows of features, but one input of this data has the "
                f"shape {list(info.input_shape)}; use a model of your own (module:Class)",
            )
        )
    if isinstance(model, LinearModel) and isinstance(model.init, tuple) and len(model.init) != info.features:
        problems.append(
            (
                "model.init",
                f"has {len(model.init)} values but the data has {info.features} features; "
                f"give one initial weight per feature",
            )
        )
    if outputs is None:
        problems.append(
            (
                "data.classes",
                "the number of classes cannot be told from this data (its targets are not one "
                "integer label per row); give data.classes",
            )
        )
    elif models.is_builtin(model) and losses.task_of(config.loss) == losses.CLASSES:
        problem = width_problem(model, outputs, info.labels)
        if problem is not None:
            problems.append(problem)
    code = [
        (f"{section}.kind", getattr(config, section).kind)
        for section in kinds.FAMILIES
        if is_import_path(getattr(config, section).kind)
    ]
    for i, metric_name in enumerate(config.eval.metrics):
        key = f"eval.metrics[{i}]"
        try:
            metric = metrics.resolve(metric_name, spec.folder, key)
        except Invalid as invalid:
            problems += invalid.problems
            continue
        if metric.classes_only and info.classes is None:
            problems.append((key, f"{metric_name} needs class labels, but the targets are real numbers"))
        if is_import_path(metric_name):
            code.append((key, metric_name))
    if config.data.collate is not None:
        if not info.dataset:
            problems.append(("data.collate", "makes batches of a Dataset's items; this data is tensors"))
        elif not callable(data.collate_of(config.data, spec.folder)):
            problems.append(("data.collate", f"{config.data.collate} is not a function of a list of items"))
        code.append(("data.collate", config.data.collate))
    problems += _watch_problems(config, info)
    if config.log.hook is not None:
        hook = kinds.import_attribute(config.log.hook, str(spec.folder.resolve()), "log.hook")
        if not callable(hook):
            problems.append(
                (
                    "log.hook",
                    f"{config.log.hook} is {type(hook).__name__}, not a function "
                    f"hook(writer, step, model, **context)",
                )
            )
        code.append(("log.hook", config.log.hook))
    if problems:
        raise Invalid(problems)
    shape = models.Shape(info.features, outputs or 1)
    has_truth = info.true_weights is not None and isinstance(model, LinearModel) and outputs == 1
    return RunPlan(
        experiment=config.name,
        name=name,
        config=config,
        swept=swept,
        spec_path=spec.path,
        data_folder=str(spec.folder),
        rows=info.rows,
        features=info.features,
        steps=total_steps(config, info.rows, batch_size),
        batch_size=batch_size,
        has_truth=has_truth,
        validation_rows=info.validation_rows,
        input_shape=info.input_shape,
        outputs=outputs or 1,
        classes=info.classes,
        labels=info.labels,
        parameters=models.parameter_count(model, shape),
        regression=losses.task_of(config.loss) == losses.REGRESSION,
        code=tuple(code),
        report=spec.report,
        executor=spec.executor,
        true_weights=tuple(info.true_weights) if has_truth else None,
    )


def _watch_problems(config: Config, info: data.DataInfo) -> list[tuple[str, str]]:
    """Whether train.early_stopping.metric is a value this run's evaluations have."""
    stopping = config.train.early_stopping
    if stopping is None or stopping.metric is None:
        return []
    split, _, name = stopping.metric.partition("/")
    key = "train.early_stopping.metric"
    if split == "val" and not info.validation_rows:
        return [
            (
                key,
                f"{stopping.metric} is measured on held-out rows, and none are; set data.validation, "
                f"or watch train/{name}",
            )
        ]
    known = ["loss", *(m for m in config.eval.metrics if m in metrics.BUILTIN)]
    if name not in known and all(m in metrics.BUILTIN for m in config.eval.metrics):
        return [
            (
                key,
                f"{stopping.metric} is no value of this run's evaluations; they have "
                + ", ".join(f"{split}/{n}" for n in known),
            )
        ]
    return []


def _outputs(config: Config, info: data.DataInfo) -> int | None:
    """The outputs of a built-in model: as given, one per class for a classification loss, else
    one per target value."""
    given = getattr(config.model, "outputs", "auto")
    if given != "auto":
        return given
    if losses.task_of(config.loss) == losses.CLASSES or (
        info.classes is not None and losses.task_of(config.loss) is None
    ):
        return info.classes
    return models.element_count(info.target_shape)
