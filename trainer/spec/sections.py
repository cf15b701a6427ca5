"""A spec's sections read from its YAML data, each checked for shape with the file and line of
each problem: the sweep's lists and distributions, `search:` (with --set search.KEY=VALUE put in),
`report:` and `executor:`."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from trainer.kinds.registry import FAMILIES
from trainer.spec.overrides import DOTTED_KEY, Override, parent_key, put
from trainer.spec.schema import (
    Config,
    Invalid,
    ReportSettings,
    build,
    check_key,
    show,
    suggest,
    type_name,
)
from trainer.spec.search import (
    DISTRIBUTIONS,
    Distribution,
    SearchSettings,
    distribution,
    is_distribution,
    read_search,
)

# How a spec given as a mapping (trainer.sweep from Python) is named in messages.
MAPPING = "(the spec mapping)"


def _at(path: str, lines: dict[str, int], *keys: str) -> str:
    """'file:line' of the first of the keys the file has a line for; a spec given as a mapping has
    no lines, and is named alone."""
    for key in keys:
        if key in lines:
            return f"{path}:{lines[key]}"
    return path if path == MAPPING else f"{path}:?"


def search_section(
    raw: Any, lines: dict[str, int], path: str, problems: list[str], overrides: Sequence[Override] = ()
) -> SearchSettings | None:
    """The spec's `search:` section, with --set search.KEY=VALUE put in: how configurations are
    drawn and runs pruned."""
    raw = copy.deepcopy(raw) if isinstance(raw, dict) else raw
    origins = {}
    for o in overrides:
        if o.key == "search":
            raw = copy.deepcopy(o.value)
            origins["search"] = o.origin
            continue
        if not isinstance(raw, dict):
            break
        if isinstance(raw.get("prune"), str) and o.key.startswith("search.prune."):
            raw["prune"] = {"kind": raw["prune"]}
        problem = put(raw, o.key.partition(".")[2], copy.deepcopy(o.value))
        if problem:
            problems.append(f"{o.origin}: {problem}")
        origins[o.key] = o.origin
    try:
        return read_search(raw)
    except Invalid as invalid:
        for key, message in invalid.problems:
            where = next((origins[k] for k in (key, parent_key(key), "search") if k in origins), None)
            problems.append(f"{where or _at(path, lines, key, 'search')}: {key}: {message}")
        return None


def sweep_section(
    sweep: Any,
    lines: dict[str, int],
    path: str,
    problems: list[str],
    open_sections: set[str],
    space: dict[str, Distribution],
) -> dict[str, list[Any]]:
    """The sweep's lists by key; its distributions go into `space`."""
    where = _at(path, lines, "sweep")
    if not isinstance(sweep, dict):
        problems.append(
            f"{where}: sweep: must be a mapping of dotted keys to lists of values, "
            f"such as 'train.batch_size: [1, full]', {'got null' if sweep is None else 'got ' + type_name(sweep)}"
        )
        return {}
    grid: dict[str, list[Any]] = {}
    for key, values in sweep.items():
        at = f"{_at(path, lines, f'sweep.{key}', 'sweep')}: sweep.{key}"
        if not DOTTED_KEY.fullmatch(key):
            problems.append(f"{at}: {key!r} is not a dotted key such as optimizer.lr")
            continue
        if key == "name":
            problems.append(f"{at}: the experiment name cannot be swept; write one spec per name")
            continue
        problem = check_key(Config, key, open_sections)
        if problem:
            problems.append(f"{at}: {problem}")
            continue
        if is_distribution(values) and (key.endswith(".kind") or key in FAMILIES) and "choice" not in values:
            problems.append(
                f"{at}: a kind is chosen, not drawn from a range; list the kinds, or give {{choice: [...]}}"
            )
            continue
        if is_distribution(values):
            try:
                space[key] = distribution(values)
            except Invalid as invalid:
                problems.extend(
                    f"{_at(path, lines, f'sweep.{key}.{k}', f'sweep.{key}', 'sweep')}: sweep.{key}.{k}: {m}"
                    for k, m in invalid.problems
                )
            continue
        if isinstance(values, dict):
            keys = [str(k) for k in values]
            hint = suggest(keys[0], list(DISTRIBUTIONS)) if len(keys) == 1 else ""
            problems.append(
                f"{at}: must be a list of values or a distribution ({{uniform: [a, b]}}, {{loguniform: "
                f"[a, b]}}, {{int: [a, b]}}, {{choice: [...]}}), got a mapping with "
                f"{'the key ' + ', '.join(keys) if keys else 'no keys'}{hint}; to sweep a whole section, "
                f"list its versions, such as optimizer: [{{kind: sgd}}, {{kind: adam}}]"
            )
            continue
        if not isinstance(values, list):
            problems.append(
                f"{at}: must be a list of values, got {show(values)}; write [{show(values)}] "
                f"for a single value"
            )
            continue
        if not values:
            problems.append(f"{at}: the list of values is empty; give at least one value")
            continue
        distinct: list[Any] = []
        seen: set[str] = set()
        for value in values:
            if _identity(value) in seen:
                problems.append(f"{at}: {show(value)} is listed twice; each value gives one run")
            else:
                distinct.append(value)
                seen.add(_identity(value))
        grid[key] = distinct
    return grid


def report_section(
    raw: Any, lines: dict[str, int], path: str, problems: list[str], open_sections: set[str]
) -> ReportSettings:
    """The spec's `report:` section: replicate keys (each a setting of a run) and the ranking metric."""

    def at(key: str) -> str:
        return f"{_at(path, lines, key, 'report')}: {key}"

    try:
        report = build(ReportSettings, raw, "report")
    except Invalid as invalid:
        problems.extend(f"{at(key)}: {message}" for key, message in invalid.problems)
        return ReportSettings()
    for i, key in enumerate(report.replicates):
        problem = check_key(Config, key, open_sections) if DOTTED_KEY.fullmatch(key) else "not a dotted key"
        if problem:
            problems.append(f"{at(f'report.replicates[{i}]')}: {problem}")
    return report


def executor_section(
    raw: Any, lines: dict[str, int], path: str, problems: list[str]
) -> tuple[tuple[str, str, Any, str], ...]:
    """The spec's `executor:` section: per executor, the options its runs ask for (a Slurm job's
    time, CPUs, memory, GPUs), e.g. `executor: {slurm: {time: 120, gpus: 1}}`. Not part of a run's
    configuration: the same run on another executor is the same run."""
    if not isinstance(raw, dict):
        problems.append(
            f"{_at(path, lines, 'executor')}: executor: must be a mapping of executors to their options"
        )
        return ()
    found = []
    for name, options in raw.items():
        where = _at(path, lines, f"executor.{name}", "executor")
        if not isinstance(options, dict):
            problems.append(f"{where}: executor.{name}: must be a mapping of the {name} executor's options")
            continue
        for key, value in options.items():
            found.append(
                (str(name), str(key), value, _at(path, lines, f"executor.{name}.{key}", f"executor.{name}"))
            )
    return tuple(found)


def _identity(value: Any) -> str:
    """Equal for equal settings: 1 and 1.0 are the same value, true and 1 are not."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"number:{float(value)!r}"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{json.dumps(str(k))}:{_identity(v)}" for k, v in sorted(value.items(), key=str))
            + "}"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_identity(v) for v in value) + "]"
    return repr(value)
