"""What a sweep's runs show, over their seeds: pure data from the runs' records, no printing.

Runs whose configurations differ only in their replicate settings (train.seed, and whatever a
spec's `report.replicates` names) form a group. Each group gets, for every final and best metric,
the count, mean, standard deviation, range and 95% t-interval of its complete runs; failed and
diverged runs are counted, never averaged in. Groups are ranked by the experiment's metric, the
best is tested against the runner-up (Welch's t-test), and each swept setting's effect is its
marginal mean: the metric averaged over the groups that share a value of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trainer.core.status import Status
from trainer.kinds.metrics import direction_of
from trainer.reporting.stats import Separation, Stats, stats, welch
from trainer.run.record import code_id
from trainer.spec.names import BASE_RUN, format_value, labels
from trainer.tensorboard.hparams import NOT_METRICS, metric_tags

DEFAULT_REPLICATES = ("train.seed",)
DISTANCE = "final/weight_distance"
CONVERGED = "final/converged"
# Runs train in float32, which keeps about 7 significant digits: a value a million times smaller
# than the largest value of its metric in the experiment is rounding noise, and counts as zero (its
# digits would differ between engines and machines, and so would any test of one such value
# against another).
RESOLUTION = 1e-6
# Never a group statistic: the run's status says it (a diverged run has no final values).
SKIPPED = {"final/diverged", *NOT_METRICS}


@dataclass
class Group:
    """Runs of one configuration, repeated over the replicate settings."""

    label: str  # the swept settings that are no replicate, as in run names
    settings: dict[str, str]  # key -> value as the spec wrote it
    numbers: dict[str, float]  # key -> value as a number, where it is one (batch_size full resolved)
    runs: list[dict[str, Any]]
    counts: dict[str, int]  # status -> runs
    metrics: dict[str, Stats]  # over the complete runs

    @property
    def complete(self) -> int:
        return self.counts.get(Status.COMPLETE, 0)

    @property
    def failed(self) -> int:
        return len(self.runs) - self.complete


@dataclass(frozen=True)
class Effect:
    """A swept setting's marginal means: the metric for each of its values, averaged over the
    groups that have that value (so over the other settings)."""

    key: str
    label: str
    values: list[tuple[str, float | None, float, int]]  # (value as written, as a number, mean, groups)

    @property
    def size(self) -> float:
        """The largest difference between two of its values' means."""
        means = [mean for _, _, mean, _ in self.values]
        return max(means) - min(means)

    def best(self, higher_is_better: bool) -> tuple[str, float | None, float, int]:
        return (max if higher_is_better else min)(self.values, key=lambda v: v[2])

    def worst(self, higher_is_better: bool) -> tuple[str, float | None, float, int]:
        return (min if higher_is_better else max)(self.values, key=lambda v: v[2])


@dataclass
class ExperimentFindings:
    name: str
    replicates: tuple[str, ...]
    metric: str  # the metric that ranks the groups
    higher_is_better: bool
    swept: list[str]  # swept keys that are no replicate, in the order the runs name them
    groups: list[Group]  # best first; groups without a value for the metric last
    metrics: list[str]  # every metric a group has, in the HParams table's order
    separation: Separation | None  # of the best two groups; None for fewer than two
    effects: dict[str, list[Effect]] = field(default_factory=dict)  # metric -> effects, largest first
    apart: list[str] = field(default_factory=list)  # why groups of one label were kept apart
    search: SearchFindings | None = None  # where the experiment is a search: its trials' story

    @property
    def runs(self) -> int:
        return sum(len(g.runs) for g in self.groups)

    def ranked(self) -> list[Group]:
        return [g for g in self.groups if self.metric in g.metrics]


def direction(metric: str, runs: list[dict[str, Any]], given: bool | None = None) -> bool:
    """Whether a higher value of a metric is better: as the spec says, by its name, or else from its
    runs (a best above the final means higher is better)."""
    if given is not None:
        return given
    known = direction_of(metric)  # by its name (trainer.kinds.metrics); else judged from its runs
    if known is not None:
        return known == "maximize"
    split_name = metric.partition("/")[2]
    for run in runs:
        values = run.get("metrics") or {}
        final, best = values.get(f"final/{split_name}"), values.get(f"best/{split_name}")
        if final is not None and best is not None and final != best:
            return best > final
    return False


def settings_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The report settings of an experiment's runs: the newest run's, or the defaults."""
    for record in sorted(records, key=lambda r: r.get("ended") or "", reverse=True):
        if isinstance(record.get("report"), dict):
            return record["report"]
    return {}


def _group_key(record: dict[str, Any], replicates: tuple[str, ...]) -> str:
    """Runs are seeds of one group only if their settings, replicates aside, and their code agree."""
    hparams = {k: v for k, v in (record.get("hparams") or {}).items() if k not in replicates}
    return json.dumps([hparams, code_id(record.get("code"))], sort_keys=True)


def _tell_apart(groups: list[Group], replicates: tuple[str, ...]) -> list[str]:
    """Give groups that would share a label (runs of one name and another configuration or code,
    brought together by a merge) the settings, or the code digest, that tell them apart; a sentence
    for each such label."""
    by_label: dict[str, list[Group]] = {}
    for group in groups:
        by_label.setdefault(group.label, []).append(group)
    said = []
    for label, same in by_label.items():
        if len(same) < 2:
            continue
        params = [
            {k: v for k, v in (g.runs[0].get("hparams") or {}).items() if k not in replicates} for g in same
        ]
        keys = sorted({k for h in params for k in h if len({json.dumps(p.get(k)) for p in params}) > 1})
        codes = [code_id(g.runs[0].get("code")) for g in same]
        for group, hparams, code in zip(same, params, codes):
            extra = [f"{k.rpartition('.')[2]}={format_value(hparams.get(k))}" for k in keys]
            if len(set(codes)) > 1:
                extra.append(f"code={code or 'none'}")
            group.label = ",".join(([] if label == BASE_RUN else [label]) + extra)
        why = "other settings" if keys else "different code"
        said.append(
            f"{len(same)} groups would all be `{label}`: their runs have one name but {why} "
            f"({', '.join(f'`{g.label}`' for g in same)}), so they are kept apart, not pooled as seeds."
        )
    return said


def _value(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def experiment_findings(name: str, records: list[dict[str, Any]]) -> ExperimentFindings:
    """The groups of one experiment's runs, their statistics, ranking, separation and effects."""
    settings = settings_of(records)
    replicates = tuple(settings.get("replicates") or DEFAULT_REPLICATES)
    trial = next((r["trial"] for r in records if isinstance(r.get("trial"), dict)), None)
    if trial is not None and trial.get("metric"):  # a search: ranked as it searched
        settings = {
            **settings,
            "metric": settings.get("metric") or trial["metric"],
            "higher_is_better": settings.get("higher_is_better")
            if settings.get("metric")
            else trial.get("direction") == "maximize",
        }
        replicates = tuple(trial.get("replicates") or replicates)
    swept = list(dict.fromkeys(k for r in records for k in r.get("swept") or {} if k not in replicates))
    short = labels(swept)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_key.setdefault(_group_key(record, replicates), []).append(record)
    complete = [r for r in records if r.get("status") == Status.COMPLETE]
    floor = floors(complete)
    groups = [_group(runs, swept, short, floor) for runs in by_key.values()]
    apart = _tell_apart(groups, replicates)
    metrics = [t for t in metric_tags(complete) if t not in SKIPPED]
    default = "final/val/loss" if "final/val/loss" in metrics else "final/train/loss"
    metric = settings.get("metric") or default
    higher = direction(metric, complete, settings.get("higher_is_better"))
    sign = -1 if higher else 1
    groups.sort(
        key=lambda g: (metric not in g.metrics, sign * g.metrics[metric].mean if metric in g.metrics else 0)
    )
    found = ExperimentFindings(name, replicates, metric, higher, swept, groups, metrics, None, apart=apart)
    ranked = found.ranked()
    if len(ranked) >= 2:
        found.separation = welch(ranked[0].metrics[metric], ranked[1].metrics[metric])
    # A setting drawn from a distribution has a value per trial: its effect is the search's scatter.
    drawn = {k for r in records for k in ((r.get("trial") or {}).get("space") or {})}
    for tag in dict.fromkeys([metric, DISTANCE, CONVERGED]):
        if tag in metrics:
            found.effects[tag] = effects(groups, [k for k in swept if k not in drawn], short, tag)
    if any(isinstance(r.get("trial"), dict) for r in records):
        found.search = search_findings(records, groups)
    return found


@dataclass
class SearchFindings:
    """What a search's records say besides the groups: its trials by state, the ranges it drew
    from, and the steps it trained against those of every trial trained to its end."""

    method: str
    pruner: str
    trials: int
    states: dict[str, int]  # trial state -> trials (a trial with a pruned run is pruned)
    space: dict[str, dict[str, Any]]  # numeric setting -> {low, high, log}
    searched: list[str]  # every searched setting: the numeric ones and the choices
    steps_trained: int  # by the runs of the trials that ended (complete or pruned)
    steps_planned: int
    importances: dict[str, float] = field(default_factory=dict)  # Optuna's, from the study's journal


def search_findings(records: list[dict[str, Any]], groups: list[Group]) -> SearchFindings:
    space: dict[str, dict[str, Any]] = {}
    searched: list[str] = []
    for record in records:
        trial = record.get("trial") or {}
        for key, bounds in (trial.get("space") or {}).items():
            if isinstance(bounds, dict):
                space.setdefault(key, bounds)
        searched += [k for k in trial.get("params") or {} if k not in searched]
    states: dict[str, int] = {}
    ended: list[dict[str, Any]] = []  # the runs of the trials that ended, complete or pruned
    for group in groups:
        if group.counts.get(Status.PRUNED):
            state = Status.PRUNED
        elif group.complete == len(group.runs):
            state = Status.COMPLETE
        else:
            state = next(s for s in group.counts if s != Status.COMPLETE)
        states[state] = states.get(state, 0) + 1
        if state in (Status.COMPLETE, Status.PRUNED):
            ended += group.runs
    first = next(r["trial"] for r in records if isinstance(r.get("trial"), dict))
    return SearchFindings(
        str(first.get("method", "grid")),
        str(first.get("pruner", "none")),
        len(groups),
        states,
        space,
        searched,
        sum(int(r.get("steps_done") or 0) for r in ended),
        sum(int(r.get("steps") or 0) for r in ended),
    )


def shown(value: Any) -> str:
    """A swept value as run names show it; a section by its settings, its kind bare: 'sgd,lr=0.01'."""
    if isinstance(value, dict):
        return ",".join(
            format_value(v) if k == "kind" else f"{k}={format_value(v)}" for k, v in value.items()
        )
    return format_value(value)


def floors(complete: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric's rounding floor in an experiment: RESOLUTION times its largest magnitude."""
    largest: dict[str, float] = {}
    for run in complete:
        for tag, value in (run.get("metrics") or {}).items():
            if (number := _value(value)) is not None and math.isfinite(number):
                largest[tag] = max(largest.get(tag, 0.0), abs(number))
    return {tag: RESOLUTION * size for tag, size in largest.items()}


def trial_label(record: dict[str, Any]) -> str | None:
    """A search's trial as its runs are named, without their replicates: 'trial=007,lr=0.0123';
    None for a run of no search."""
    trial = record.get("trial")
    if not isinstance(trial, dict) or not isinstance(trial.get("number"), int):
        return None
    replicates = {key.rpartition(".")[2] for key in trial.get("replicates") or ()}
    parts = [p for p in str(record.get("run", "")).split(",") if p.partition("=")[0] not in replicates]
    label = ",".join(parts)
    return label if label.startswith("trial=") else f"trial={trial['number']:03d}," + label


def _group(
    runs: list[dict[str, Any]], swept: list[str], short: dict[str, str], floor: dict[str, float]
) -> Group:
    first = runs[0]
    settings = {k: shown(v) for k, v in (first.get("swept") or {}).items() if k in swept}
    numbers = {
        k: number
        for k in settings
        if (number := _value((first.get("hparams") or {}).get(k))) is not None
        and not isinstance((first.get("hparams") or {}).get(k), bool)
    }
    label = trial_label(first) or ",".join(f"{short[k]}={v}" for k, v in settings.items()) or BASE_RUN
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.get("status", "?")] = counts.get(run.get("status", "?"), 0) + 1
    # A trial its pruner stopped is not ranked by the seeds that happened to finish first.
    pruned = counts.get(Status.PRUNED, 0) > 0
    values: dict[str, list[float]] = {}
    for run in runs:
        if run.get("status") != Status.COMPLETE or pruned:
            continue
        for tag, value in (run.get("metrics") or {}).items():
            if tag not in SKIPPED and (number := _value(value)) is not None:
                values.setdefault(tag, []).append(0.0 if abs(number) < floor.get(tag, 0.0) else number)
    return Group(label, settings, numbers, runs, counts, {t: s for t, v in values.items() if (s := stats(v))})


def effects(groups: list[Group], swept: list[str], short: dict[str, str], metric: str) -> list[Effect]:
    """Each swept setting's marginal means of a metric, the setting with the largest spread first;
    settings with one value are left out."""
    found = []
    for key in swept:
        by_value: dict[str, list[Group]] = {}
        for group in groups:
            if metric in group.metrics and key in group.settings:
                by_value.setdefault(group.settings[key], []).append(group)
        if len(by_value) < 2:
            continue
        values = [
            (
                value,
                members[0].numbers.get(key),
                math.fsum(g.metrics[metric].mean for g in members) / len(members),
                len(members),
            )
            for value, members in by_value.items()
        ]
        found.append(Effect(key, short[key], values))
    return sorted(found, key=lambda e: -e.size)


def findings(records: list[dict[str, Any]], experiments: Iterable[str] = ()) -> list[ExperimentFindings]:
    """The findings of every experiment among the records (or of those named), by name."""
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_experiment.setdefault(record.get("experiment") or record["folder"].partition("/")[0], []).append(
            record
        )
    wanted = list(experiments) or sorted(by_experiment)
    return [experiment_findings(name, by_experiment[name]) for name in wanted if name in by_experiment]
