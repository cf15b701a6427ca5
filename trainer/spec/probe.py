"""Trying a spec's user code before any run starts: the data function is called, the model built
and run forward on one batch, the loss and the metrics computed on its output.

So a data function that raises, a model whose output does not fit the targets or the loss, or a
metric that fails is reported when the sweep is planned, with the spec's file and line, and
nothing is written. Each distinct combination of data, model, loss, metrics and batch size is
tried once, in the planning's child process (trainer.spec.apart): user code that crashes or exits
ends that process, and the sweep says so in one sentence. User data is inspected there too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainer.core.deadline import TimedOut, time_limit
from trainer.core.strict import Invalid, as_data, suggest
from trainer.kinds import data, losses, metrics, models
from trainer.kinds import registry as kinds
from trainer.kinds.models import build_model
from trainer.spec.apart import Apart, Trying
from trainer.spec.plan import RunPlan

Found = tuple[list[RunPlan], list[tuple[RunPlan, str, str]]]


def probe_apart(runs: list[RunPlan], apart: Apart) -> Found:
    """probe(runs) in the planning's child process (trainer.spec.apart): a crash there is one
    SpecError naming the spec and the user code it was trying."""
    return apart.call(_probe, runs, trying=("the specs", "their user code"))


def _probe(runs: list[RunPlan], said: Callable[[Trying], None]) -> Found:
    return probe(runs, lambda run: said((run.spec_path, f"{_named_code(run)} on one batch")))


def inspect_apart(spec: Any, folder: Path, timeout: float | None, where: str, apart: Apart) -> data.DataInfo:
    """data.inspect of a user data kind in the planning's child process, within train.timeout;
    each distinct data configuration is called once per plan."""
    key = (json.dumps(as_data(spec), sort_keys=True, default=str), str(folder), timeout)
    if key not in apart.cache:
        try:
            apart.cache[key] = apart.call(
                _inspect, spec, folder, timeout, trying=(where, f"data {spec.kind!r}")
            )
        except Invalid as invalid:
            apart.cache[key] = invalid
    found = apart.cache[key]
    if isinstance(found, Invalid):
        raise found
    return found


def _inspect(spec: Any, folder: Path, timeout: float | None, said: Callable[[Trying], None]) -> data.DataInfo:
    try:
        with time_limit(timeout):
            return data.inspect(spec, folder)
    except TimedOut as late:
        message = f"calling {spec.kind!r} took longer than the limit, train.timeout ({late.seconds:g} s)"
        raise Invalid([("data.kind", message)]) from None


def _named_code(run: RunPlan) -> str:
    """The user code a run calls, as its spec names it: "model 'mymodel:Net', data 'mydata:load'"."""
    return ", ".join(f"{where.removesuffix('.kind')} {path!r}" for where, path in run.code)


@dataclass(frozen=True)
class Tried:
    """What one batch through a run's user code showed: its model's parameter elements, and the
    names of its evaluations' values (loss, then each metric's, a dict metric's keys among them)."""

    parameters: int
    names: tuple[str, ...]


def probe(runs: list[RunPlan], trying: Callable[[RunPlan], None] = lambda run: None) -> Found:
    """The runs with their models' sizes filled in, and the problems found as (run, key, message);
    `trying` is told each run before its user code is tried."""
    tried: dict[str, Tried | tuple[str, str]] = {}
    out: list[RunPlan] = []
    problems: list[tuple[RunPlan, str, str]] = []
    for run in runs:
        if not run.code:
            out.append(run)
            continue
        key = _key(run)
        if key not in tried:
            trying(run)
            try:
                with time_limit(run.config.train.timeout):
                    tried[key] = try_run(run)
            except TimedOut as late:
                message = (
                    f"trying {_named_code(run)} on one batch took longer than the limit ({late.seconds:g} s)"
                )
                tried[key] = ("train.timeout", message)
                problems.append((run, *tried[key]))
            except Invalid as invalid:
                tried[key] = invalid.problems[0]
                problems.append((run, *invalid.problems[0]))
        result = tried[key]
        if isinstance(result, Tried):
            out.append(replace(run, parameters=result.parameters))
            said = {(k, m) for _, k, m in problems}
            problems += [(run, *p) for p in metric_problems(run, result.names) if p not in said]
        else:
            out.append(run)
    return out, problems


def metric_problems(run: RunPlan, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(key, message) for each metric the run's spec names that its evaluations, whose values are
    `names` on each split, do not have: train.early_stopping's, the search's and the report's."""
    splits = ["train", "val"] if run.validation_rows else ["train"]
    tags = [f"{split}/{name}" for split in splits for name in names]
    reported = [f"final/{tag}" for tag in tags] + [f"best/{splits[-1]}/{name}" for name in names]
    if run.has_truth:
        reported.append("final/weight_distance")
    wanted = []
    stopping = run.config.train.early_stopping
    if stopping is not None and stopping.metric is not None:
        wanted.append(("train.early_stopping.metric", stopping.metric, tags))
    if run.trial is not None and run.trial.metric != run.report.metric:
        wanted.append(("search.metric", run.trial.metric, reported))
    if run.report.metric is not None:
        wanted.append(("report.metric", run.report.metric, reported))
    return [
        (
            key,
            f"{value} is no value of this run's evaluations{suggest(value, known)}; they have "
            + ", ".join(known),
        )
        for key, value, known in wanted
        if value not in known
    ]


def _key(run: RunPlan) -> str:
    config = run.config
    return json.dumps(
        [
            as_data(config.data),
            as_data(config.model),
            as_data(config.loss),
            list(config.eval.metrics),
            run.batch_size,
            run.data_folder,
        ],
        sort_keys=True,
        default=str,
    )


def _said(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_width(config: Any, output: Any, labels: tuple[int, int] | None) -> None:
    """A classifier's outputs, one per class, against the labels of all the data (not one batch's)."""
    if losses.task_of(config.loss) != losses.CLASSES or output.dim() != 2:
        return
    problem = width_problem(config.model, output.shape[-1], labels)
    if problem is not None:
        raise Invalid([problem])


def width_problem(model: Any, width: int, labels: tuple[int, int] | None) -> tuple[str, str] | None:
    """(key, message) where a classifier of `width` outputs cannot score every label, naming the
    setting to change: the model's own where the spec set it, else how the model is given it."""
    if labels is None:
        return None
    low, high = labels
    if low < 0:
        return ("data.kind", f"the labels run {low}..{high}; class labels count from 0")
    if high < width:
        return None
    classes = high + 1
    seen = f"but the labels run {low}..{high} ({classes} classes)"
    given = {
        name: getattr(model, name)
        for name in ("outputs", "num_classes")
        if getattr(model, name, "auto") != "auto"
    }
    if given:
        name, value = next(iter(given.items()))
        return (
            f"model.{name}",
            f"is {value}, {seen}; set it to {classes}, or leave it out to have it filled from the data",
        )
    value = "value" if width == 1 else "values"
    offer = ""
    if not models.is_builtin(model) and not {"outputs", "num_classes"} & set(kinds.settings(model)):
        offer = (
            f": a parameter num_classes (or outputs) of {model.kind} is given the class count "
            f"when the spec leaves it out"
        )
    return ("model.kind", f"outputs {width} {value} per row, {seen}; give the model {classes} outputs{offer}")


def try_run(run: RunPlan) -> Tried:
    """One forward pass, loss and metrics on one batch."""
    import torch
    from torch.utils.data import default_collate

    config = run.config
    dataset = data.load(config.data, Path(run.data_folder))
    try:
        model = build_model(config.model, run.shape, config.train.seed)
    except Invalid:
        raise
    except Exception as exc:  # the user's code raised: its message, at the spec's line
        raise Invalid([("model.kind", f"building {config.model.kind} raised {_said(exc)}")]) from None
    rows = min(run.batch_size, len(dataset.train))
    if dataset.train.dataset is None:
        x, y = dataset.train.x[:rows], dataset.train.y[:rows]
    else:
        try:
            collate = data.collate_of(config.data, Path(run.data_folder)) or default_collate
            x, y = collate([dataset.train.dataset[i] for i in range(rows)])
        except Exception as exc:
            raise Invalid(
                [("data.kind", f"a batch of {rows} items of the Dataset cannot be formed: {_said(exc)}")]
            ) from None
    try:
        with torch.no_grad():
            output = model(x)
    except Exception as exc:
        raise Invalid(
            [
                (
                    "model.kind",
                    f"{config.model.kind} raised {_said(exc)} on a batch of inputs of "
                    + (
                        f"shape {list(x.shape)} ({x.dtype})"
                        if isinstance(x, torch.Tensor)
                        else type(x).__name__
                    ),
                )
            ]
        ) from None
    if not isinstance(output, torch.Tensor):
        raise Invalid([("model.kind", f"{config.model.kind} returned {type(output).__name__}, not a tensor")])
    check_width(config, output, run.labels)
    fitted = output
    if losses.squeezes(config.loss):
        fitted = losses.fit(output, y)
        if fitted.shape != y.shape:
            raise Invalid(
                [
                    (
                        "loss.kind",
                        f"{config.loss.kind!r} compares outputs and targets element by element, "
                        f"but the model's outputs have the shape {list(output.shape)} and the "
                        f"targets {list(y.shape)}",
                    )
                ]
            )
    try:
        value = losses.build_loss(config.loss)(fitted, y)
    except Exception as exc:
        raise Invalid(
            [
                (
                    "loss.kind",
                    f"{config.loss.kind} raised {_said(exc)} for outputs of shape "
                    f"{list(output.shape)} and targets of shape {list(y.shape)} ({y.dtype})",
                )
            ]
        ) from None
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise Invalid([("loss.kind", f"{config.loss.kind} returned {shape}, not a single number")])
    names = ["loss"]
    for i, name in enumerate(config.eval.metrics):
        key = f"eval.metrics[{i}]"
        metric = metrics.resolve(name, Path(run.data_folder), key)
        try:
            values = metrics.values(metric, output, y)
            for v in values.values():
                float(v)
        except Exception as exc:
            raise Invalid(
                [
                    (
                        key,
                        f"{name} raised {_said(exc)} for outputs of shape {list(output.shape)} and "
                        f"targets of shape {list(y.shape)}",
                    )
                ]
            ) from None
        if "loss" in values:
            raise Invalid(
                [(key, f"{name} returns a value named 'loss', the loss's own name; call it otherwise")]
            )
        names += list(values)
    return Tried(sum(p.numel() for p in model.parameters()), tuple(names))
