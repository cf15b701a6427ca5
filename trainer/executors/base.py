"""The seam between the sweep driver and its executors.

The driver owns the sweep: what runs next, the claims, a search's next trials and its pruning
verdicts, stop -> grace -> kill, and the tally (trainer.executors.schedule). An executor only
says where a unit of work runs. It is a registry entry (a name in trainer.executors.EXECUTORS)
whose module holds an EXECUTOR with

- `Options`, a frozen dataclass of the options only this executor knows (Ray's address, Slurm's
  partition), which the command line (`--executor-opt KEY=VALUE`) and the API build strictly;
- `start(sweep, options)`, a context manager that gives a Backend for the sweep's life;
- optionally `require()`, which refuses in one sentence where the executor cannot run at all, and
  `places(logdir)`, where the log folder's runs are queued or running (trainer.executors.base.places).

A Backend runs the units it is given and says when each has ended:

- `parallel`: how many units it runs at once (the driver splits the batched engine's groups so as
  to keep that many busy), and `slots`: how many it takes before one has ended;
- `submit(unit, claims) -> handle`; `wait(timeout) -> [Ended]`, which returns early when the sweep
  is asked to stop (`sweep.stop.wake_fd`); `stop()`, which asks the units in progress to stop and
  record themselves as interrupted; `kill() -> [Ended]` once the grace period is over;
- optionally `adopted() -> {run folder: claim token}`: units still running from an earlier driver of
  the same sweep (a Slurm job outlives its driver), which the driver claims with their own token and
  does not submit again; such a unit's ended comes from `wait` with the handle `adopt(unit, claims)` gave.

A backend never reads the tally and never claims: the summaries it returns are the runs' own (a run
records itself), or `sweep.ended(...)` for runs that could not (killed, or their worker died).
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trainer.core import strict
from trainer.core.errors import UserError
from trainer.executors import EXECUTORS

if TYPE_CHECKING:
    from trainer.run.claims import Claim
    from trainer.run.job import Summary
    from trainer.spec.units import Unit


@dataclass
class Ended:
    """A unit that ended in a backend: the handle submit gave, and its runs' summaries."""

    handle: Any
    summaries: list[Summary]


class BackendFailed(Exception):
    """Nothing can run where the backend runs (no worker process can start, a node lacks packages):
    the sweep stops, and the units in progress are left as they were, to run once that is fixed."""


class Backend(Protocol):
    parallel: int
    slots: int

    def submit(self, unit: Unit, claims: dict[str, Claim]) -> Any: ...

    def wait(self, timeout: float) -> list[Ended]: ...

    def stop(self) -> None: ...

    def kill(self) -> list[Ended]: ...


class Executor(Protocol):
    Options: type

    def start(self, sweep: Any, options: Any) -> contextlib.AbstractContextManager[Backend]: ...


def executor(name: str) -> Executor:
    """The executor registered under `name`; a name that is none is refused with the names there are."""
    if name not in EXECUTORS:
        names = [repr(n) for n in EXECUTORS]
        raise UserError(
            f"executor: {name!r} is none; use {', '.join(names[:-1])} or {names[-1]}"
            f"{strict.suggest(name, list(EXECUTORS))}"
        )
    return importlib.import_module(EXECUTORS[name]).EXECUTOR


def options_of(name: str, given: dict[str, Any] | list[str] | None, label: str = "--executor-opt") -> Any:
    """The executor's Options, built strictly from a mapping, or from KEY=VALUE texts whose values
    are read as YAML (`--executor-opt time=60`); an unknown key or a wrong value is one sentence
    naming the executor and the key (`label`: where the options were given)."""
    return _build(name, _key_values(name, given), lambda key: f"{label} {key}")


def given_options(
    name: str, given: dict[str, Any] | list[str] | None, label: str = "--executor-opt"
) -> dict[str, Any]:
    """The options given on the command line (KEY=VALUE texts) or the API (a mapping), checked."""
    raw = _key_values(name, given)
    _build(name, raw, lambda key: f"{label} {key}")
    return raw


def spec_options(name: str, section: tuple[tuple[str, str, Any, str], ...], given: dict[str, Any]) -> Any:
    """The options a run's units ask of the executor: its spec's `executor:` section (a RunPlan's
    `executor`) for this executor, under the ones the caller gave. A section naming no executor,
    or an option that is none or wrong, is one sentence naming the spec's line."""
    raw: dict[str, Any] = {}
    lines: dict[str, str] = {}
    for executor_name, key, value, where in section:
        if executor_name not in EXECUTORS:
            raise UserError(
                f"{where}: executor.{executor_name}: no executor of that name"
                f"{strict.suggest(executor_name, list(EXECUTORS))}; the executors: {', '.join(EXECUTORS)}"
            )
        if executor_name == name and key not in given:
            raw[key], lines[key] = value, f"{where}: executor.{name}.{key}"
    return _build(name, {**raw, **given}, lambda key: lines.get(key, f"--executor-opt {key}"))


def _build(name: str, raw: dict[str, Any], where: Any) -> Any:
    cls = executor(name).Options
    try:
        return strict.build(cls, raw, "")
    except strict.Invalid as invalid:
        key, problem = invalid.problems[0]
        known = ", ".join(f.name for f in _fields(cls)) or "none"
        raise UserError(f"{where(key)}: {problem} (the {name} executor's options: {known})") from None


def _key_values(name: str, given: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    import yaml

    if given is None:
        return {}
    if isinstance(given, dict):
        return dict(given)
    raw: dict[str, Any] = {}
    for text in given:
        key, sep, value = str(text).partition("=")
        if not sep or not key.strip():
            raise UserError(f"--executor-opt: {text!r} is no KEY=VALUE (an option of the {name} executor)")
        try:
            raw[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raw[key.strip()] = value
    return raw


def _fields(cls: type) -> list[Any]:
    import dataclasses

    return list(dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else []


def require(name: str) -> None:
    """Refuse, in one sentence, an executor that cannot run here (its library is not installed)."""
    check = getattr(executor(name), "require", None)
    if check is not None:
        check()


def places(logdir: Path) -> dict[str, str]:
    """Run folder -> where an executor has it queued or running (a Slurm job), for `status`: asked of
    every executor that keeps such a ledger in the log folder; empty where none does."""
    found: dict[str, str] = {}
    for name in EXECUTORS:
        look = getattr(executor(name), "places", None)
        if look is not None:
            with contextlib.suppress(OSError):
                found.update(look(logdir))
    return found
