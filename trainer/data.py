"""Datasets: the notebook's rows, a synthetic linear generator, and CSV tables."""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainer import guards
from trainer.schema import CsvData, DataSpec, Invalid, SeedToyData, SyntheticData, suggest

if TYPE_CHECKING:
    import torch

# The notebook's toy table: y = 0*x0 + 1*x1 + 2*x2 + 3*x3.
SEED_ROWS = (
    (1, 0, 1, 1), (0, 0, 1, 0), (1, 0, 0, 1), (0, 1, 1, 1), (1, 1, 1, 1),
    (0, 1, 0, 0), (0, 1, 0, 1), (1, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 1),
)
SEED_WEIGHTS = (0.0, 1.0, 2.0, 3.0)


@dataclass(frozen=True)
class DataInfo:
    """What validation needs to know about a dataset, found without building tensors."""

    rows: int
    features: int
    true_weights: tuple[float, ...] | None
    true_bias: float | None
    digest: str | None = None        # sha256 of a CSV file's bytes


@dataclass
class Dataset:
    """Training tensors, and the weights that generated them where known."""

    x: "torch.Tensor"
    y: "torch.Tensor"
    true_weights: "torch.Tensor | None"
    true_bias: float | None


def csv_path(spec: CsvData, folder: Path) -> Path:
    path = Path(spec.path)
    return path if path.is_absolute() else folder / path


def inspect(spec: DataSpec, folder: Path) -> DataInfo:
    """Size and known truth of a dataset; raises Invalid naming the data.* key at fault."""
    if isinstance(spec, SeedToyData):
        return DataInfo(len(SEED_ROWS), len(SEED_ROWS[0]), SEED_WEIGHTS, 0.0)
    if isinstance(spec, SyntheticData):
        if spec.weights is not None and len(spec.weights) != spec.features:
            raise Invalid([("data.weights", f"has {len(spec.weights)} values but data.features is "
                                            f"{spec.features}; give one true weight per feature")])
        return DataInfo(spec.rows, spec.features, spec.weights, spec.bias)
    if isinstance(spec, CsvData):
        table = _read_csv(csv_path(spec, folder), spec.path)
        header, rows, digest = table
        if spec.target not in header:
            raise Invalid([("data.target", f"no column {spec.target!r} in {spec.path}"
                                           f"{suggest(spec.target, list(header))}; its columns: {', '.join(header)}")])
        features = len(header) - 1
        if features < 1:
            raise Invalid([("data.path", f"{spec.path} has only the target column; it needs at least one feature")])
        if spec.true_weights is not None and len(spec.true_weights) != features:
            raise Invalid([("data.true_weights", f"has {len(spec.true_weights)} values but {spec.path} has "
                                                 f"{features} feature columns")])
        return DataInfo(len(rows), features, spec.true_weights, None, digest)
    raise TypeError(f"unknown data spec {spec!r}")


def _read_csv(path: Path, shown: str) -> tuple[tuple[str, ...], tuple[tuple[float, ...], ...], str]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise Invalid([("data.path", f"no such file {shown!r} (looked for {path})")])
    except OSError as exc:
        raise Invalid([("data.path", f"cannot read {shown!r}: {exc.strerror}")])
    if (refused := guards.input_problem(path, "csv")) is not None:
        raise Invalid([("data.path", f"{shown!r} {refused}")])
    table = _parse_csv(str(path), shown, stat.st_mtime_ns, stat.st_size)
    if isinstance(table, str):
        raise Invalid([("data.path", table)])
    return table


@functools.lru_cache(maxsize=32)
def _parse_csv(path: str, shown: str, mtime_ns: int, size: int) -> tuple | str:
    """Header, numeric rows and digest of a CSV file, or what is wrong with it; cached per file version.

    A problem is returned rather than raised so that it is cached too: every run of a sweep asks.
    """
    try:
        raw = Path(path).read_bytes()
        text = raw.decode("utf-8-sig")
    except IsADirectoryError:
        return f"{shown!r} is a folder, not a CSV file"
    except UnicodeDecodeError:
        return f"{shown!r} is not UTF-8 text"
    except OSError as exc:
        return f"cannot read {shown!r}: {exc.strerror}"
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = tuple(h.strip() for h in next(reader, ()))
        if not header:
            return f"{shown!r} is empty; it needs a header row and data rows"
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            return f"{shown!r} has the column {dup!r} twice"
        rows = []
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue
            where = f"{shown}:{reader.line_num}: row {len(rows) + 1}"
            if len(cells) != len(header):
                return f"{where} has {len(cells)} cells, the header has {len(header)}"
            values = []
            for column, cell in zip(header, cells):
                try:
                    value = float(cell)
                except ValueError:
                    return f"{where}, column {column!r}: {cell.strip()!r} is not a number"
                if not math.isfinite(value):
                    return f"{where}, column {column!r}: {cell.strip()!r} is not finite"
                values.append(value)
            rows.append(tuple(values))
    except csv.Error as exc:
        return f"{shown}:{reader.line_num}: cannot be read as CSV: {exc}"
    if not rows:
        return f"{shown!r} has a header but no data rows"
    return header, tuple(rows), hashlib.sha256(raw).hexdigest()


def load(spec: DataSpec, folder: Path, device: "torch.device | str" = "cpu") -> Dataset:
    """Build the training tensors (float32, y of shape [rows])."""
    import torch  # here, not at the top: the sweep's parent process never needs torch

    if isinstance(spec, SeedToyData):
        x = torch.tensor(SEED_ROWS, dtype=torch.float32)
        w = torch.tensor(SEED_WEIGHTS)
        return Dataset(x.to(device), (x @ w).to(device), w.to(device), 0.0)
    if isinstance(spec, SyntheticData):
        gen = torch.Generator().manual_seed(spec.seed)
        shape = (spec.rows, spec.features)
        if spec.inputs == "normal":
            x = torch.randn(shape, generator=gen)
        elif spec.inputs == "binary":
            x = torch.randint(0, 2, shape, generator=gen).float()
        else:
            x = torch.rand(shape, generator=gen)
        w = (torch.tensor(spec.weights, dtype=torch.float32) if spec.weights is not None
             else torch.randn(spec.features, generator=gen))
        y = x @ w + spec.bias + spec.noise * torch.randn(spec.rows, generator=gen)
        return Dataset(x.to(device), y.to(device), w.to(device), spec.bias)
    if isinstance(spec, CsvData):
        header, rows, _ = _read_csv(csv_path(spec, folder), spec.path)
        table = torch.tensor(rows, dtype=torch.float32)
        target = header.index(spec.target)
        keep = [i for i in range(len(header)) if i != target]
        truth = torch.tensor(spec.true_weights, dtype=torch.float32) if spec.true_weights else None
        return Dataset(table[:, keep].to(device), table[:, target].to(device),
                       truth.to(device) if truth is not None else None, None)
    raise TypeError(f"unknown data spec {spec!r}")
