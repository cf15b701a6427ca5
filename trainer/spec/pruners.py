"""The pruner kinds of a search (`search.prune.kind`), one entry each in PRUNERS.

An entry holds what one kind is: the settings of `search.prune` it reads beside its kind, how its
Optuna pruner is built, the evaluation steps at which it judges a run (the verdict steps: the
sweep tells the study a trial's value only there), and so what of it goes into a study's identity
(a study pruned otherwise is another study). A new pruner kind is one entry; the `search.prune`
section, its reference text and its error messages name the kinds from here. Optuna is imported
only when a pruner is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from trainer.core.strict import Invalid, at_least, setting


@dataclass(frozen=True)
class PrunerKind:
    """One pruner kind: its name, its reference text, the settings of search.prune it takes beside
    kind, its Optuna pruner (from the section and the most steps a run of the search trains, None
    where not known), and its verdict steps (from the section, a run's steps and eval.every)."""

    name: str
    doc: str
    settings: tuple[str, ...]
    build: Callable[[Any, int | None], Any]
    judges: Callable[[Any, int, int], tuple[int, ...]]

    def identity(self, prune: Any) -> dict[str, Any]:
        """What of the section decides a study's verdicts: the kind and its own settings."""
        return {"kind": self.name, **{key: getattr(prune, key) for key in self.settings}}

    def verdict_steps(self, prune: Any, steps: int, every: int) -> tuple[int, ...]:
        """The evaluation steps (0, every, 2 * every, ... below `steps`) at which it may stop a run."""
        return self.judges(prune, steps, every)

    @property
    def text(self) -> str:
        return f"{self.name} ({self.doc})" if self.doc else self.name


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def _never(prune: Any, steps: int, every: int) -> tuple[int, ...]:
    return ()


def _from_min_steps(prune: Any, steps: int, every: int) -> tuple[int, ...]:
    """Every evaluation from min_steps on."""
    return tuple(s for s in range(0, steps, every) if s >= prune.min_steps)


def _at_rungs(prune: Any, steps: int, every: int) -> tuple[int, ...]:
    """The first evaluation at or past each rung: min_steps, times reduction_factor, times it
    again, ... below the run's end."""
    evaluations = range(0, steps, every)
    rungs, rung = [], prune.min_steps
    while rung < steps:
        rungs.append(rung)
        rung *= prune.reduction_factor
    return tuple(
        sorted({s for r in rungs if (s := next((e for e in evaluations if e >= r), None)) is not None})
    )


def _nop(prune: Any, steps: int | None) -> Any:
    return _optuna().pruners.NopPruner()


def _median(prune: Any, steps: int | None) -> Any:
    return _optuna().pruners.MedianPruner(
        n_startup_trials=prune.startup_trials, n_warmup_steps=prune.min_steps
    )


def _asha(prune: Any, steps: int | None) -> Any:
    return _optuna().pruners.SuccessiveHalvingPruner(
        min_resource=prune.min_steps, reduction_factor=prune.reduction_factor
    )


def _hyperband(prune: Any, steps: int | None) -> Any:
    return _optuna().pruners.HyperbandPruner(
        min_resource=prune.min_steps,
        max_resource=steps if steps is not None else "auto",
        reduction_factor=prune.reduction_factor,
    )


PRUNERS: dict[str, PrunerKind] = {
    kind.name: kind
    for kind in (
        PrunerKind("none", "", (), _nop, _never),
        PrunerKind(
            "median", "Optuna's MedianPruner", ("min_steps", "startup_trials"), _median, _from_min_steps
        ),
        PrunerKind(
            "asha", "asynchronous successive halving", ("min_steps", "reduction_factor"), _asha, _at_rungs
        ),
        # Hyperband's brackets have rungs of their own: every evaluation from min_steps may judge.
        PrunerKind(
            "hyperband",
            "several halvings at once, from later first rungs too",
            ("min_steps", "reduction_factor"),
            _hyperband,
            _from_min_steps,
        ),
    )
}
PrunerName = Literal[tuple(PRUNERS)]  # the kinds search.prune.kind takes, from the registry


def kinds_text(names: list[str] | None = None) -> str:
    """Kinds as a sentence lists them: none, median, asha or hyperband."""
    names = list(PRUNERS) if names is None else names
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def pruner_kind(name: str) -> PrunerKind:
    """The registry entry of a kind; an unknown one raises Invalid at search.prune.kind."""
    if name not in PRUNERS:
        raise Invalid([("search.prune.kind", f"unknown pruner {name!r}; give {kinds_text()}")])
    return PRUNERS[name]


@dataclass(frozen=True, kw_only=True)
class Prune:
    """Stop runs whose evaluations are behind the other trials' at the same step."""

    kind: PrunerName = setting("none", doc="; ".join(kind.text for kind in PRUNERS.values()))
    min_steps: int = setting(
        100,
        at_least(1),
        doc="steps every trial trains before it may be pruned (asha: the first rung; hyperband: the earliest)",
    )
    reduction_factor: int = setting(
        3, at_least(2), doc="asha and hyperband: one trial in this many goes on at each rung"
    )
    startup_trials: int = setting(5, at_least(0), doc="median: trials that complete before any is pruned")


def settings_problems(given: dict[str, Any], kind: str) -> list[tuple[str, str]]:
    """The keys of a written search.prune section that are settings of other kinds than its own."""
    pruning = [name for name, entry in PRUNERS.items() if entry.settings]
    problems = []
    for key in given:
        holders = [name for name, entry in PRUNERS.items() if key in entry.settings]
        if not holders or key in PRUNERS[kind].settings:
            continue
        whose = "a pruner" if holders == pruning else " and ".join(holders)
        problems.append((f"search.prune.{key}", f"is a setting of {whose}, and search.prune.kind is {kind}"))
    return problems
