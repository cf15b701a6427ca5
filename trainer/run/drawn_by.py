"""What drew a study or a run: a search's identity (trainer.spec.trials.identity) recorded in its
study and in its runs' records, compared with the spec's, and the one sentence that refuses a
study or a run another search drew, naming each setting that changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.core import untrusted
from trainer.core.errors import UserError
from trainer.run import rundir
from trainer.spec.search import study_configuration
from trainer.spec.searches import Search

SEARCH = "search"  # the study's user attribute holding what drew it (trainer.spec.trials.identity)
CONFIG = "config"  # the part of that identity that is its trials' configuration, searched settings apart


class StudyChanged(UserError):
    """The experiment's study (or its runs) were drawn by another search than the spec's."""


def other(identity: dict[str, Any], drawn_by: Any) -> bool:
    """Whether what drew a study (or a run) is another search than the one of this identity."""
    return drawn_by != as_recorded(identity, drawn_by)


def as_recorded(identity: dict[str, Any], drawn_by: Any) -> dict[str, Any]:
    """A search's identity as `drawn_by` was recorded: without the trials' configuration
    where it has none (recorded before it was part of it; the runs' records have it)."""
    if isinstance(drawn_by, dict) and CONFIG not in drawn_by:
        return {k: v for k, v in identity.items() if k != CONFIG}
    return identity


def changed(search: Search, where: Path, before: dict[str, Any]) -> StudyChanged:
    """The error for a study or a run at `where` drawn by another search than `search`."""
    name = search.experiment
    return StudyChanged(
        f"{where}: the experiment {name} was searched with other settings than its spec's "
        f"({_differences(before, as_recorded(search.identity, before))}); its trials cannot join that study. "
        f"Give the spec a new name (--set name={name}-2), or move {where.parent} away"
    )


def search_records(logdir: Path, experiment: str) -> list[dict[str, Any]]:
    """The experiment's run records that belong to a search."""
    folder = logdir / experiment
    found = []
    for name in untrusted.real_folders(folder):
        record = rundir.read_record(folder / name)
        if record is not None and isinstance(record.get("trial"), dict):
            found.append(record)
    return found


def check_records(search: Search, logdir: Path, records: list[dict[str, Any]]) -> None:
    """Runs drawn by another search than this one (merged in, or left from before an edit of
    the spec) cannot join its study."""
    for record in records:
        drawn_by = record["trial"].get("search")
        if isinstance(drawn_by, dict) and CONFIG not in drawn_by and isinstance(record.get("config"), dict):
            space = search.space  # recorded before the identity held it: the record's own
            config = study_configuration(record["config"], space.dimensions, space.replicates)
            drawn_by = {**drawn_by, CONFIG: config}
        if drawn_by is not None and other(search.identity, drawn_by):
            raise changed(search, logdir / search.experiment / record.get("run", ""), drawn_by)


def record_params(record: dict[str, Any], search: Search) -> dict[str, Any] | None:
    """A trial's drawn values as its run's record keeps them; None where they are not this
    search's (another space)."""
    params = (record.get("trial") or {}).get("params") or {}
    if set(params) != set(search.space.dimensions):
        return None
    return dict(params)


def _differences(before: dict[str, Any], now: dict[str, Any]) -> str:
    changes = []
    for key in dict.fromkeys([*before, *now]):
        if key == CONFIG:  # the trials' configuration, by setting
            changes += _changes(before.get(key) or {}, now.get(key) or {})
        elif before.get(key) != now.get(key):
            changes.append(f"{key} {_shown(before.get(key))} -> {_shown(now.get(key))}")
    return "; ".join(changes)


def _changes(before: dict[str, Any], now: dict[str, Any], shown: int = 6) -> list[str]:
    def value(settings: dict[str, Any], key: str) -> str:
        return _shown(settings[key]) if key in settings else "unset"

    changes = [
        f"{key} {value(before, key)} -> {value(now, key)}"
        for key in dict.fromkeys([*before, *now])
        if (key in before, before.get(key)) != (key in now, now.get(key))
    ]
    if len(changes) > shown:
        return [*changes[:shown], f"and {len(changes) - shown} more"]
    return changes


def _shown(value: Any) -> str:
    """A setting's value as a spec writes it (true, null, {kind: median, ...})."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)
