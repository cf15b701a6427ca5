"""Reading experiment spec files: safe YAML, line numbers, the sweep grid and --set overrides."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import SpecError

EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Spec:
    """One spec file, read and checked for shape; runs are expanded by trainer.sweep."""

    path: str                                   # as the user gave it, for messages
    folder: Path                                # relative data paths are taken from here
    base: dict[str, Any]                        # the configuration without its sweep
    sweep: dict[str, list[Any]]                 # dotted key -> values, in the order written
    lines: dict[str, int]                       # dotted key -> line in the file
    origins: dict[str, str] = field(default_factory=dict)  # dotted key -> '--set k=v' for overrides
    overridden: list[str] = field(default_factory=list)     # non-swept keys changed by --set

    @property
    def name(self) -> str:
        return self.base["name"]

    def where(self, key: str) -> str:
        """'file:line' (or the --set that gave it) for the nearest known ancestor of a dotted key."""
        probe = key
        while probe:
            if probe in self.origins:
                return self.origins[probe]
            if probe in self.lines:
                return f"{self.path}:{self.lines[probe]}"
            probe = _parent(probe)
        return self.path


def _parent(key: str) -> str:
    key = re.sub(r"\[\d+\]$", "", key) if key.endswith("]") else key
    return key.rpartition(".")[0] if "." in key else ""


class _SpecLoader(yaml.SafeLoader):
    """Safe loading only: tags that would construct Python objects are refused."""


def read_yaml(path: Path, shown: str) -> tuple[Any, dict[str, int]]:
    """Parse a YAML file safely; return the data and a map of dotted keys to line numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{shown}: no such file")
    except IsADirectoryError:
        raise SpecError(f"{shown}: is a folder, not a spec file")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{shown}: not a UTF-8 text file ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        raise SpecError(f"{shown}: cannot be read: {exc.strerror}")
    if not text.strip():
        raise SpecError(f"{shown}: the file is empty; a spec is a mapping such as 'name: my-experiment'")
    try:
        node = yaml.compose(text, Loader=_SpecLoader)
        data = yaml.load(text, Loader=_SpecLoader)
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        tag = _tag_of(exc)
        raise SpecError(f"{shown}:{line}: the YAML tag {tag} is not allowed; "
                        f"specs hold plain data (mappings, lists, numbers, strings)")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{mark.line + 1}" if mark else "?"
        what = exc.problem or exc.context or "cannot be parsed"
        raise SpecError(f"{shown}:{line}: YAML syntax error: {what}")
    except yaml.YAMLError as exc:
        raise SpecError(f"{shown}: YAML error: {exc}")
    lines: dict[str, int] = {}
    problems: list[str] = []
    _walk(node, "", lines, problems, shown)
    if problems:
        raise SpecError(problems)
    return data, lines


def _tag_of(exc: yaml.constructor.ConstructorError) -> str:
    found = re.search(r"tag '([^']+)'", str(exc.problem))
    tag = found.group(1) if found else "?"
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _walk(node: yaml.Node | None, prefix: str, lines: dict[str, int], problems: list[str], shown: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                problems.append(f"{shown}:{line}: key {key_node.value!r} must be a string")
                continue
            key = f"{prefix}.{key_node.value}" if prefix else key_node.value
            if key_node.value in seen:
                problems.append(f"{shown}:{line}: {key}: duplicate key (first given on line {seen[key_node.value]})")
            seen[key_node.value] = line
            lines[key] = line
            # Sweep keys are dotted names themselves; their values stay one level deep.
            _walk(value_node, key, lines, problems, shown)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix}[{i}]"
            lines[key] = item.start_mark.line + 1
            _walk(item, key, lines, problems, shown)


def parse_override(text: str) -> tuple[str, Any]:
    """'optimizer.lr=0.05' -> ('optimizer.lr', 0.05); the value is read as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set {text}: expected KEY=VALUE, such as --set optimizer.lr=0.05")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise SpecError(f"--set {text}: {key!r} is not a dotted key such as optimizer.lr")
    try:
        parsed = yaml.load(value, Loader=_SpecLoader) if value.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"--set {text}: the value {value!r} cannot be parsed: {problem}")
    if value.strip() == "":
        raise SpecError(f"--set {text}: no value given after '='")
    return key, parsed


def put(tree: dict[str, Any], key: str, value: Any) -> str | None:
    """Set a dotted key in nested mappings, making sections as needed; a problem or None."""
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return f"{'.'.join(parts[:depth + 1])} is a value ({child!r}), not a section"
        node = child
    node[parts[-1]] = value
    return None


def load_spec(path: str, overrides: list[str] = ()) -> Spec:
    """Read one spec file and apply --set overrides; shape errors raise SpecError."""
    data, lines = read_yaml(Path(path), path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1: a spec must be a mapping of sections (name, data, model, ...), "
                        f"got {type(data).__name__} {data!r:.60}")
    base = {k: v for k, v in data.items() if k != "sweep"}
    problems: list[str] = []
    base.setdefault("name", Path(path).stem)
    name = base["name"]
    if not isinstance(name, str) or not EXPERIMENT_NAME.match(name) or name in (".", ".."):
        where = f"{path}:{lines['name']}" if "name" in lines else path
        problems.append(f"{where}: name: {name!r} is not a valid experiment name: use letters, digits, "
                        f"'.', '_' and '-', starting with a letter or digit, at most 64 characters")
    sweep = _read_sweep(data.get("sweep"), lines, path, problems)
    spec = Spec(path=path, folder=Path(path).parent, base=base, sweep=sweep, lines=lines)
    for text in overrides:
        try:
            key, value = parse_override(text)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        spec.origins[key] = f"--set {text}"
        if key in spec.sweep:
            spec.sweep[key] = [value]     # pinning a swept key keeps its place in run names
            continue
        problem = put(spec.base, key, value)
        if problem:
            problems.append(f"--set {text}: {problem}")
        elif key not in spec.overridden:
            spec.overridden.append(key)
    if problems:
        raise SpecError(problems)
    return spec


def _read_sweep(sweep: Any, lines: dict[str, int], path: str, problems: list[str]) -> dict[str, list[Any]]:
    if sweep is None:
        return {}
    where = f"{path}:{lines.get('sweep', '?')}"
    if not isinstance(sweep, dict):
        problems.append(f"{where}: sweep: must be a mapping of dotted keys to lists of values, "
                        f"such as 'train.batch_size: [1, full]'")
        return {}
    grid: dict[str, list[Any]] = {}
    for key, values in sweep.items():
        at = f"{path}:{lines.get(f'sweep.{key}', '?')}: sweep.{key}"
        if not isinstance(values, list):
            shape = "a section" if isinstance(values, dict) else repr(values)
            problems.append(f"{at}: must be a list of values, got {shape}; "
                            f"write one dotted key per swept setting, such as optimizer.lr: [0.1, 0.01]")
            continue
        if not values:
            problems.append(f"{at}: the list of values is empty; give at least one value")
            continue
        seen: list[Any] = []
        for value in values:
            if any(_same(value, s) for s in seen):
                problems.append(f"{at}: {value!r} is listed twice")
            seen.append(value)
        if key == "name":
            problems.append(f"{at}: the experiment name cannot be swept")
        grid[key] = values
    return grid


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: 1 and 1.0 are the same value, true and 1 are not."""
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def combine(spec: Spec, values: dict[str, Any]) -> dict[str, Any]:
    """The spec's base configuration with one combination of swept values put in."""
    raw = copy.deepcopy(spec.base)
    for key, value in values.items():
        problem = put(raw, key, copy.deepcopy(value))
        if problem:
            raise SpecError(f"{spec.where('sweep.' + key)}: sweep.{key}: {problem}")
    return raw

