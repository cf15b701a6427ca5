"""Merging teammates' log folders: every distinct run kept once, nothing overwritten, nothing trusted.

A copied folder is read as data only: records through json, never unpickled; symlinks are not
followed; folder names that are not plain run names are refused rather than joined to a path.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import rundir
from trainer.errors import LogDirError
from trainer.spec import EXPERIMENT_NAME

RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._,=+~-]{0,127}$")
UNFINISHED = ("interrupted", "unfinished", "running", "missing")


@dataclass
class MergeResult:
    copied: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)     # (source folder, new name)
    identical: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"copied {len(self.copied) + len(self.renamed)} runs, {len(self.identical)} already present "
               f"(identical), {len(self.unfinished)} unfinished left out, {len(self.refused)} refused"]
        out += [f"  kept both: {src} -> {new} (same name, different run)" for src, new in self.renamed]
        out += [f"  left out (unfinished; --include-unfinished copies it): {u}" for u in self.unfinished]
        out += [f"  refused: {r}" for r in self.refused]
        return out


def identity(record: dict[str, Any]) -> str:
    """Same configuration, same status and same results: the same run."""
    key = {"config": record.get("config_digest"), "status": record.get("status"), "metrics": record.get("metrics")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def merge(sources: list[Path], dest: Path, include_unfinished: bool = False) -> MergeResult:
    """Copy every run of the source log folders into dest."""
    for source in sources:
        if not source.is_dir():
            raise LogDirError(f"{source}: no such log folder")
        if source.resolve() == dest.resolve():
            raise LogDirError(f"{source}: is the destination itself")
    dest.mkdir(parents=True, exist_ok=True)
    result = MergeResult()
    for source in sources:
        for experiment in sorted(source.iterdir()):
            if experiment.name.startswith(".") or not experiment.is_dir() and not experiment.is_symlink():
                continue
            if experiment.is_symlink() or not EXPERIMENT_NAME.match(experiment.name):
                result.refused.append(f"{experiment}: {'a symlink' if experiment.is_symlink() else 'not an experiment name'}")
                continue
            for run in sorted(experiment.iterdir()):
                if run.name.startswith("."):
                    continue
                _merge_run(run, dest / experiment.name, include_unfinished, result)
    return result


def _merge_run(run: Path, into: Path, include_unfinished: bool, result: MergeResult) -> None:
    if run.is_symlink():
        result.refused.append(f"{run}: a symlink (not followed)")
        return
    if not run.is_dir():
        return
    if not RUN_NAME.match(run.name):
        result.refused.append(f"{run}: {run.name!r} is not a run folder name")
        return
    record = rundir.read_record(run)
    status = record.get("status") if record else "unfinished"
    if status in UNFINISHED and not include_unfinished:
        result.unfinished.append(str(run))
        return
    ident = identity(record) if record else hashlib.sha256(str(sorted(p.name for p in run.iterdir())).encode()).hexdigest()
    target = into / run.name
    for existing in [target, *sorted(into.glob(f"{glob_escape(run.name)}~*"))]:
        other = rundir.read_record(existing) if existing.is_dir() else None
        if other is not None and record is not None and identity(other) == ident:
            result.identical.append(str(run))
            return
    name = run.name if not target.exists() else f"{run.name}~{ident[:8]}"
    if (into / name).exists():          # the same unrecorded folder merged before
        result.identical.append(str(run))
        return
    _copy_run(run, into, name, record)
    if name == run.name:
        result.copied.append(str(run))
    else:
        result.renamed.append((str(run), f"{into.name}/{name}"))


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", name)


def _copy_run(run: Path, into: Path, name: str, record: dict[str, Any] | None) -> None:
    """Copy a run's plain files into a hidden folder, then rename it into place in one step."""
    into.mkdir(parents=True, exist_ok=True)
    staging = into / f".merge-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for item in run.iterdir():
            if item.is_symlink() or not item.is_file() or item.name.startswith("."):
                continue
            shutil.copyfile(item, staging / item.name, follow_symlinks=False)
        if record is not None and name != run.name:
            rundir.write_record(staging, {**record, "run": name, "merged_from": run.name})
        staging.rename(into / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
