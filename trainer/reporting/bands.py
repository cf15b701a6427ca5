"""Seed bands in TensorBoard: for each group of runs that differ only in their seeds, one extra run
holding the seed mean and the lowest and highest seed of its evaluation curve, and a CUSTOM SCALARS
layout whose Margin charts draw them, one chart per experiment.

The runs live under the log folder's `_seeds/` (rundir.BANDS), a name no experiment can take, and
hold no HParams session, so the HParams table, `status` and `merge` never count them. `index`
rebuilds them from the runs at the end of every sweep and merge; like the HParams record, an
unchanged folder is left as it was, byte for byte.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import summary_pb2, tensor_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata

from trainer.core import guards
from trainer.core.errors import LogDirError
from trainer.core.status import Status
from trainer.reporting.findings import ExperimentFindings, Group, findings
from trainer.run import rundir
from trainer.tensorboard import curves
from trainer.tensorboard.curves import Band
from trainer.tensorboard.events import event_file_bytes

BAND_FILE = "events.out.tfevents.0000000000.seeds"
LAYOUT_FILE = "events.out.tfevents.0000000000.layout"
CATEGORY = "seed bands (mean; band: lowest to highest seed)"
LOW, HIGH = "lowest seed", "highest seed"


def tags(experiment: str, curve: str) -> tuple[str, str, str]:
    """The mean, lower and upper tags of an experiment's band of a curve; each experiment's own, so
    that its Margin chart draws its groups only."""
    value = f"seeds/{experiment}/{curve}"
    return value, f"{value}/{LOW}", f"{value}/{HIGH}"


def _scalars(values: dict[str, float]) -> summary_pb2.Summary:
    return summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values.items()]
    )


def band_summaries(experiment: str, curve: str, band: Band) -> list[tuple[summary_pb2.Summary, int]]:
    value, low, high = tags(experiment, curve)
    return [
        (_scalars({value: float(m), low: float(lo), high: float(hi)}), int(step))
        for step, m, lo, hi in zip(band.steps, band.mean, band.low, band.high)
    ]


def layout_pb(charts: list[tuple[str, str]]) -> summary_pb2.Summary:
    """The CUSTOM SCALARS layout: a Margin chart per (experiment, curve)."""
    layout = layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title=CATEGORY,
                chart=[
                    layout_pb2.Chart(
                        title=f"{experiment}: {curve}",
                        margin=layout_pb2.MarginChartContent(
                            series=[
                                layout_pb2.MarginChartContent.Series(value=value, lower=low, upper=high)
                                for value, low, high in [tags(experiment, curve)]
                            ]
                        ),
                    )
                    for experiment, curve in charts
                ],
            )
        ]
    )
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[layout.SerializeToString()])
    return summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(
                tag=layout_metadata.CONFIG_SUMMARY_TAG,
                metadata=layout_metadata.create_summary_metadata(),
                tensor=tensor,
            )
        ]
    )


def _write(logdir: Path, path: Path, content: bytes) -> None:
    """Write a file of the band runs unless it holds that already; never through a symlink."""
    problem = guards.escape_problem(logdir, path.parent)
    if problem is not None:
        raise LogDirError(f"{problem} (where the seed bands are written)")
    if not rundir.holds(path, content):
        path.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_atomic(path, content)


def seeded(found: ExperimentFindings) -> bool:
    """Whether some group of an experiment holds more than one complete run."""
    return any(g.complete > 1 for g in found.groups)


def eval_tag(f: ExperimentFindings) -> str:
    """The evaluation curve a group is drawn by: the validation loss where rows are held out."""
    return "val/loss" if any(t.startswith(("final/val/", "best/val/")) for t in f.metrics) else "train/loss"


def group_bands(
    logdir: Path, group: Group, tags: list[str], points: int = curves.POINTS
) -> dict[str, curves.Band]:
    """The seed band of each tag over a group's complete runs: from the curve their records keep
    where they keep it, else read from their event files."""
    read = []
    for run in (r for r in group.runs if r.get("status") == Status.COMPLETE):
        found = curves.recorded(run, tags, points)
        missing = [tag for tag in tags if tag not in found]
        if missing:
            keep = curves.stride_for(int(run.get("steps") or 0), points)
            found.update(curves.run_scalars(logdir / run["folder"], missing, keep))
        read.append(found)
    found = {}
    for tag in tags:
        band = curves.band([run[tag] for run in read])
        if band is not None:
            found[tag] = band
    return found


def rebuild(logdir: Path, runs: list[dict[str, Any]], when: float) -> list[str]:
    """Write the band runs and the layout of a log folder's seeded experiments, remove those of
    groups that are gone; returns the band runs' names."""
    root = logdir / rundir.BANDS
    written: set[Path] = set()
    charts = []
    for found in findings(runs):
        if not seeded(found):
            continue
        curve = eval_tag(found)
        for group in found.groups:
            band = group_bands(logdir, group, [curve]).get(curve)
            if band is None:
                continue
            folder = root / found.name / re.sub(r"[^A-Za-z0-9._,=+-]", "_", group.label)
            _write(
                logdir, folder / BAND_FILE, event_file_bytes(band_summaries(found.name, curve, band), when)
            )
            written.add(folder)
        charts.append((found.name, curve))
    if charts:
        _write(logdir, root / LAYOUT_FILE, event_file_bytes([(layout_pb(charts), 0)], when))
    _remove_stale(root, written, bool(charts))
    return sorted(str(p.relative_to(logdir)) for p in written)


def _remove_stale(root: Path, written: set[Path], layout: bool) -> None:
    """Remove band runs of groups that no longer exist, and the folder when nothing is left."""
    if not root.is_dir() or root.is_symlink():
        return
    for experiment in root.iterdir():
        if experiment.is_dir() and not experiment.is_symlink():
            for group in experiment.iterdir():
                if group not in written and group.is_dir() and not group.is_symlink():
                    shutil.rmtree(group)
            if not any(experiment.iterdir()):
                experiment.rmdir()
        elif experiment.name == LAYOUT_FILE and not layout:
            experiment.unlink()
    if not any(root.iterdir()):
        root.rmdir()
