"""Reading experiment spec files: the spec, its sections and its --set overrides put together,
and one combination of its swept values made a run's configuration (the YAML itself, with line
numbers, is read by trainer.spec.yaml_lines; each section by trainer.spec.sections; each --set by
trainer.spec.overrides)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.core.errors import SpecError
from trainer.core.strict import is_import_path
from trainer.kinds.registry import FAMILIES
from trainer.spec.overrides import Override, parent_key, parse_overrides, put, spec_level
from trainer.spec.schema import EXPERIMENT_NAME, Invalid, ReportSettings, beside_identity
from trainer.spec.search import Distribution, SearchSettings
from trainer.spec.sections import MAPPING, executor_section, report_section, search_section, sweep_section
from trainer.spec.yaml_lines import read_yaml

__all__ = [
    "EXPERIMENT_NAME",
    "MAPPING",
    "Override",
    "Spec",
    "combine",
    "load_spec",
    "parse_overrides",
    "put",
    "read_yaml",
]

SPEC_LEVEL = ("sweep", "report", "search", "executor")  # top-level keys that are no setting of a run


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


# --- overrides --------------------------------------------------------------------------------


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


# --- specs ------------------------------------------------------------------------------------


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
        sweep_section(data.get("sweep"), lines, path, problems, open_sections, space)
        if "sweep" in data
        else {}
    )
    report = report_section(data.get("report", {}), lines, path, problems, open_sections)
    executor = executor_section(data.get("executor", {}), lines, path, problems)
    texts = [o for o in overrides if isinstance(o, str)]
    parsed, override_problems = parse_overrides(texts, open_sections)
    problems.extend(override_problems)
    parsed += [o for o in overrides if isinstance(o, Override)]
    searching = [o for o in parsed if spec_level(o.key)]  # --set search.trials=100
    parsed = [o for o in parsed if not spec_level(o.key)]
    search = None
    if "search" in data or searching:
        search = search_section(data.get("search", {}), lines, path, problems, searching)
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
