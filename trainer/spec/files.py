"""Reading experiment spec files: safe YAML, line numbers, the sweep grid and --set overrides."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.core import guards
from trainer.core.errors import SpecError
from trainer.core.strict import is_import_path
from trainer.kinds.registry import FAMILIES
from trainer.spec.schema import (
    EXPERIMENT_NAME,
    Config,
    Invalid,
    ReportSettings,
    build,
    check_key,
    show,
    suggest,
    type_name,
)

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
MAX_VALUES = 100_000
SPEC_LEVEL = ("sweep", "report")  # top-level keys that are no setting of a run
MAX_DEPTH = 40
PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
MERGE_TAG = "tag:yaml.org,2002:merge"
EXAMPLE = "a spec is a mapping of settings such as 'name: my-experiment'"


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
        """Keys changed by --set that the sweep does not vary; they join the run names (but for the
        engine, which trains the same run either way)."""
        return list(
            dict.fromkeys(
                o.key for o in self.overrides if o.key not in self.sweep and o.key != "train.engine"
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
        if key == "name":
            return f"{self.path} (it has no 'name:', so the file name is used)"
        return self.path


def parent_key(key: str) -> str:
    """'a.b[2]' -> 'a.b' -> 'a' -> ''."""
    if key.endswith("]"):
        return key[: key.rindex("[")]
    return key.rpartition(".")[0]


# --- YAML -------------------------------------------------------------------------------------


class _SpecLoader(yaml.SafeLoader):
    """Safe loading of plain data: 1e-3 is a number, 2024-01-01 stays text."""


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.1 reads 1e-3 (no dot) as a string; every spec writer means the number.
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse(text: str, shown: str) -> tuple[yaml.Node | None, Any, dict[str, int]]:
    """Parse YAML text to (node, data, dotted key -> line); problems raise SpecError."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[str, int] = {}
        problems: list[str] = []
        if node is not None:
            _walk(node, "", lines, problems, shown, [0])
        if problems:
            raise SpecError(problems)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise SpecError(_syntax_error(exc, shown))
    except yaml.YAMLError as exc:
        raise SpecError(f"{shown}: YAML error: {str(exc).splitlines()[0]}")
    except RecursionError:
        raise SpecError(f"{shown}: the YAML is nested too deeply to be a spec")
    finally:
        loader.dispose()
    return node, data, lines


def _syntax_error(exc: yaml.MarkedYAMLError, shown: str) -> str:
    """'file:3: YAML syntax error: expected ',' or '}', but got '<stream end>' (while parsing a flow mapping on line 2)'."""
    mark = exc.problem_mark or exc.context_mark
    line = f":{mark.line + 1}" if mark else ""
    problem, context = exc.problem or "", exc.context or ""
    if problem.startswith("but ") and context:
        what = f"{context}, {problem}"
    elif context and exc.context_mark and exc.context_mark is not mark:
        what = f"{problem} ({context} on line {exc.context_mark.line + 1})"
    else:
        what = problem or context or "cannot be parsed"
    if "'\\t'" in problem:
        what += "; YAML indents with spaces, not tabs"
    elif "<block" in problem:
        what += "; check the indentation of this line and the one before"
    return f"{shown}{line}: YAML syntax error: {what}"


def _tag_name(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _walk(
    node: yaml.Node,
    prefix: str,
    lines: dict[str, int],
    problems: list[str],
    shown: str,
    count: list[int],
    depth: int = 0,
) -> None:
    line = node.start_mark.line + 1
    count[0] += 1
    if count[0] > MAX_VALUES or depth > MAX_DEPTH:
        what = (
            f"expands to more than {MAX_VALUES:,} values in all (long lists, or anchors and aliases that "
            f"repeat a part)"
            if count[0] > MAX_VALUES
            else f"is nested more than {MAX_DEPTH} levels deep (through anchors and aliases?)"
        )
        raise SpecError(f"{shown}:{line}: the YAML {what}; a spec holds a few settings")
    if node.tag not in PLAIN_TAGS:
        # Refused before anything is constructed, so no tag can run code or build objects.
        problems.append(
            f"{shown}:{line}: the YAML tag {_tag_name(node.tag)} is not allowed; specs hold plain "
            f"data (mappings, lists, numbers, strings, true/false)"
        )
        return
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        merged: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == MERGE_TAG:
                # '<<: *defaults' copies keys in; the ones written here win, so they are recorded after.
                _walk(value_node, prefix, merged, problems, shown, count, depth + 1)
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                problems.append(f"{shown}:{key_line}: {prefix or '(top level)'}: {_key_problem(key_node)}")
                continue
            key = f"{prefix}.{key_node.value}" if prefix else key_node.value
            if key_node.value in seen:
                problems.append(
                    f"{shown}:{key_line}: {key}: duplicate key (first given on line {seen[key_node.value]})"
                )
            seen[key_node.value] = key_line
            lines[key] = key_line
            # Sweep keys are dotted names themselves; their values stay one level deep.
            _walk(value_node, key, lines, problems, shown, count, depth + 1)
        for key, merged_line in merged.items():
            lines.setdefault(key, merged_line)
    elif isinstance(node, yaml.SequenceNode):
        if len(node.value) > MAX_VALUES:
            raise SpecError(
                f"{shown}:{line}: {prefix or '(top level)'}: the list holds {len(node.value):,} values, "
                f"more than the {MAX_VALUES:,} a spec may hold"
            )
        for i, item in enumerate(node.value):
            key = f"{prefix}[{i}]"
            lines[key] = item.start_mark.line + 1
            _walk(item, key, lines, problems, shown, count, depth + 1)


def _key_problem(key_node: yaml.Node) -> str:
    if not isinstance(key_node, yaml.ScalarNode):
        return f"a key must be text, got a {'list' if isinstance(key_node, yaml.SequenceNode) else 'mapping'}"
    read_as = {"int": "a whole number", "float": "a number", "bool": "true or false", "null": "null"}.get(
        key_node.tag.removeprefix("tag:yaml.org,2002:"), f"the tag {_tag_name(key_node.tag)}"
    )
    return f"the key {key_node.value!r} is read as {read_as}, not text; quote it: '{key_node.value}'"


def read_yaml(path: Path, shown: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a spec file safely: its top-level mapping, and a map of dotted keys to line numbers."""
    if (refused := guards.input_problem(path, "spec")) is not None:
        raise SpecError(f"{shown}: {refused}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        siblings = sorted(p.name for p in path.parent.glob("*.y*ml")) if path.parent.is_dir() else []
        raise SpecError(f"{shown}: no such file{suggest(path.name, siblings)}")
    except IsADirectoryError:
        raise SpecError(f"{shown}: is a folder, not a spec file")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{shown}: not a UTF-8 text file ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        raise SpecError(f"{shown}: cannot be read: {exc.strerror}")
    if not text.strip():
        raise SpecError(f"{shown}: the file is empty; {EXAMPLE}")
    node, data, lines = _parse(text, shown)
    if node is None:
        raise SpecError(f"{shown}: the file holds only comments; {EXAMPLE}")
    if not isinstance(data, dict):
        raise SpecError(
            f"{shown}:{node.start_mark.line + 1}: the file holds {type_name(data)}"
            f"{'' if data is None else ' ' + show(data)}, not a mapping; {EXAMPLE}"
        )
    return data, lines


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
        _, parsed, _ = _parse(value, shown)
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
        problem = check_key(Config, key, open_sections)
        if problem:
            problems.append(f"--set {text}: {problem}")
            continue
        overrides.append(Override(text, key, value))
    return overrides, problems


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


def load_spec(path: str, overrides: Sequence[str | Override] = ()) -> Spec:
    """Read one spec file and take in --set overrides.

    A file that cannot be read as a mapping raises SpecError; other problems are kept in
    Spec.problems, so that they are reported together with those found in its runs.
    """
    data, lines = read_yaml(Path(path), path)
    base = {k: v for k, v in data.items() if k not in SPEC_LEVEL}
    base.setdefault("name", Path(path).stem)
    problems: list[str] = []
    open_sections = user_sections(data)
    sweep = _read_sweep(data.get("sweep"), lines, path, problems, open_sections) if "sweep" in data else {}
    report = _read_report(data.get("report", {}), lines, path, problems, open_sections)
    texts = [o for o in overrides if isinstance(o, str)]
    parsed, override_problems = parse_overrides(texts, open_sections)
    problems.extend(override_problems)
    parsed += [o for o in overrides if isinstance(o, Override)]
    spec = Spec(
        path=path,
        folder=Path(path).parent,
        base=base,
        sweep=sweep,
        lines=lines,
        problems=problems,
        open_sections=open_sections,
        report=report,
    )
    for override in parsed:
        if override.key in spec.sweep:
            spec.sweep[override.key] = [override.value]  # pinning a swept key keeps its place in run names
        spec.overrides.append(override)
    return spec


def _read_sweep(
    sweep: Any, lines: dict[str, int], path: str, problems: list[str], open_sections: set[str]
) -> dict[str, list[Any]]:
    where = f"{path}:{lines.get('sweep', '?')}"
    if not isinstance(sweep, dict):
        problems.append(
            f"{where}: sweep: must be a mapping of dotted keys to lists of values, "
            f"such as 'train.batch_size: [1, full]', {'got null' if sweep is None else 'got ' + type_name(sweep)}"
        )
        return {}
    grid: dict[str, list[Any]] = {}
    for key, values in sweep.items():
        at = f"{path}:{lines.get(f'sweep.{key}', lines.get('sweep', '?'))}: sweep.{key}"
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
        if isinstance(values, dict):
            problems.append(
                f"{at}: must be a list of values, got a mapping; to sweep a whole section, list "
                f"its versions, such as optimizer: [{{kind: sgd}}, {{kind: adam}}]"
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
        return f"{path}:{lines.get(key, lines.get('report', '?'))}: {key}"

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
