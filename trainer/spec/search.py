"""Sweeps that search: distributions among a spec's `sweep:` values, the `search:` section that says
how configurations are drawn, and the trials a random or quasi-random search draws.

A trial is one configuration: a value for each distribution and a choice from each list that is no
replicate. Its replicates (by default the train.seed list) are crossed with it, so that every
trial runs once per seed and the sampler and the pruner see the trial's mean over its seeds.
Random and Sobol draws depend only on the spec and search.seed, so they are drawn here, before any
run starts, and run like a grid's runs; TPE draws each trial from the results so far
(trainer.run.study). Optuna does the drawing; it is imported only by specs that search.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.core.strict import Invalid, at_least, below, build, setting, show, suggest
from trainer.spec.pruners import PRUNERS, Prune, kinds_text, settings_problems
from trainer.spec.schema import RANK_METRIC, UNSET_NOT_IDENTITY, beside_identity, rank_metric

METHODS = ("grid", "random", "sobol", "tpe")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
# Trials a search draws at most, as a grid's runs are bounded.
MAX_TRIALS = 10_000


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """Spec-level: how a sweep's configurations are drawn, and which of its runs are pruned. Not
    part of a run's configuration."""

    method: Literal["grid", "random", "sobol", "tpe"] = setting(
        "grid", doc="grid (every combination of the lists), random, sobol (quasi-random) or tpe"
    )
    trials: int | None = setting(
        None, at_least(1), doc="configurations to draw (grid: all of them); each runs once per replicate"
    )
    seed: int = setting(
        0,
        at_least(0),
        below(2**32),
        doc="the sampler's seed (0 to 2**32 - 1): the same spec draws the same trials",
    )
    metric: str | None = setting(
        None,
        rank_metric,
        doc="what tpe optimizes and pruning compares; default: the report's metric (the main "
        "evaluation loss)",
    )
    direction: Literal["minimize", "maximize"] | None = setting(
        None, doc="default: minimize a loss, mae or rmse or the distance; maximize accuracy"
    )
    prune: Prune = setting(
        Prune(),
        doc=kinds_text([f"{k} (the default)" if k == Prune().kind else k for k in PRUNERS])
        + ", with their settings",
    )
    replicates: tuple[str, ...] | None = setting(
        None,
        doc="swept keys crossed with every trial instead of searched (default: report.replicates, "
        "train.seed)",
    )


@dataclass(frozen=True)
class Distribution:
    """Where a searched setting's values are drawn from."""

    kind: str  # one of DISTRIBUTIONS
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def optuna(self) -> Any:
        from optuna import distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(self.options())
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log)
        return d.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def options(self) -> list[Any]:
        """A choice's values as Optuna draws them: themselves, or their positions where some value
        is no plain number, text, boolean or null (a section)."""
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in self.choices):
            return list(self.choices)
        return list(range(len(self.choices)))

    def value(self, drawn: Any) -> Any:
        """The setting's value for what Optuna drew."""
        if self.kind == "choice" and self.options() != list(self.choices):
            return self.choices[drawn]
        return drawn

    def drawn(self, value: Any) -> Any:
        """What Optuna draws for the setting's value (value's inverse)."""
        if self.kind == "choice" and self.options() != list(self.choices):
            return self.choices.index(value)
        return value

    def text(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(show(c) for c in self.choices)
        log = ", log" if self.log and self.kind == "int" else ""
        return f"{self.kind} [{show(self.low)}, {show(self.high)}]{log}"

    @property
    def numeric(self) -> bool:
        return self.kind != "choice"


def is_distribution(value: Any) -> bool:
    """Whether a swept value is written as a distribution (a mapping with one of its kinds)."""
    return isinstance(value, dict) and any(k in value for k in DISTRIBUTIONS)


def distribution(value: dict[str, Any]) -> Distribution:
    """A swept mapping read as a distribution; problems raise Invalid with keys below the sweep key."""
    kinds = [k for k in DISTRIBUTIONS if k in value]
    unknown = [k for k in value if k not in DISTRIBUTIONS and k != "log"]
    problems: list[tuple[str, str]] = [
        (
            str(k),
            f"unknown key{suggest(str(k), [*DISTRIBUTIONS, 'log'])}; a distribution is one of "
            + ", ".join(f"{{{d}: ...}}" for d in DISTRIBUTIONS),
        )
        for k in unknown
    ]
    if len(kinds) > 1:
        problems.append((kinds[1], f"give one distribution, not {' and '.join(kinds)}"))
    if problems:
        raise Invalid(problems)
    (kind,) = kinds
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise Invalid([("log", f"must be true or false, got {show(log)}")])
    if log and kind != "int":
        raise Invalid([("log", "is a setting of int; for real numbers use loguniform: [a, b]")])
    bounds = value[kind]
    if kind == "choice":
        if not isinstance(bounds, list) or not bounds:
            raise Invalid([(kind, f"must be a non-empty list of values, got {show(bounds)}")])
        seen: set[str] = set()
        for value in bounds:
            text = json.dumps(value, sort_keys=True, default=str)
            if text in seen:
                raise Invalid([(kind, f"{show(value)} is listed twice; each value is one choice")])
            seen.add(text)
        return Distribution(kind, choices=tuple(bounds))
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
    ):
        raise Invalid([(kind, f"must be two numbers [low, high], got {show(bounds)}")])
    low, high = bounds
    if not all(math.isfinite(b) for b in bounds):
        raise Invalid([(kind, f"the bounds must be finite numbers, got {show(bounds)}")])
    if kind == "int" and not all(isinstance(b, int) or float(b).is_integer() for b in bounds):
        raise Invalid([(kind, f"the bounds of an int are whole numbers, got {show(bounds)}")])
    if not low < high:
        raise Invalid([(kind, f"the low bound must be below the high one, got {show(bounds)}")])
    if (kind == "loguniform" or log) and low <= 0:
        raise Invalid([(kind, f"a log scale needs a low bound above 0, got {show(low)}")])
    if kind == "int":
        return Distribution(kind, int(low), int(high), log)
    return Distribution(kind, float(low), float(high), kind == "loguniform")


def read_search(raw: Any) -> SearchSettings:
    """The `search:` section; `prune` may be written as its kind alone (prune: asha). A pruner's
    settings are its own (trainer.spec.pruners): median takes startup_trials, asha reduction_factor."""
    if isinstance(raw, dict) and isinstance(raw.get("prune"), str):
        raw = {**raw, "prune": {"kind": raw["prune"]}}
    settings = build(SearchSettings, raw, "search")
    given = raw.get("prune") if isinstance(raw, dict) else None
    if isinstance(given, dict) and given:
        if "kind" not in given:
            raise Invalid([("search.prune.kind", f"missing; give {kinds_text()}")])
        problems = settings_problems(given, settings.prune.kind)
        if problems:
            raise Invalid(problems)
    return settings


@dataclass(frozen=True)
class Space:
    """What a search draws: distributions and the lists that are choices, by swept key, and the
    replicate lists crossed with each trial."""

    settings: SearchSettings
    dimensions: dict[str, Distribution]  # in the sweep's order
    replicates: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def trials(self) -> int:
        return self.settings.trials or 1

    def lines(self) -> list[str]:
        """The search space, one line a setting, as check and --dry-run print it."""
        s = self.settings
        prune = s.prune.kind if s.prune.kind != "none" else "no pruning"
        out = [f"search: {s.method}, {s.trials} trials, seed {s.seed}, {prune}"]
        out += [f"  {key}: {d.text()}" for key, d in self.dimensions.items()]
        out += [
            f"  {key}: replicates {', '.join(show(v) for v in vs)}" for key, vs in self.replicates.items()
        ]
        return out


def sampler(settings: SearchSettings, draw: tuple[int, int] | None = None) -> Any:
    """Optuna's sampler for a method (grid draws nothing: it enumerates). `draw` (the seed and the
    trial's number) seeds a TPE sampler for that one draw."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if settings.method == "sobol":
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=settings.seed)
        if settings.method == "tpe":
            # Trials still running count as if they had the worst value seen: parallel workers
            # then spread out instead of drawing the same point.
            seed = settings.seed if draw is None else (draw[0] * 1_000_003 + draw[1]) % 2**32
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        return optuna.samplers.RandomSampler(seed=settings.seed)


def draw(space: Space) -> list[dict[str, Any]]:
    """The trials of a random or Sobol search, in order: the same spec and seed draw the same ones,
    whoever draws them and with however many workers they run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=sampler(space.settings))
    dists = {key: d.optuna() for key, d in space.dimensions.items()}
    trials = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QMC on a categorical choice: drawn at random, as documented
        for _ in range(space.trials):
            trial = study.ask(dists)
            trials.append({key: d.value(trial.params[key]) for key, d in space.dimensions.items()})
            study.tell(trial, 0.0)  # the draws depend on no result
    return trials


def direction(settings: SearchSettings, higher_is_better: bool | None) -> str:
    if settings.direction is not None:
        return settings.direction
    return "maximize" if higher_is_better else "minimize"


def eval_tag(metric: str) -> str:
    """The evaluation value a metric is the final or best of (final/val/loss -> val/loss)."""
    assert RANK_METRIC.match(metric)
    return metric.partition("/")[2]


def study_configuration(config: dict[str, Any], drawn: Any, repeated: Any) -> dict[str, Any]:
    """A trial's configuration (as config.yaml holds it) as its study's identity has it: each
    setting by its dotted key, less those the search draws (a drawn kind: its whole section, whose
    other settings follow from the kind) and repeats over, and those no part of a run's identity
    (its description, trainer.spec.schema.NOT_IDENTITY, a setting added later while unset), and
    its name, which is its experiment's folder."""
    gone = [*drawn, *repeated, "description", "name"]
    gone += [key.removesuffix(".kind") for key in drawn if key.endswith(".kind")]
    flat = _flat(config)
    return {
        key: value
        for key, value in flat.items()
        if not any(key == g or key.startswith(g + ".") for g in gone)
        and not beside_identity(key)
        and not (key in UNSET_NOT_IDENTITY and value is None)
    }


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
