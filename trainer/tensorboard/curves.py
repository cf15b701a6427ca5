"""Scalar curves read back from run event files, and their seed mean and band, for reports.

A report reads a few tags of many runs, so the reader skips every event that cannot hold one of
them without parsing it, and can keep only some steps (a weight logged at each of 10,000 steps
plots as well from 200 of them). tests/test_findings.py checks it against tensorboard's own reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.compat.proto import event_pb2

from trainer.tensorboard.events import FileRecords, event_files

_STEP_TAG = 0x10  # Event.step, a varint
_WALL_TIME_TAG = 0x09  # Event.wall_time, a double, written first by every writer


def _step_of(data: bytes, start: int, end: int) -> int | None:
    """The step of the event in data[start:end], read from its first bytes, or None where it is
    not laid out as writers write it."""
    if end - start < 11 or data[start] != _WALL_TIME_TAG or data[start + 9] != _STEP_TAG:
        return None
    step, shift = 0, 0
    for byte in data[start + 10 : min(start + 20, end)]:
        step |= (byte & 0x7F) << shift
        if byte < 0x80:
            return step
        shift += 7
    return None


def read_scalars(
    path: Path, tags: Iterable[str], keep_step: Callable[[int], bool] = lambda step: True
) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of one event file, for the tags asked and the steps kept. Only events
    whose bytes hold one of the tags and whose step is kept are parsed; the rest are stepped over.
    The file is read a block at a time (events.FileRecords): a file that is not a plain file gives
    nothing, a file cut short by a crash what came before the cut."""
    wanted = {tag: tag.encode() for tag in tags}
    found: dict[str, list[tuple[int, float]]] = {tag: [] for tag in wanted}
    names = list(wanted.values())
    for data, start, end in FileRecords(path):
        if not any(data.find(name, start, end) >= 0 for name in names):
            continue
        step = _step_of(data, start, end)
        if step is not None and not keep_step(step):
            continue
        event = event_pb2.Event.FromString(data[start:end])
        if not keep_step(event.step):
            continue
        for value in event.summary.value:
            if value.tag in found:
                if value.HasField("simple_value"):
                    found[value.tag].append((event.step, value.simple_value))
                elif value.HasField("tensor") and value.tensor.float_val:
                    found[value.tag].append((event.step, value.tensor.float_val[0]))
    return found


def run_scalars(
    folder: Path, tags: Iterable[str], keep_step: Callable[[int], bool] = lambda step: True
) -> dict[str, list[tuple[int, float]]]:
    """read_scalars over every event file of a run folder, in step order, as TensorBoard reads
    them: a file that begins with a restart (a resumed run's: a SessionLog START at step s) drops
    what the files before it hold from step s on."""
    tags = list(tags)
    found: dict[str, list[tuple[int, float]]] = {tag: [] for tag in tags}
    for name in event_files(folder):
        restart = restart_step(folder / name)
        if restart is not None:
            found = {tag: [p for p in points if p[0] < restart] for tag, points in found.items()}
        for tag, points in read_scalars(folder / name, tags, keep_step).items():
            found[tag] += points
    return {tag: sorted(points) for tag, points in found.items()}


def restart_step(path: Path) -> int | None:
    """The step of the restart an event file begins with (its first events), or None."""
    for i, (data, start, end) in enumerate(FileRecords(path, block=4096)):
        event = event_pb2.Event.FromString(data[start:end])
        if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
            return event.step
        if i >= 3:
            break
    return None


def scalar_tags(folder: Path) -> list[str]:
    """Every scalar tag of a run folder's event files, in the order first logged."""
    tags: dict[str, None] = {}
    for name in event_files(folder):
        for data, start, end in FileRecords(folder / name):
            for value in event_pb2.Event.FromString(data[start:end]).summary.value:
                if value.HasField("simple_value") or (value.HasField("tensor") and value.tensor.float_val):
                    tags.setdefault(value.tag, None)
    return list(tags)


@dataclass(frozen=True)
class Band:
    """One tag's curves over a group's seeds, on the steps every one of them logged."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray  # the lowest seed at each step
    high: np.ndarray  # the highest
    runs: int


def band(curves: list[list[tuple[int, float]]]) -> Band | None:
    """The seed mean and min-max band of curves; None where no step is common to all of them."""
    curves = [c for c in curves if c]
    if not curves:
        return None
    if all(len(c) == len(curves[0]) for c in curves):  # most often every seed logged the same steps
        table = np.array(curves, dtype=np.float64)  # [runs, points, (step, value)]
        steps = table[:, :, 0]
        if (steps == steps[0]).all() and (np.diff(steps[0]) > 0).all():
            values = table[:, :, 1]
            return Band(
                steps[0].astype(np.int64),
                values.mean(axis=0),
                values.min(axis=0),
                values.max(axis=0),
                len(curves),
            )
    common = sorted(set.intersection(*(set(step for step, _ in curve) for curve in curves)))
    if not common:
        return None
    at = {step: i for i, step in enumerate(common)}
    values = np.full((len(curves), len(common)), np.nan)
    for row, curve in enumerate(curves):
        for step, value in curve:
            if step in at:
                values[row, at[step]] = value
    return Band(np.array(common), values.mean(axis=0), values.min(axis=0), values.max(axis=0), len(curves))


# Points kept of a curve, evenly spaced: for seed bands, and for the curve a run's record keeps.
POINTS = 200


def main_tag(tags: list[str]) -> str:
    """The evaluation curve a run is judged by: the validation loss where rows are held out."""
    return "val/loss" if "val/loss" in tags else "train/loss"


def record_curve(tags: list[str], history: list[Any], steps: int) -> dict[str, Any]:
    """A run's main evaluation curve as its record keeps it, so that seed bands need not read event
    files: the steps stride_for(steps) keeps, and the values as the event file holds them (float32,
    written in their shortest form; null where not finite). `history` holds trainer.tensorboard.sink.Evaluation."""
    tag = main_tag(tags)
    column, keep = tags.index(tag), stride_for(steps)
    kept = [ev for ev in history if keep(ev.step)]
    values = np.array([ev.values[column] for ev in kept], dtype=np.float32).tolist()
    return {
        "tag": tag,
        **_steps_text([ev.step for ev in kept]),
        # nine significant digits tell every float32 from its neighbours
        "values": [float(f"{v:.9g}") if math.isfinite(v) else None for v in values],
    }


def _steps_text(steps: list[int]) -> dict[str, Any]:
    """Evenly spaced steps (the last may be off the grid) as first, every and last; others listed."""
    if len(steps) > 2:
        first, every, last = steps[0], steps[1] - steps[0], steps[-1]
        if every > 0 and [*range(first, last, every), last] == steps:
            return {"first": first, "every": every, "last": last}
    return {"steps": steps}


def _steps_of(curve: dict[str, Any]) -> list[int]:
    if "steps" in curve:
        return list(curve["steps"])
    first, every, last = curve["first"], curve["every"], curve["last"]
    return [*range(first, last, every), last]


def recorded(record: dict[str, Any], tags: Iterable[str], points: int) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the tags whose curve a run's record keeps (see record_curve), as
    run_scalars would read them from its event files with stride_for(steps, points)."""
    curve = record.get("curve")
    if points != POINTS or not isinstance(curve, dict) or curve.get("tag") not in tags:
        return {}
    if not _well_formed(curve):  # a record from elsewhere: its curve is read from the event files
        return {}
    values = np.array(curve["values"], dtype=np.float64)  # null becomes NaN
    values = values.astype(np.float32).astype(np.float64).tolist()
    return {curve["tag"]: list(zip(_steps_of(curve), values))}


def _well_formed(curve: dict[str, Any]) -> bool:
    """Whether a record's curve is as record_curve writes it: a number (or null) per step, the
    steps listed or evenly spaced, as many as the values (counted before any list is made of them,
    so that a curve claiming a trillion steps is refused, not expanded)."""
    values = curve.get("values")
    if not isinstance(values, list) or not all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values
    ):
        return False
    if "steps" in curve:
        steps = curve["steps"]
        return isinstance(steps, list) and len(steps) == len(values) and all(type(s) is int for s in steps)
    first, every, last = (curve.get(k) for k in ("first", "every", "last"))
    if not all(type(n) is int for n in (first, every, last)) or every <= 0 or last < first:
        return False
    return len(range(first, last, every)) + 1 == len(values)


def stride_for(steps: int, points: int = POINTS) -> Callable[[int], bool]:
    """Keeps about `points` evenly spaced steps of a run of `steps` steps, and its last."""
    every = max(1, steps // points)
    return lambda step: step % every == 0 or step == steps
