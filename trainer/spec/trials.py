"""A search's runs as trials: the metric a search ranks by and which way, where its pruner judges,
and the identity of its study (what drew its trials and what they train)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Protocol

from trainer.kinds import metrics
from trainer.kinds.metrics import direction_of
from trainer.spec.plan import DISTANCE, RunPlan, Trial
from trainer.spec.pruners import pruner_kind
from trainer.spec.schema import Invalid
from trainer.spec.search import direction, eval_tag, study_configuration


class Search(Protocol):
    """What of a search (trainer.spec.searches.Search) its trials are made from."""

    space: Any  # trainer.spec.search.Space
    spec: Any  # trainer.spec.files.Spec
    metric: str
    direction: str

    @property
    def settings(self) -> Any: ...

    @property
    def pruning(self) -> bool: ...


def metric_of(search: Search, run: RunPlan) -> tuple[str, str]:
    """The metric a search optimizes and its direction, as the run's evaluations have it."""
    spec = search.spec
    metric = search.settings.metric or spec.report.metric
    if metric is None:
        metric = "final/val/loss" if run.validation_rows else "final/train/loss"
    higher = spec.report.higher_is_better
    if higher is None:
        higher = direction_of(metric) == "maximize"
    return metric, direction(search.settings, higher)


def as_trial(search: Search, run: RunPlan, number: int, params: dict[str, Any]) -> RunPlan:
    """A run of a search as its trial `number`, with the drawn values `params`: what it reports, when
    its pruner judges it, and its study's identity; a metric the run cannot rank by raises Invalid."""
    metric, way = metric_of(search, run)
    search.metric, search.direction = metric, way
    tag = DISTANCE if metric == "final/weight_distance" else eval_tag(metric)
    key = "search.metric" if search.settings.metric else "report.metric"
    natural = direction_of(metric)
    if search.settings.direction is not None and natural not in (None, way):
        better = "higher" if natural == "maximize" else "lower"
        raise Invalid([("search.direction", f"{way}, but {metric} is better {better}")])
    if tag == DISTANCE and not run.has_truth:
        raise Invalid(
            [
                (
                    key,
                    f"{metric} is known only for a linear model of data that knows its true weights (seed_toy)",
                )
            ]
        )
    split, _, name = tag.partition("/")
    if split == "val" and not run.validation_rows:
        raise Invalid([(key, f"{metric} is measured on held-out rows, and none are; set data.validation")])
    known = ["loss", *(m for m in run.config.eval.metrics if m in metrics.BUILTIN)]
    if tag != DISTANCE and name not in known and all(m in metrics.BUILTIN for m in run.config.eval.metrics):
        raise Invalid(
            [
                (
                    key,
                    f"{metric} is no value of this run's evaluations; they have "
                    + ", ".join(
                        f"{when}/{s}/{n}"
                        for when in ("final", "best")
                        for s in (["train", "val"] if run.validation_rows else ["train"])
                        for n in known
                    ),
                )
            ]
        )
    space = tuple((k, (d.low, d.high, d.log)) for k, d in search.space.dimensions.items() if d.numeric)
    reports = tag if search.pruning else None
    settings = search.settings
    verdicts = pruner_kind(settings.prune.kind).verdict_steps(
        settings.prune, run.steps, run.config.eval.every
    )
    if search.pruning and not verdicts:
        raise Invalid(
            [
                (
                    "search.prune.min_steps",
                    f"{settings.prune.min_steps} is at or past the runs' last evaluation before their end "
                    f"({run.steps} steps, evaluated every {run.config.eval.every}): no run would be pruned",
                )
            ]
        )
    trial = Trial(
        number,
        tuple(params.items()),
        space,
        reports,
        settings.method,
        settings.prune.kind,
        metric,
        way,
        tuple(search.space.replicates),
        verdicts,
        json.dumps(identity(search, run), sort_keys=True),
    )
    return dataclasses.replace(run, trial=trial)


def identity(search: Search, run: RunPlan) -> dict[str, Any]:
    """What decides a search's trials and verdicts, and what they train (`run` is any of its runs):
    a study drawn otherwise, or of trials configured otherwise, is another study. Its number of
    trials is not part of it: more trials go on drawing where the study stopped."""
    settings = search.settings
    prune = settings.prune
    return {
        "method": settings.method,
        "seed": settings.seed,
        "metric": search.metric,
        "direction": search.direction,
        "prune": pruner_kind(prune.kind).identity(prune),
        "space": {key: d.text() for key, d in search.space.dimensions.items()},
        "replicates": list(search.space.replicates),
        "config": study_configuration(run.config_data, search.space.dimensions, search.space.replicates),
    }
