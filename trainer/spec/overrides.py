"""--set KEY=VALUE overrides: each parsed (the value read as YAML), its key checked against the
schema, and put into a spec's nested sections."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.core.errors import SpecError
from trainer.kinds.registry import FAMILIES
from trainer.spec.schema import Config, check_key, show
from trainer.spec.yaml_lines import parse_yaml

DOTTED_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class Override:
    """One --set KEY=VALUE, parsed."""

    text: str
    key: str
    value: Any

    @property
    def origin(self) -> str:
        return f"--set {self.text}"


def parent_key(key: str) -> str:
    """'a.b[2]' -> 'a.b' -> 'a' -> ''."""
    if key.endswith("]"):
        return key[: key.rindex("[")]
    return key.rpartition(".")[0]


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
