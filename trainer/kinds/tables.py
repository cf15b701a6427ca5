"""CSV tables for the csv data kind: read once per file version (path, mtime, size), numbers
checked cell by cell, text labels turned into class indices, with errors that name the file,
the line and the column."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.core import guards
from trainer.core.strict import Invalid, suggest


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    features: tuple[tuple[float, ...], ...]
    targets: tuple[Any, ...]  # numbers, or class indices where labels are text
    classes: tuple[str, ...] | None
    digest: str


def read_csv(path: Path, shown: str, target: str) -> Table:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise Invalid([("data.path", f"no such file {shown!r} (looked for {path})")])
    except OSError as exc:
        raise Invalid([("data.path", f"cannot read {shown!r}: {exc.strerror}")])
    if (refused := guards.input_problem(path, "csv")) is not None:
        raise Invalid([("data.path", f"{shown!r} {refused}")])
    table = _parse_csv(str(path), shown, target, stat.st_mtime_ns, stat.st_size)
    if isinstance(table, tuple):
        raise Invalid([table])
    return table


@functools.lru_cache(maxsize=32)
def _parse_csv(path: str, shown: str, target: str, mtime_ns: int, size: int) -> Table | tuple[str, str]:
    """The table of a CSV file, or (key, what is wrong with it); cached per file version.

    A problem is returned rather than raised so that it is cached too: every run of a sweep asks.
    """
    try:
        raw = Path(path).read_bytes()
        text = raw.decode("utf-8-sig")
    except IsADirectoryError:
        return "data.path", f"{shown!r} is a folder, not a CSV file"
    except UnicodeDecodeError:
        return "data.path", f"{shown!r} is not UTF-8 text"
    except OSError as exc:
        return "data.path", f"cannot read {shown!r}: {exc.strerror}"
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = tuple(h.strip() for h in next(reader, ()))
        if not header:
            return "data.path", f"{shown!r} is empty; it needs a header row and data rows"
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            return "data.path", f"{shown!r} has the column {dup!r} twice"
        if target not in header:
            return "data.target", (
                f"no column {target!r} in {shown}{suggest(target, list(header))}; its columns: "
                f"{', '.join(header)}"
            )
        if len(header) < 2:
            return "data.path", f"{shown} has only the target column; it needs at least one feature"
        at = header.index(target)
        features, labels = [], []
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue
            where = f"{shown}:{reader.line_num}: row {len(features) + 1}"
            if len(cells) != len(header):
                return "data.path", f"{where} has {len(cells)} cells, the header has {len(header)}"
            values = []
            for i, (column, cell) in enumerate(zip(header, cells)):
                if i == at:
                    labels.append(cell.strip())
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    return "data.path", f"{where}, column {column!r}: {cell.strip()!r} is not a number"
                if not math.isfinite(value):
                    return "data.path", f"{where}, column {column!r}: {cell.strip()!r} is not finite"
                values.append(value)
            features.append(tuple(values))
    except csv.Error as exc:
        return "data.path", f"{shown}:{reader.line_num}: cannot be read as CSV: {exc}"
    if not features:
        return "data.path", f"{shown!r} has a header but no data rows"
    numbers = _numbers(labels)
    if numbers is not None:
        targets, classes = numbers, None
    else:
        # Text labels are classes, numbered in sorted order, so every reader of the file agrees.
        classes = tuple(sorted(set(labels)))
        index = {label: i for i, label in enumerate(classes)}
        targets = tuple(index[label] for label in labels)
    return Table(header, tuple(features), tuple(targets), classes, hashlib.sha256(raw).hexdigest())


def _numbers(cells: list[str]) -> tuple[float, ...] | None:
    try:
        values = tuple(float(c) for c in cells)
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None
