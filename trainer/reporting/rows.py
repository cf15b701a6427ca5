"""A log folder's runs as rows of plain values: one mapping per run, with its state, every setting
(typed: numbers as numbers), every final and best metric, and where it came from. `status
--format csv|json` and the Python API's trainer.runs() read the same rows."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainer.core.visible import csv_cell
from trainer.reporting.tables import (
    COLUMNS,
    code_column,
    filter_records,
    setting_of,
    sort_records,
    status_records,
    table,
)

FORMATS = ("table", "csv", "json")

# The columns every row starts with, in order; settings and metrics follow.
LEAD = ("experiment", "run", "state", "steps", "time_s", "engine", "device", "code")


def rows(logdir: Path, experiment: str | None = None) -> list[dict[str, Any]]:
    """One row per run of the log folder (of one experiment), in the order `status` lists them."""
    found = status_records(logdir)
    if experiment is not None:
        found = [r for r in found if r["experiment"] == experiment]
    return [row(r) for r in found]


def row(record: dict[str, Any]) -> dict[str, Any]:
    """A run's row, from its status record (trainer.reporting.tables.status_records)."""
    engine = record.get("engine") or {}
    out: dict[str, Any] = {
        "experiment": record["experiment"],
        "run": record["folder"].partition("/")[2],
        "state": record["status"],
        "steps": record.get("steps_done"),
        "time_s": record.get("duration_s"),
        "engine": engine.get("name") if isinstance(engine, dict) else None,
        "device": (record.get("resolved") or {}).get("device"),
        "code": code_column(record),
    }
    for key, value in (record.get("hparams") or {}).items():
        if key != "experiment":
            out[key] = value
    for key, value in (record.get("metrics") or {}).items():
        if "/" in key:
            out[key] = value
    return out


def all_columns(found: list[dict[str, Any]]) -> list[str]:
    """Every column of the rows, the lead ones first, then settings, then metrics, each as first seen."""
    names = dict.fromkeys(LEAD)
    for r in found:
        names.update(dict.fromkeys(k for k in r if "/" not in k))
    for r in found:
        names.update(dict.fromkeys(k for k in r if "/" in k))
    return list(names)


def status_output(
    logdir: Path,
    fmt: str,
    columns: Iterable[str] | None,
    sort: str | None = None,
    filters: Iterable[str] = (),
    reverse: bool = False,
    deep: bool = False,
) -> tuple[list[str], int]:
    """`status --format FMT --columns ...`: the runs as a table of the columns asked, as CSV (a
    header row) or as JSON lines (one object per run, null where a run has no value); and how
    many runs are damaged."""
    everything = status_records(logdir, deep)
    shown = sort_records(filter_records(everything, filters), sort, reverse)
    found = [(record, row(record)) for record in shown]
    names = _names(columns, shown, [r for _, r in found])
    values = [[_cell(record, r, name) for name in names] for record, r in found]
    damaged = sum(1 for r in everything if r["damage"] is not None)
    if fmt == "json":
        return [json.dumps(dict(zip(names, map(_plain, v))), allow_nan=False) for v in values], damaged
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([csv_cell(name) for name in names])
        writer.writerows([[csv_cell(x) for x in v] for v in values])
        return out.getvalue().splitlines(), damaged
    return table([[_shown(x) for x in v] for v in values], names), damaged


def _names(
    columns: Iterable[str] | None, records: list[dict[str, Any]], found: list[dict[str, Any]]
) -> list[str]:
    """The columns asked for, as rows or status name them (a setting also by its last part); all
    of the rows' columns where none is asked for."""
    if columns is None:
        return all_columns(found)
    known = set().union(*(r.keys() for r in found)) if found else set(LEAD)
    return [
        name if name in known or name in COLUMNS else setting_of(records, name, "--columns")
        for name in columns
    ]


def _cell(record: dict[str, Any], found: dict[str, Any], name: str) -> Any:
    if name in found:
        return found[name]
    if name in COLUMNS:
        return COLUMNS[name][1](record)
    return None


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
