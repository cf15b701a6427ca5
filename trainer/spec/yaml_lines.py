"""Safe YAML with line numbers: a spec file's data, and the line of every key, so that every error
can name the file, the line and the key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from trainer.core import guards
from trainer.core.errors import SpecError
from trainer.spec.schema import show, suggest, type_name

EXAMPLE = "a spec is a mapping of settings such as 'name: my-experiment'"

MAX_VALUES = 100_000
MAX_DEPTH = 40
PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
MERGE_TAG = "tag:yaml.org,2002:merge"


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


def parse_yaml(text: str, shown: str) -> tuple[yaml.Node | None, Any, dict[str, int]]:
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
        if path.is_symlink():  # the link is there; what it names is not
            raise SpecError(f"{shown}: a symlink to {os.readlink(path)}, which does not exist")
        siblings = sorted(p.name for p in path.parent.glob("*.y*ml") if p.name != path.name)
        siblings = siblings if path.parent.is_dir() else []
        raise SpecError(f"{shown}: no such file{suggest(path.name, siblings)}")
    except IsADirectoryError:
        raise SpecError(f"{shown}: is a folder, not a spec file")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{shown}: not a UTF-8 text file ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        raise SpecError(f"{shown}: cannot be read: {exc.strerror}")
    if not text.strip():
        raise SpecError(f"{shown}: the file is empty; {EXAMPLE}")
    node, data, lines = parse_yaml(text, shown)
    if node is None:
        raise SpecError(f"{shown}: the file holds only comments; {EXAMPLE}")
    if not isinstance(data, dict):
        raise SpecError(
            f"{shown}:{node.start_mark.line + 1}: the file holds {type_name(data)}"
            f"{'' if data is None else ' ' + show(data)}, not a mapping; {EXAMPLE}"
        )
    return data, lines
