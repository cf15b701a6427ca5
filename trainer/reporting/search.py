"""What a search found, from its runs' records: its trials by state, the best trials with their
seeds' spread, the steps pruning saved, and (from the study's journal) Optuna's parameter
importances."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.core.status import Status

# Complete trials Optuna's importances need before they say more than noise.
MIN_IMPORTANCE_TRIALS = 8


@dataclass
class TrialResult:
    """One trial, over its replicates."""

    number: int
    params: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def states(self) -> list[str]:
        return [r.get("status") for r in self.runs]

    @property
    def state(self) -> str:
        states = set(self.states)
        if Status.PRUNED in states:
            return Status.PRUNED
        if states == {Status.COMPLETE}:
            return Status.COMPLETE
        for state in (Status.DIVERGED, Status.FAILED, Status.INTERRUPTED):
            if state in states:
                return state
        return sorted(states)[0] if states else Status.MISSING

    def values(self, metric: str) -> list[float]:
        found = [(r.get("metrics") or {}).get(metric) for r in self.runs]
        return [v for v in found if isinstance(v, (int, float)) and math.isfinite(v)]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        if self.state != Status.COMPLETE or not values or len(values) != len(self.runs):
            return None
        return math.fsum(values) / len(values)

    def spread(self, metric: str) -> float:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def steps_trained(self) -> int:
        return sum(int(r.get("steps_done") or 0) for r in self.runs)

    @property
    def steps_planned(self) -> int:
        return sum(int(r.get("steps") or 0) for r in self.runs)


@dataclass(frozen=True)
class Pruning:
    """Where a pruner stopped a trial: the step it judged at, and the value it judged there (the
    evaluation tag it compares, as the trial's mean over its runs stopped at that step)."""

    step: int
    tag: str | None
    value: float | None

    def text(self, shown: Any = None) -> str:
        """'pruned at step 100 (train/loss 3.2)'; `shown` formats the value."""
        if self.tag is None or self.value is None:
            return f"pruned at step {self.step}"
        value = shown(self.value) if shown is not None else f"{self.value:.4g}"
        return f"pruned at step {self.step} ({self.tag} {value})"


def pruned_at(runs: list[dict[str, Any]]) -> Pruning | None:
    """Where the pruner stopped a trial of these runs (its replicates); None where none was pruned.
    A replicate started after the others takes their verdict at its own first chance, earlier: the
    trial's step is the latest."""
    stopped = [
        r["stopped"]
        for r in runs
        if r.get("status") == Status.PRUNED
        and isinstance(r.get("stopped"), dict)
        and isinstance(r["stopped"].get("step"), int)
    ]
    if not stopped:
        return None
    step = max(s["step"] for s in stopped)
    at = [s for s in stopped if s["step"] == step]
    tags = [k for k in at[0] if k not in ("step", "reason")]
    tag = tags[0] if len(tags) == 1 else None
    values = [s.get(tag) for s in at] if tag is not None else []
    if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return Pruning(step, tag, None)
    return Pruning(step, tag, math.fsum(values) / len(values))


def trials_of(records: list[dict[str, Any]]) -> list[TrialResult]:
    """The trials among an experiment's records, by number."""
    trials: dict[int, TrialResult] = {}
    for record in records:
        trial = record.get("trial")
        if not isinstance(trial, dict) or not isinstance(trial.get("number"), int):
            continue
        found = trials.setdefault(
            trial["number"], TrialResult(trial["number"], dict(trial.get("params") or {}))
        )
        found.runs.append(record)
    return [trials[n] for n in sorted(trials)]


def ranked(trials: list[TrialResult], metric: str, direction: str) -> list[TrialResult]:
    """The complete trials, best first."""
    done = [t for t in trials if t.mean(metric) is not None]
    return sorted(done, key=lambda t: t.mean(metric), reverse=direction == "maximize")


def shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.rpartition('.')[2]}={shown(v)}" for k, v in params.items())


def summary_lines(search: Any, records: list[dict[str, Any]]) -> list[str]:
    """The lines under a sweep's table for one search."""
    trials = trials_of(records)
    if not trials:
        return []
    metric, direction = search.metric, search.direction
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    settings = search.settings
    lines = [
        "",
        f"{search.experiment}: {settings.method} search, {len(trials)} of {search.space.trials} trials "
        f"({states})",
    ]
    best = ranked(trials, metric, direction)
    if best:
        top = best[0]
        seeds = f" ± {top.spread(metric):.3g} over {len(top.runs)} seeds" if len(top.runs) > 1 else ""
        lines.append(
            f"  best: trial {top.number}, {metric} {top.mean(metric):.4g}{seeds} ({params_text(top.params)})"
        )
    ended = [t for t in trials if t.state in (Status.COMPLETE, Status.PRUNED)]
    trained = sum(t.steps_trained for t in ended)
    planned = sum(t.steps_planned for t in ended)
    pruned = counts.get(Status.PRUNED, 0)
    if settings.prune.kind != "none" and planned:
        lines.append(
            f"  pruning ({settings.prune.kind}) stopped {pruned} trial{'s' if pruned != 1 else ''}: the "
            f"{len(ended)} that ended trained {trained:,} of their {planned:,} steps ({trained / planned:.0%})"
        )
    return lines


def importances(logdir: Path, experiment: str) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) over the study's complete trials; empty where the
    study has too few."""
    from trainer.run.journal import open_study

    try:
        study = open_study(logdir, experiment, create=False)
    except Exception:  # no study, or one Optuna cannot read
        return {}
    if study is None:
        return {}
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return {}
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study, evaluator=None))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
