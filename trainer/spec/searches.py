"""A spec's search: its space, the metric its study optimizes, and the runs of its trials, drawn up
front for grid, random and sobol (trainer.spec.search.draw) and, for tpe, made as the study draws
each trial (trainer.run.study). Every value a range holds is tried at its ends before any run starts."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from trainer.core.errors import SpecError
from trainer.spec.apart import Apart
from trainer.spec.files import Spec, combine
from trainer.spec.grid import MAX_RUNS, expand, format_values, locate, lookup
from trainer.spec.names import run_name
from trainer.spec.plan import RunPlan
from trainer.spec.schema import Config, Invalid, check_key
from trainer.spec.search import Distribution, SearchSettings, Space, draw
from trainer.spec.trials import as_trial
from trainer.spec.validate import validate_run


@dataclass
class Search:
    """One spec's search: its space, the metric it optimizes, and the runs of its trials (drawn up
    front for grid, random and sobol; for tpe made by trial_runs as the study draws each trial)."""

    experiment: str
    space: Space
    spec: Spec
    metric: str  # the ranking metric the study optimizes: final/val/loss
    direction: str  # minimize or maximize
    runs: list[RunPlan] = field(default_factory=list)
    probes: list[RunPlan] = field(default_factory=list)  # tpe: runs at the space's corners, checked now
    width: int = 3  # digits of a trial's number in its runs' names

    @property
    def settings(self) -> Any:
        return self.space.settings

    @property
    def draws_later(self) -> bool:
        return self.settings.method == "tpe"

    @property
    def pruning(self) -> bool:
        return self.settings.prune.kind != "none"

    @property
    def replicas(self) -> int:
        return math.prod(len(v) for v in self.space.replicates.values())

    @property
    def total_runs(self) -> int:
        return len(self.runs) if not self.draws_later else self.space.trials * self.replicas

    @property
    def identity(self) -> dict[str, Any]:
        """What drew its study and what its trials train (identity), as its runs' trials carry it."""
        first = next(iter([*self.runs, *self.probes]))
        return json.loads(first.trial.search)

    def trial_runs(self, number: int, params: dict[str, Any]) -> list[RunPlan]:
        """The runs of one trial (one per replicate), validated; problems raise SpecError."""
        return _trial_runs(self, number, params, None)


def searched(spec: Spec, apart: Apart | None, allow_large: bool = False) -> Search:
    """A spec with a search section or distributions: its search and the runs planned now."""
    settings = spec.search or SearchSettings()
    method = settings.method
    where = spec.where("search")
    problems = []
    if method == "grid":
        problems += [
            f"{spec.where(f'sweep.{key}')}: sweep.{key}: a distribution is drawn from by a search, but "
            f"search.method is grid{'' if spec.search else ' (no search: section)'}; set search.method "
            f"to random, sobol or tpe (with search.trials), or give a list of values"
            for key in spec.space
        ]
    elif settings.trials is None:
        problems.append(f"{where}: search.trials: missing; give how many configurations {method} draws")
    keys = settings.replicates if settings.replicates is not None else spec.report.replicates
    if settings.replicates is not None:
        for i, key in enumerate(settings.replicates):
            problem = check_key(Config, key, spec.open_sections)
            if problem is not None:
                problems.append(f"{spec.where('search.replicates')}: search.replicates[{i}]: {problem}")
    if method == "grid" and settings.trials is not None:
        problems.append(
            f"{spec.where('search.trials')}: search.trials: a grid runs every combination of its lists; "
            f"leave search.trials out, or draw them with search.method random, sobol or tpe"
        )
    replicates = {k: spec.sweep[k] for k in keys if k in spec.sweep}
    if settings.replicates is not None:
        problems += [
            f"{spec.where('search.replicates')}: search.replicates[{i}]: {key} is not swept; list its "
            f"values under sweep: to repeat every trial over them"
            for i, key in enumerate(settings.replicates)
            if key not in spec.sweep
            and key not in spec.space
            and check_key(Config, key, spec.open_sections) is None
        ]
    # A swept key pinned would draw (or number, or average) the trials otherwise than the study did.
    problems += [
        f"{o.origin}: {o.key} is swept by the spec's {method} search; a search with it fixed is "
        f"another search: write the value into the spec, out of sweep:, under a new name"
        for o in spec.overrides
        if o.key in spec.order
    ]
    problems += [
        f"{spec.where(f'sweep.{k}')}: sweep.{k}: is a replicate (search.replicates), whose values every "
        f"trial runs with; give it a list, not a distribution"
        for k in keys
        if k in spec.space
    ]
    if problems:
        raise SpecError(problems)
    if method == "grid":
        dimensions = {
            k: Distribution("choice", choices=tuple(v)) for k, v in spec.sweep.items() if k not in replicates
        }
    else:
        dimensions = {
            k: spec.space[k] if k in spec.space else Distribution("choice", choices=tuple(spec.sweep[k]))
            for k in spec.order
            if k not in replicates
        }
    if not dimensions and method != "grid":
        raise SpecError(
            f"{spec.where('sweep')}: sweep: {method} has nothing to draw; give a distribution such as "
            f"optimizer.lr: {{loguniform: [0.001, 0.1]}}, or a list that is no replicate"
        )
    if method == "grid":
        settings = dataclasses.replace(
            settings, trials=math.prod(len(d.choices) for d in dimensions.values())
        )
    space = Space(settings, dimensions, replicates)
    count = space.trials * math.prod(len(v) for v in replicates.values())
    if count > MAX_RUNS and not allow_large:
        raise SpecError(
            f"{where}: search.trials: {count:,} runs ({space.trials:,} trials x "
            f"{count // space.trials} replicates) is more than {MAX_RUNS:,}, which is likely a mistake; "
            f"pass --allow-large to run them all"
        )
    search = Search(spec.name, space, spec, "", "minimize", width=max(3, len(str(space.trials - 1))))
    if method == "grid":
        search.runs = _grid_trials(search, expand(spec, allow_large, apart))
    elif method == "tpe":
        search.probes = [run for corner in _corners(space) for run in _trial_runs(search, -1, corner, apart)]
    else:
        # Every value a range holds must make a valid run, whatever the draws: its ends are tried.
        for corner in _corners(space):
            _trial_runs(search, -1, corner, apart)
        draws = draw(space)
        found: list[str] = []
        for number, params in enumerate(draws):
            try:
                search.runs += _trial_runs(search, number, params, apart)
            except SpecError as exc:
                found += exc.problems
        if found:
            raise SpecError(list(dict.fromkeys(found)))
    return search


def _grid_trials(search: Search, runs: list[RunPlan]) -> list[RunPlan]:
    """A grid's runs as trials, numbered by their configuration (the replicates apart)."""
    numbers: dict[str, int] = {}
    out = []
    for run in runs:
        params = {k: v for k, v in run.swept if k in search.space.dimensions}
        number = numbers.setdefault(json.dumps(params, sort_keys=True, default=str), len(numbers))
        try:
            out.append(as_trial(search, run, number, params))
        except Invalid as invalid:
            raise SpecError([f"{locate(search.spec, k)}: {k}: {m}" for k, m in invalid.problems])
    return out


def _corners(space: Space) -> list[dict[str, Any]]:
    """Values at each end of every numeric distribution, with each choice: where a drawn trial
    could fail to validate, it fails here, before any run starts."""
    choice_keys = [k for k, d in space.dimensions.items() if not d.numeric]
    combos = list(
        itertools.islice(itertools.product(*(space.dimensions[k].choices for k in choice_keys)), 64)
    )
    corners = []
    for end in ("low", "high"):
        for combo in combos:
            values = dict(zip(choice_keys, combo))
            for k, d in space.dimensions.items():
                if d.numeric:
                    values[k] = getattr(d, end)
            corners.append({k: values[k] for k in space.dimensions})
    return corners


def _numeric(search: Search) -> set[str]:
    return {k for k, d in search.space.dimensions.items() if d.numeric}


def _short(value: Any) -> Any:
    """A drawn number as a run's name shows it: three significant digits."""
    if isinstance(value, float):
        return float(f"{value:.3g}")
    return value


def _trial_runs(search: Search, number: int, params: dict[str, Any], apart: Apart | None) -> list[RunPlan]:
    spec = search.spec
    replicates = search.space.replicates
    runs = []
    problems: dict[str, None] = {}
    for picks in itertools.product(*replicates.values()):
        values = {**params, **dict(zip(replicates, picks))}
        indices = {k: spec.sweep[k].index(v) for k, v in zip(replicates, picks)}
        try:
            raw = combine(spec, values)
            named = [(k, values[k]) for k in spec.order if k in values] + [
                (k, lookup(raw, k)) for k in spec.overridden
            ]
            shown = [(k, _short(v)) if k in search.space.dimensions else (k, v) for k, v in named]
            prefix = "probe" if number < 0 else f"trial={number:0{search.width}d}"
            name = f"{prefix},{run_name(shown, spec.sweep)}".removesuffix(",base")
            run = validate_run(spec, raw, name, tuple(named), apart)
            runs.append(as_trial(search, run, number, params))
        except Invalid as invalid:
            for key, message in invalid.problems:
                where = locate(spec, key, indices)
                if key.startswith(("search.", "report.")):  # the same for every trial
                    problems[f"{spec.where(key)}: {key}: {message}"] = None
                elif number < 0:
                    ends = ", ".join(
                        f"{k}: {json.dumps(v)}" for k, v in params.items() if k in _numeric(search)
                    )
                    problems[f"{where}: {key}: {message} (at an end of the searched ranges: {ends})"] = None
                else:
                    problems[f"{where}: {key}: {message} (trial {format_values(tuple(params.items()))})"] = (
                        None
                    )
    if problems:
        raise SpecError(list(problems))
    return runs
