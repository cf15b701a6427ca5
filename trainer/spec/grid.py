"""A spec's grid: every combination of its sweep lists, each validated into a planned run, and
where in the spec (or which --set) each key's value came from."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from trainer.core.errors import SpecError
from trainer.core.strict import reusing
from trainer.spec.apart import Apart
from trainer.spec.files import Spec, combine
from trainer.spec.names import run_name
from trainer.spec.overrides import parent_key
from trainer.spec.plan import RunPlan
from trainer.spec.schema import Invalid
from trainer.spec.validate import validate_run

MAX_RUNS = 10_000


def expand(spec: Spec, allow_large: bool = False, apart: Apart | None = None) -> list[RunPlan]:
    """Every run of one spec, validated; problems raise SpecError."""
    count = math.prod(len(v) for v in spec.sweep.values())
    if count > MAX_RUNS and not allow_large:
        raise SpecError(
            f"{spec.where('sweep')}: sweep: {count:,} runs is more than {MAX_RUNS:,}, which is "
            f"likely a mistake; pass --allow-large to run them all"
        )
    keys = list(spec.sweep) + spec.overridden
    found: dict[str, list[str]] = {}
    collisions: list[str] = []
    runs: list[RunPlan] = []
    by_name: dict[str, RunPlan] = {}
    with reusing():  # the runs share most sections: each distinct one is built once
        for picks in itertools.product(*(range(len(v)) for v in spec.sweep.values())):
            indices = dict(zip(spec.sweep, picks))
            values = {k: spec.sweep[k][i] for k, i in indices.items()}
            try:
                raw = combine(spec, values)
                named = [(k, values[k]) if k in values else (k, lookup(raw, k)) for k in keys]
                name = run_name(named, spec.sweep)
                run = validate_run(spec, raw, name, tuple(named), apart)
            except Invalid as invalid:
                for key, message in invalid.problems:
                    found.setdefault(f"{locate(spec, key, indices)}: {key}: {message}", []).append(
                        run_name([(k, values[k]) for k in spec.sweep], spec.sweep)
                    )
                continue
            other = by_name.setdefault(name.lower(), run)
            if other is not run:
                collisions.append(
                    f"{spec.where('sweep')}: sweep: runs {format_values(other.swept)} and "
                    f"{format_values(run.swept)} would both be written to the folder {name!r}"
                    f"{case_note(name, other.name)}; make the swept values distinct"
                )
                continue
            runs.append(run)
    if found or collisions:
        raise SpecError(
            [message + _which_runs(names, count) for message, names in found.items()] + collisions
        )
    return runs


def format_values(values: tuple[tuple[str, Any], ...]) -> str:
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in values) + "}"


def _which_runs(names: list[str], total: int) -> str:
    if total <= 1 or len(names) == total:
        return ""
    shown = ", ".join(names[:2])
    more = f" and {len(names) - 2} more" if len(names) > 2 else ""
    return f" (in run{'s' if len(names) > 1 else ''} {shown}{more})"


def lookup(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def locate(spec: Spec, key: str, indices: dict[str, int] | None = None) -> str:
    """Where the value of a key came from: its --set, its swept value's line, or its line in the file.

    The deepest --set or swept key at or above the key gave its value (see spec.combine).
    """
    origins = spec.origins
    probe = key
    while probe:
        if probe in origins:
            return origins[probe]
        if probe in spec.space:
            return spec.where(f"sweep.{probe}")
        if probe in spec.sweep:
            if indices is None or probe not in indices:
                return spec.where(f"sweep.{probe}")
            return spec.where(f"sweep.{probe}[{indices[probe]}]{key[len(probe) :]}")
        probe = parent_key(probe)
    return spec.where(key)


def case_note(name: str, other: str) -> str:
    return (
        ""
        if name == other
        else f" as {other!r} (names that differ only in case share a folder on macOS and Windows)"
    )
