"""Reading experiment spec files: the spec, its sweep grid and report sections, and --set overrides
(the YAML itself, with line numbers, is read by trainer.spec.yaml_lines)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.core.errors import SpecError
from trainer.core.strict import is_import_path
from trainer.kinds.registry import FAMILIES
from trainer.spec.schema import (
    EXPERIMENT_NAME,
    Config,
    Invalid,
    ReportSettings,
    beside_identity,
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
from trainer.spec.yaml_lines import parse_yaml, read_yaml

__all__ = [
    "EXPERIMENT_NAME",
    "Override",
    "Spec",
    "combine",
    "load_spec",
    "parse_override",
    "parse_overrides",
    "put",
    "read_yaml",
]

DOTTED_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Anchors and aliases can make a short file stand for an enormous one; specs never need that many values.
SPEC_LEVEL = ("sweep", "report", "search", "executor")  # top-level keys that are no setting of a run


@dataclass(frozen=True)
class Override:
    """One --set KEY=VALUE, parsed."""

    text: str
    key: str
    value: Any

    @property
    def origin(self) -> str:
        return f"--set {self.text}"


@dataclass
class Spec:
    """One spec file, read and checked for shape; runs are expanded by trainer.spec.sweep."""

    path: str  # as the user gave it, for messages
    folder: Path  # relative data paths are taken from here
    base: dict[str, Any]  # the configuration as written, without its sweep
    sweep: dict[str, list[Any]]  # dotted key -> values, in the order written
    lines: dict[str, int]  # dotted key -> line in the file
    overrides: list[Override] = field(default_factory=list)  # --set, applied on top of the sweep
    open_sections: set[str] = field(default_factory=set)  # sections whose kind is user code
    report: ReportSettings = ReportSettings()  # how `report` groups and ranks the runs
    space: dict[str, Distribution] = field(default_factory=dict)  # swept keys drawn from a distribution
    search: SearchSettings | None = None  # the `search:` section, where there is one (and it is valid)
    search_given: bool = False  # the spec has a `search:` section
    # The `executor:` section: (executor, option, value, 'file:line') for each option given there,
    # checked by the executor the sweep runs on (the spec layer knows none).
    executor: tuple[tuple[str, str, Any, str], ...] = ()
    order: list[str] = field(default_factory=list)  # the swept keys, lists and distributions, as written
    problems: list[str] = field(default_factory=list)  # found while reading; reported with the runs'

    @property
    def name(self) -> Any:
        named = [o.value for o in self.overrides if o.key == "name"]
        return named[-1] if named else self.base["name"]

    @property
    def origins(self) -> dict[str, str]:
        """Dotted key -> the --set that gave its value."""
        return {o.key: o.origin for o in self.overrides}

    @property
    def overridden(self) -> list[str]:
        """Keys changed by --set that the sweep does not vary; they join the run names (but for
        settings that change nothing the run computes, such as the engine)."""
        return list(
            dict.fromkeys(
                o.key for o in self.overrides if o.key not in self.sweep and not beside_identity(o.key)
            )
        )

    def where(self, key: str) -> str:
        """'file:line' (or the --set that gave it) for the nearest known ancestor of a dotted key."""
        origins = self.origins
        probe = key
        while probe:
            if probe in origins:
                return origins[probe]
            if probe in self.lines:
                return f"{self.path}:{self.lines[probe]}"
            probe = parent_key(probe)
        if key == "name" and self.path != MAPPING:
            return f"{self.path} (it has no 'name:', so the file name is used)"
        return self.path


def _at(path: str, lines: dict[str, int], *keys: str) -> str:
    """'file:line' of the first of the keys the file has a line for; a spec given as a mapping has
    no lines, and is named alone."""
    for key in keys:
        if key in lines:
            return f"{path}:{lines[key]}"
    return path if path == MAPPING else f"{path}:?"


def parent_key(key: str) -> str:
    """'a.b[2]' -> 'a.b' -> 'a' -> ''."""
    if key.endswith("]"):
        return key[: key.rindex("[")]
    return key.rpartition(".")[0]


# --- overrides --------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """'optimizer.lr=0.05' -> ('optimizer.lr', 0.05); the value is read as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set {text}: expected KEY=VALUE, such as --set optimizer.lr=0.05")
    if not DOTTED_KEY.fullmatch(key):
        raise SpecError(f"--set {text}: {key!r} is not a dotted key such as optimizer.lr")
    if not value.strip():
        raise SpecError(f"--set {text}: no value after '='; to set an empty text, write {key}=\"\"")
    shown = f"--set {text}"
    try:
        _, parsed, _ = parse_yaml(value, shown)
    except SpecError as exc:
        # The value's own 'line 1' means nothing on a command line: say which value instead.
        raise SpecError(
            [
                f"{shown}: the value {value!r}: " + re.sub(r"^:\d+: |^: ", "", p[len(shown) :])
                for p in exc.problems
            ]
        )
    return key, parsed


def user_sections(data: dict[str, Any]) -> set[str]:
    """The sections whose kind a spec names as user code (in the file or in its sweep): their
    keys are only known once that code is imported."""
    sweep = data.get("sweep") if isinstance(data.get("sweep"), dict) else {}

    def listed(key: str) -> list[Any]:
        values = sweep.get(key)
        return values if isinstance(values, list) else []

    found = set()
    for section in FAMILIES:
        versions = [data.get(section), *listed(section)]  # the section as written, and as swept
        kinds = [v.get("kind") for v in versions if isinstance(v, dict)] + listed(f"{section}.kind")
        if any(is_import_path(k) for k in kinds):
            found.add(section)
    return found


def parse_overrides(
    texts: Sequence[str], open_sections: set[str] | frozenset[str] = frozenset(FAMILIES)
) -> tuple[list[Override], list[str]]:
    """Every --set parsed and its key checked against the schema: (overrides, problems).

    Keys below `open_sections` (by default every section with kinds, since any spec may name user
    code there) are checked once each spec is built."""
    overrides: list[Override] = []
    problems: list[str] = []
    for text in texts:
        try:
            key, value = parse_override(text)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        problem = None if spec_level(key) else check_key(Config, key, open_sections)
        if problem:
            problems.append(f"--set {text}: {problem}")
            continue
        overrides.append(Override(text, key, value))
    return overrides, problems


def spec_level(key: str) -> bool:
    """Whether a --set key is under the search: section (checked when that section is read)."""
    return key == "search" or key.startswith("search.")


def put(tree: dict[str, Any], key: str, value: Any) -> str | None:
    """Set a dotted key in nested mappings, making sections as needed; a problem or None."""
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return f"{'.'.join(parts[: depth + 1])} is a value ({show(child)}), not a section"
        node = child
    node[parts[-1]] = value
    return None


# --- specs ------------------------------------------------------------------------------------


# How a spec given as a mapping (trainer.sweep from Python) is named in messages.
MAPPING = "(the spec mapping)"


def load_spec(path: str, overrides: Sequence[str | Override] = (), data: Any = None) -> Spec:
    """Read one spec file (or take `data`, a spec given as a mapping, whose user code and files
    are looked up from the current folder) and take in --set overrides.

    A file that cannot be read as a mapping raises SpecError; other problems are kept in
    Spec.problems, so that they are reported together with those found in its runs.
    """
    folder = Path(path).parent
    if data is None:
        data, lines = read_yaml(Path(path), path)
    else:
        if not isinstance(data, dict):
            raise SpecError(f"{path}: must be a mapping of sections, got {type(data).__name__}")
        if "name" not in data:
            raise SpecError(f"{path}: name: missing; a spec given as a mapping names its experiment")
        data, lines, folder = copy.deepcopy(dict(data)), {}, Path.cwd()
    base = {k: v for k, v in data.items() if k not in SPEC_LEVEL}
    base.setdefault("name", Path(path).stem)
    problems: list[str] = []
    open_sections = user_sections(data)
    space: dict[str, Distribution] = {}
    sweep = (
        _read_sweep(data.get("sweep"), lines, path, problems, open_sections, space) if "sweep" in data else {}
    )
    report = _read_report(data.get("report", {}), lines, path, problems, open_sections)
    executor = _read_executor(data.get("executor", {}), lines, path, problems)
    texts = [o for o in overrides if isinstance(o, str)]
    parsed, override_problems = parse_overrides(texts, open_sections)
    problems.extend(override_problems)
    parsed += [o for o in overrides if isinstance(o, Override)]
    searching = [o for o in parsed if spec_level(o.key)]  # --set search.trials=100
    parsed = [o for o in parsed if not spec_level(o.key)]
    search = None
    if "search" in data or searching:
        search = _read_search(data.get("search", {}), lines, path, problems, searching)
    spec = Spec(
        path=path,
        folder=folder,
        base=base,
        sweep=sweep,
        lines=lines,
        problems=problems,
        open_sections=open_sections,
        report=report,
        space=space,
        search=search,
        search_given="search" in data,
        executor=executor,
        order=[k for k in (data.get("sweep") or {}) if k in sweep or k in space]
        if isinstance(data.get("sweep"), dict)
        else [],
    )
    for override in parsed:
        if override.key in spec.space:  # a searched key pinned: one choice, in its place in run names
            spec.space.pop(override.key)
            spec.sweep[override.key] = [override.value]
            spec.sweep = {k: spec.sweep[k] for k in _swept_order(data.get("sweep"), spec.sweep)}
        elif override.key in spec.sweep:
            spec.sweep[override.key] = [override.value]  # pinning a swept key keeps its place in run names
        spec.overrides.append(override)
    return spec


def _swept_order(written: Any, sweep: dict[str, list[Any]]) -> list[str]:
    order = list(written) if isinstance(written, dict) else []
    return [k for k in order if k in sweep] + [k for k in sweep if k not in order]


def _read_search(
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


def _read_sweep(
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


def _read_report(
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


def _read_executor(
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


def combine(spec: Spec, values: dict[str, Any]) -> dict[str, Any]:
    """The spec's configuration with one combination of swept values and the --set overrides put in.

    Shallower keys go in first, so that 'optimizer.lr' refines a swept or overridden 'optimizer'
    rather than being replaced by it; at the same depth an override wins over the sweep.
    """
    raw = copy.deepcopy(spec.base)
    changes = list(values.items()) + [(o.key, o.value) for o in spec.overrides if o.key not in spec.sweep]
    problems = []
    for key, value in sorted(changes, key=lambda change: change[0].count(".")):
        problem = put(raw, key, copy.deepcopy(value))
        if problem:
            problems.append((key, problem))
    if problems:
        raise Invalid(problems)
    return raw
