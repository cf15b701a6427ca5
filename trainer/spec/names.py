"""Run names: readable folder names from swept values, safe on any file system, bounded in length."""

from __future__ import annotations

import hashlib
import re
from typing import Any

MAX_NAME = 100
BASE_RUN = "base"


def format_value(value: Any) -> str:
    """A swept value as it reads in a run name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "-".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return "-".join(f"{k}-{format_value(v)}" for k, v in value.items()) or "default"
    return str(value)


def labels(keys: list[str]) -> dict[str, str]:
    """Short labels for swept keys: a setting's own name (`lr` for optimizer.lr), a section's name
    for its kind (`optimizer` for optimizer.kind), or the whole key where two would read the same."""
    short = {k: k.split(".")[-2] if k.endswith(".kind") else k.rpartition(".")[2] for k in keys}
    counts: dict[str, int] = {}
    for label in short.values():
        counts[label] = counts.get(label, 0) + 1
    return {k: (label if counts[label] == 1 else k) for k, label in short.items()}


_MISSING = object()


def _flat(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for name, part in value.items() for k, v in _flat(f"{key}.{name}", part).items()}
    return {key: value}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _name_parts(values: list[tuple[str, Any]], sweep: dict[str, list[Any]]) -> dict[str, Any]:
    """The settings a run name shows: swept values, a swept section by its settings that differ
    between the section's values (all of them when none does), and no experiment name (the
    experiment's folder holds the run)."""

    def section(value: Any) -> bool:
        return isinstance(value, dict) and bool(value)

    # A deeper key swept or set on its own refines the section's value of it (see spec.combine).
    own = {key for key, value in values if not section(value)}
    parts: dict[str, Any] = {}
    for key, value in values:
        if key == "name":
            continue
        if not section(value):
            parts[key] = value
            continue
        mine = {k: v for k, v in _flat(key, value).items() if k not in own}
        others = [_flat(key, v) for v in sweep.get(key, [value])]
        differing = {k: v for k, v in mine.items() if any(not _same(o.get(k, _MISSING), v) for o in others)}
        parts.update(differing or mine)
    return parts


def run_name(values: list[tuple[str, Any]], sweep: dict[str, list[Any]] | None = None) -> str:
    """A readable folder name from swept values, safe on any file system and bounded in length.

    `sweep` (key -> the values swept) lets a swept section be named by what differs, e.g.
    `optimizer=sgd,lr=0.01,momentum=0.9` against `optimizer=adam,lr=0.003`.
    """
    parts = _name_parts(values, sweep or {})
    if not parts:
        return BASE_RUN
    names = labels(list(parts))
    text = ",".join(f"{names[k]}={format_value(v)}" for k, v in parts.items())
    safe = re.sub(r"[^A-Za-z0-9._,=+-]", "_", text)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if len(safe) > MAX_NAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        safe = f"{safe[: MAX_NAME - 9]}~{digest}"
    return safe


# --- planning ---------------------------------------------------------------------------------
