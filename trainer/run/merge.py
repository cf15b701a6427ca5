"""Merging teammates' log folders: every distinct run kept once, nothing overwritten, nothing trusted.

A copied folder is read as data only: records through json, never unpickled, and checked for shape
before use; symlinks are neither followed nor copied, and only plain files are read; folder names
that are not plain experiment or run names are refused rather than joined to a path.

Two runs are the same run when their resolved configuration, status and results agree; a run
that shares its name with a different run is kept under `<name>~<digest>`, and its record says
which name it came from (`merged_from`), so merging the same folders again finds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.core import guards
from trainer.core.errors import LogDirError
from trainer.core.status import Status
from trainer.core.untrusted import RUN_NAME
from trainer.run import claims, rundir, verify
from trainer.run.record import changed_code, code_digests, setting_changes
from trainer.spec.schema import experiment_name

MAX_NAME = 128
UNFINISHED = (Status.INTERRUPTED, Status.UNFINISHED, Status.RUNNING, Status.MISSING)


@dataclass
class MergeResult:
    copied: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str, str]] = field(default_factory=list)  # (source folder, new name, why)
    identical: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    damaged: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        refused = len(self.refused) + len(self.damaged)
        out = [
            f"copied {len(self.copied) + len(self.renamed)} runs, {len(self.identical)} already present "
            f"(identical), {len(self.unfinished)} unfinished left out, {refused} refused"
        ]
        out += [f"  kept both: {src} -> {new} (same name, {why})" for src, new, why in self.renamed]
        out += [f"  left out (unfinished; --include-unfinished copies it): {u}" for u in self.unfinished]
        out += [f"  refused: {r}" for r in self.refused]
        out += [f"  refused (damaged): {d}" for d in self.damaged]
        return out


def identity(record: dict[str, Any]) -> str:
    """Same configuration, same status and same results: the same run."""
    key = {
        "config": record.get("config_digest"),
        "status": record.get("status"),
        "metrics": record.get("metrics"),
    }
    code = code_digests(record.get("code"))
    if code:  # runs of other code are other runs, whatever they reached
        key["code"] = code
    return "record:" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _difference(present: Path, record: dict[str, Any] | None) -> str:
    """What tells a copied run from the run of its name already in the destination."""
    there, _ = rundir.load_record(present)
    if record is None or there is None:
        return "different run"
    said = setting_changes(there.get("config"), record.get("config"))
    said += [
        f"code of {w}: sha256 {a} -> {b}" for w, a, b in changed_code(there.get("code"), record.get("code"))
    ]
    if not said:
        return "same configuration and code, other results"
    return "; ".join(said[:3]) + (f"; and {len(said) - 3} more" if len(said) > 3 else "")


def files_identity(folder: Path) -> str:
    """For a run without a record: the names and contents of its plain files."""
    digest = hashlib.sha256()
    for item in _plain_files(folder):
        digest.update(item.name.encode() + b"\0")
        content = hashlib.sha256()
        with open(item, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                content.update(block)
        digest.update(content.digest())
    return "files:" + digest.hexdigest()


def _plain_files(folder: Path) -> list[Path]:
    """The regular files of a folder, symlinks, hidden files and everything else left out."""
    found = []
    for item in sorted(folder.iterdir()):
        try:
            mode = item.lstat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and not item.name.startswith("."):
            found.append(item)
    return found


def family(name: str, record: dict[str, Any] | None) -> str:
    """The name a run was first written under: its own, or the one it was renamed from by a merge."""
    original = record.get("merged_from") if record else None
    return original if isinstance(original, str) and RUN_NAME.match(original) else name


@dataclass
class Destination:
    """The runs already in one experiment folder of the destination: name -> (family, identity)."""

    folder: Path
    runs: dict[str, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> Destination:
        found = cls(folder)
        if folder.is_dir():
            remove_abandoned_staging(folder)
            for run in sorted(folder.iterdir()):
                if run.name.startswith(".") or run.is_symlink() or not run.is_dir():
                    continue
                record, _ = rundir.load_record(run)
                found.add(
                    run.name, family(run.name, record), identity(record) if record else files_identity(run)
                )
        return found

    def add(self, name: str, origin: str, ident: str) -> None:
        self.runs[name] = (origin, ident)

    def holds(self, origin: str, ident: str) -> bool:
        return any(o == origin and i == ident for o, i in self.runs.values())

    def free_name(self, name: str, origin: str, ident: str) -> str:
        """The run's own name where it is free, else its original name with a digest of the run."""
        if name not in self.runs and not (self.folder / name).exists():
            return name
        digest = ident.partition(":")[2]
        for length in (8, 16, 64):
            candidate = f"{origin[: MAX_NAME - length - 1]}~{digest[:length]}"
            if candidate not in self.runs and not (self.folder / candidate).exists():
                return candidate
        raise LogDirError(f"{self.folder / name}: no free name for a different run of the same name")


def _check_folders(sources: list[Path], dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise LogDirError(f"{dest}: is a file, not a log folder; give a folder to merge into")
    target = dest.resolve()
    for source in sources:
        if not source.is_dir():
            raise LogDirError(f"{source}: no such log folder")
        origin = source.resolve()
        if origin == target:
            raise LogDirError(f"{source}: is the destination itself")
        if target.is_relative_to(origin):
            raise LogDirError(f"{dest}: is inside the source {source}; merge into a folder outside it")
        if origin.is_relative_to(target):
            raise LogDirError(f"{source}: is inside the destination {dest}; move it out first")


def _check_destination(sources: list[Path], dest: Path) -> None:
    """Refuse, before copying anything, a destination whose experiment or run folders are symlinks
    (dangling or not) or files: a copy through them would land outside the destination."""
    problems: list[str] = []
    experiments = sorted(
        {
            e.name
            for s in sources
            for e in s.iterdir()
            if not e.name.startswith(".") and experiment_name(e.name) is None
        }
    )
    for name in experiments:
        problem = guards.escape_problem(dest, dest / name)
        if problem is None and (dest / name).is_dir():
            for run in sorted((dest / name).iterdir()):
                if not run.name.startswith(".") and run.is_symlink():
                    problems.append(guards.escape_problem(dest / name, run))
        elif problem is not None:
            problems.append(problem)
    if problems:
        raise LogDirError(problems + ["nothing was copied"])


# One merge at a time into a log folder: two at once would each copy a run the other is copying.
MERGE_LOCK = ".merge-lock"


def merge(
    sources: list[Path],
    dest: Path,
    include_unfinished: bool = False,
    waiting: Callable[[], None] = lambda: None,
) -> MergeResult:
    """Copy every run of the source log folders into dest, one merge into dest at a time (another
    waits, calling `waiting` once, then finds what this one copied)."""
    _check_folders(sources, dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LogDirError(f"cannot create the log folder {dest}: {exc.strerror or exc}")
    _check_destination(sources, dest)
    with claims.exclusive(dest / MERGE_LOCK, waiting):
        return _merge_all(sources, dest, include_unfinished)


def _merge_all(sources: list[Path], dest: Path, include_unfinished: bool) -> MergeResult:
    result = MergeResult()
    destinations: dict[str, Destination] = {}
    for source in sources:
        for experiment in sorted(source.iterdir()):
            if experiment.name.startswith(".") or experiment.name == rundir.BANDS:
                continue  # hidden, or derived from the runs: the destination's index rebuilds it
            if experiment.is_symlink():
                result.refused.append(f"{experiment}: a symlink (not followed)")
                continue
            if not experiment.is_dir():
                continue  # the source's own HParams record, notes, ...
            if experiment_name(experiment.name) is not None:
                result.refused.append(f"{experiment}: {experiment.name!r} is not an experiment name")
                continue
            if experiment.name not in destinations:
                destinations[experiment.name] = Destination.load(dest / experiment.name)
            for run in sorted(experiment.iterdir()):
                if not run.name.startswith("."):
                    _merge_run(run, destinations[experiment.name], include_unfinished, result)
    return result


def _merge_run(run: Path, into: Destination, include_unfinished: bool, result: MergeResult) -> None:
    if run.is_symlink():
        result.refused.append(f"{run}: a symlink (not followed)")
        return
    if not run.is_dir():
        return
    if not RUN_NAME.match(run.name):
        result.refused.append(f"{run}: {run.name!r} is not a run folder name")
        return
    record, problem = rundir.load_record(run)
    if problem is not None:
        result.refused.append(f"{run}: {problem}")
        return
    status = record["status"] if record else Status.UNFINISHED
    if status in UNFINISHED and not include_unfinished:
        result.unfinished.append(str(run))
        return
    origin = family(run.name, record)
    ident = identity(record) if record else files_identity(run)
    damage = verify.check(run, record, deep=True)
    if damage is not None:
        result.damaged.append(f"{run}: {damage}")
        return
    if into.holds(origin, ident):
        result.identical.append(str(run))
        return
    name = into.free_name(run.name, origin, ident)
    try:
        _copy_run(run, into.folder, name, record, origin)
    except OSError as exc:
        done = len(result.copied) + len(result.renamed)
        raise LogDirError(
            f"{into.folder / name}: cannot be written: {exc.strerror or exc}. The {done} run"
            f"{'' if done == 1 else 's'} copied before it are complete and nothing partial was left; "
            f"free space or fix permissions, then merge again"
        )
    into.add(name, origin, ident)
    if name == run.name:
        result.copied.append(str(run))
    else:
        result.renamed.append(
            (str(run), f"{into.folder.name}/{name}", _difference(into.folder / run.name, record))
        )


# A run being copied: <experiment>/.merge-<pid>-<random>/, renamed into place once complete.
STAGING = ".merge-"
# A staging folder of the earlier naming (no pid) this old is taken to be left by a killed merge.
OLD_STAGING_AGE = 3600.0


def _copy_run(run: Path, into: Path, name: str, record: dict[str, Any] | None, origin: str) -> None:
    """Copy a run's plain files into a hidden folder, then rename it into place in one step.

    While they are copied, its event files bear names TensorBoard does not read (tfevents ->
    tf-events), so that a merge killed mid-copy leaves no run in TensorBoard's list; they get their
    names back just before the folder is renamed, and the next merge removes what a killed one left."""
    into.mkdir(parents=True, exist_ok=True)
    staging = into / f"{STAGING}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        unread = []
        for item in _plain_files(run):
            target = staging / item.name.replace("tfevents", "tf-events", 1)
            shutil.copyfile(item, target, follow_symlinks=False)
            if target.name != item.name:
                unread.append((target, staging / item.name))
        if record is not None and name != run.name:
            rundir.write_record(staging, {**record, "run": name, "merged_from": origin})
        for target, real in unread:
            target.rename(real)
        staging.rename(into / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_abandoned_staging(folder: Path) -> None:
    """Remove the staging folders that killed merges left in an experiment folder: those of a
    process of this machine that is gone, and old ones of the earlier naming."""
    for item in folder.iterdir():
        if not item.name.startswith(STAGING) or item.is_symlink() or not item.is_dir():
            continue
        pid_text = item.name[len(STAGING) :].partition("-")[0]
        if pid_text.isdigit() and "-" in item.name[len(STAGING) :]:
            abandoned = not claims.pid_alive(int(pid_text))
        else:
            try:
                abandoned = time.time() - item.stat().st_mtime > OLD_STAGING_AGE
            except OSError:
                continue
        if abandoned:
            shutil.rmtree(item, ignore_errors=True)
