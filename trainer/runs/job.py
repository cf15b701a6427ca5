"""One run, start to finish: a clean folder, the resolved configuration, training, the final record."""

from __future__ import annotations

import datetime
import errno
import functools
import os
import platform
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer import __version__
from trainer.core.status import Status
from trainer.kinds import registry as kinds
from trainer.runs import rundir
from trainer.runs.claims import Claim, ClaimLost, owns
from trainer.spec.plan import RunPlan
from trainer.spec.schema import as_data
from trainer.spec.units import engine_record
from trainer.tensorboard import curves
from trainer.tensorboard.endings import end_killed_run, end_session
from trainer.tensorboard.hparams import hparams_of

# Errors of the file system itself: no run can succeed until someone frees space or fixes rights.
LOGDIR_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
# A run whose claim another sweep took over: its result was discarded, the other sweep's stands.
LOST = Status.LOST


@dataclass
class Summary:
    """The one line a sweep keeps per run."""

    folder: str
    status: str
    metrics: dict[str, Any]
    duration: float
    error: str | None = None
    logdir_fault: bool = False  # the log folder itself is unusable: stop the sweep


def resolved_values(run: RunPlan) -> dict[str, float]:
    """Numbers the spec left open, as the run used them."""
    return {"train.batch_size": run.batch_size, "train.steps": run.steps}


def config_text(run: RunPlan, data: dict[str, Any] | None = None) -> str:
    """The resolved configuration as YAML, with what the spec left open spelled out in comments."""
    header = [f"# {run.folder}", f"# from {Path(run.spec_path).name}"]
    if run.swept:
        header.append("# swept: " + ", ".join(f"{k}={v!r}" for k, v in run.swept))
    header.append(f"# resolved: steps={run.steps}, batch_size={run.batch_size} of {run.rows} rows")
    data = run.config_data if data is None else data
    return "\n".join(header) + "\n" + "".join(_yaml_entry(key, value) for key, value in data.items())


_YAML_ENTRIES: dict[str, str] = {}


def _yaml_entry(key: str, value: Any) -> str:
    """The YAML of one top-level key of a configuration, as a dump of the whole would write it.

    The runs of a sweep share most sections, so each distinct one is dumped once; libyaml's dumper
    where it is built. (A run's config.yaml took 10 ms with the pure-Python dumper, 0.6 with libyaml
    and about 0.1 with the sections cached.)"""
    seen = repr((key, value))  # repr, not JSON: tells 1 from 1.0, True and '1'
    text = _YAML_ENTRIES.get(seen)
    if text is None:
        if len(_YAML_ENTRIES) > 4096:
            _YAML_ENTRIES.clear()
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        # The top level of a configuration is a block mapping; a mapping of one scalar would be
        # written in flow style unless told otherwise.
        flow = None if isinstance(value, (dict, list)) else False
        text = yaml.dump({key: value}, Dumper=dumper, sort_keys=False, default_flow_style=flow, width=100)
        _YAML_ENTRIES[seen] = text
    return text


@functools.lru_cache(maxsize=1)
def project_commit() -> str | None:
    """The git commit of the project's own code, where it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    import tensorboard
    import torch

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that would take torch along when pickled
        "tensorboard": tensorboard.__version__,
        "trainer": __version__,
    }


def _prefixes() -> list[tuple[str, str]]:
    places = {
        sysconfig.get_paths()["purelib"]: "",
        sysconfig.get_paths()["platlib"]: "",
        str(Path(__file__).resolve().parents[1]): "",
        os.getcwd(): "",
        sys.prefix: "",
        str(Path.home()): "~",
    }
    return sorted(
        ((base + os.sep, name + os.sep if name else "") for base, name in places.items() if base),
        key=lambda pair: -len(pair[0]),
    )


def portable(text: str) -> str:
    """Text with this machine's folders taken out, so that a log folder holds no absolute paths."""
    for base, name in _prefixes():
        text = text.replace(base, name)
    return text


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def base_record(run: RunPlan, status: str, error: str | None) -> dict[str, Any]:
    """What every record says of its run, whoever writes it (needs no torch: the sweep's parent
    writes it for a run whose worker died)."""
    config = run.config_data
    return {
        "format": rundir.RECORD_FORMAT,
        "experiment": run.experiment,
        "run": run.name,
        "status": status,
        "config_digest": rundir.data_digest(config),
        "swept": dict(run.swept),
        "hparams": hparams_of(run.config, run.experiment, resolved_values(run)),
        "metrics": {},
        "steps": run.steps,
        "seed": run.config.train.seed,
        "error": error,
        "config": config,
        "spec": kinds.shown_path(run.spec_path),
        "code": code_record(run),
        "report": as_data(run.report),
        "true_weights": list(run.true_weights) if run.true_weights is not None else None,
    }


def code_record(run: RunPlan) -> dict[str, Any]:
    """Which user code the run called, by where the spec names it: import path, module file, sha256."""
    for where, path in run.code:  # a worker may not have imported all of it yet (a hook, a metric)
        try:
            kinds.import_attribute(path, run.data_folder, where)
        except Exception:  # the plan imported it; should that fail here, the record says no file
            pass
    return {where: kinds.code_of(path) for where, path in run.code}


def execute(
    run: RunPlan,
    logdir: Path,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int], None] = lambda steps: None,
    claim: Claim | None = None,
    engine: dict[str, Any] | None = None,
) -> Summary:
    """Run one configuration into a clean folder and write its record; never raises for a run's fault.

    With a claim, the record is written only while the claim is still this sweep's (see
    rundir.commit_record); a run claimed by another sweep meanwhile ends as 'lost', writing nothing."""
    from trainer.training.loop import train

    folder = logdir / run.folder
    clock = time.monotonic()
    record = start_record(run, engine or {"name": "loop", "reason": None})
    sink = None
    try:
        sink = open_run(run, folder, record)
        record_outcome(run, folder, record, train(run, sink, should_stop, on_progress))
    except Exception as exc:  # the run's fault is recorded; the sweep goes on
        if record_fault(folder, record, sink, claim, exc):
            return _finish(folder, record, clock, logdir_fault=True, claim=claim)
    finally:
        _close(sink)
    return _finish(folder, record, clock, claim=claim)


def execute_unit(
    unit: Any,
    logdir: Path,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int], None] = lambda steps: None,
    claims: dict[str, Claim] | None = None,
) -> list[Summary]:
    """Run a unit of work (trainer.spec.units.Unit: one run, or a group for the batched engine) into the
    log folder, one summary per run; never raises for a run's fault. `claims` by run folder."""
    claims = claims or {}
    if unit.engine != "batched":
        (run,) = unit.runs
        return [execute(run, logdir, should_stop, on_progress, claims.get(run.folder), engine_record(unit))]
    return execute_group(list(unit.runs), logdir, should_stop, on_progress, claims, engine_record(unit))


def execute_group(
    runs: list[RunPlan],
    logdir: Path,
    should_stop: Callable[[], bool],
    on_progress: Callable[[int], None],
    claims: dict[str, Claim],
    engine: dict[str, Any],
) -> list[Summary]:
    """Train a group as one program (trainer.batched), each run into its own folder with its own
    record. Should the program itself fail, each run is trained by the loop engine instead, with
    the reason in its record, so that no run pays for another's fault."""
    from trainer.training.batched import train_group

    clock = time.monotonic()
    records = [start_record(run, engine) for run in runs]
    folders = [logdir / run.folder for run in runs]
    sinks: list[Any] = []
    try:
        for run, folder, record in zip(runs, folders, records):
            sinks.append(open_run(run, folder, record))
        outcomes = train_group(runs, sinks, should_stop, on_progress)
    except Exception as exc:
        for sink in sinks:
            _close(sink)
        reason = f"the batched program failed: {portable(f'{type(exc).__name__}: {exc}')}"
        fallen: list[Summary] = []
        for run in runs:
            engine = {"name": "loop", "reason": reason}
            fallen.append(execute(run, logdir, should_stop, on_progress, claims.get(run.folder), engine))
            if fallen[-1].logdir_fault:  # a full or read-only disk: the rest stay unfinished
                break
        return fallen
    ended = []
    for run, folder, record, sink, outcome in zip(runs, folders, records, sinks, outcomes):
        claim = claims.get(run.folder)
        logdir_fault = False
        try:
            record_outcome(run, folder, record, outcome)
        except Exception as exc:
            logdir_fault = record_fault(folder, record, sink, claim, exc)
        finally:
            _close(sink)
        ended.append(Unrecorded(folder, record, claim, logdir_fault))
    return _finish_all(ended, clock)


def start_record(run: RunPlan, engine: dict[str, Any]) -> dict[str, Any]:
    """A run's record as it starts: failed until its outcome says otherwise."""
    record = base_record(run, Status.FAILED, None)
    record.update(
        {
            "steps_done": 0,
            "resolved": {
                "steps": run.steps,
                "batch_size": run.batch_size,
                "rows": run.rows,
                "validation_rows": run.validation_rows,
                "input_shape": list(run.input_shape),
                "outputs": run.outputs,
                "classes": run.classes,
                "device": None,
            },
            "engine": engine,
            "started": _now(),
            "ended": None,
            "duration_s": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "versions": versions(),
            "commit": project_commit(),
        }
    )
    return record


def open_run(run: RunPlan, folder: Path, record: dict[str, Any]) -> Any:
    """A clean run folder with the resolved configuration, and the sink writing its event file."""
    from trainer.tensorboard.sink import TensorBoardSink

    # A half-written event file left beside a new one would show doubled curves.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    text = config_text(run, record["config"])
    (folder / rundir.CONFIG).write_text(text, encoding="utf-8")
    return TensorBoardSink(folder, run.config.log, record["hparams"], text)


def record_outcome(run: RunPlan, folder: Path, record: dict[str, Any], outcome: Any) -> None:
    """Put a trained run's outcome in its record, and keep its final weights."""
    record.update(
        status=outcome.status,
        metrics=outcome.metrics,
        steps_done=outcome.steps_done,
        final_weights=outcome.final_weights,
        weights_sha256=outcome.weights_sha256,
        curve=curves.record_curve(outcome.eval_tags, outcome.history, run.steps),
    )
    record["resolved"]["device"] = outcome.device
    if outcome.status == Status.COMPLETE and run.config.log.checkpoint == "final":
        save_checkpoint(folder, outcome.model)
        record["checkpoint"] = rundir.CHECKPOINT


def record_fault(
    folder: Path, record: dict[str, Any], sink: Any, claim: Claim | None, exc: Exception
) -> bool:
    """Record a run's fault (its event file ends, its traceback is kept); whether the log folder
    itself is at fault (a full or read-only disk), which stops the sweep."""
    # A full or read-only disk is no fault of the run: it is left to be run again once that is fixed.
    logdir_fault = isinstance(exc, OSError) and exc.errno in LOGDIR_ERRNOS
    record.update(
        status=Status.INTERRUPTED if logdir_fault else Status.FAILED,
        error=portable(f"{type(exc).__name__}: {exc}"),
    )
    try:
        if claim is not None and not owns(claim):
            raise ClaimLost(claim.path)  # the folder is another sweep's now: write nothing there
        if sink is not None and sink.events is not None:
            sink.finish(record["status"], 0, {}, None)
        elif folder.is_dir():  # it failed before its event file began
            end_session(folder, record["hparams"], record["status"])
    except Exception:
        pass
    try:
        if claim is None or owns(claim):
            (folder / rundir.TRACEBACK).write_text(portable(traceback.format_exc()), encoding="utf-8")
    except OSError:
        pass
    return logdir_fault


def _close(sink: Any) -> None:
    if sink is not None:
        try:
            sink.close()
        except OSError:
            pass


def save_checkpoint(folder: Path, model: Any) -> None:
    """The model's final state_dict, on the CPU, written atomically (see trainer.checkpoint)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({name: t.detach().cpu() for name, t in model.state_dict().items()}, buffer)
    # Made durable with the run's record (see rundir.commit_record).
    rundir.write_atomic(folder / rundir.CHECKPOINT, buffer.getvalue(), durable=False)


@dataclass
class Unrecorded:
    """A run whose files are complete, its record still to write."""

    folder: Path
    record: dict[str, Any]
    claim: Claim | None = None
    logdir_fault: bool = False


def _finish(
    folder: Path,
    record: dict[str, Any],
    clock: float,
    logdir_fault: bool = False,
    claim: Claim | None = None,
) -> Summary:
    return _finish_all([Unrecorded(folder, record, claim, logdir_fault)], clock)[0]


def _finish_all(ended: list[Unrecorded], clock: float) -> list[Summary]:
    """The records of runs whose files are complete, stamped with their end and written."""
    duration = round(time.monotonic() - clock, 3)
    for run in ended:
        run.record.update(ended=_now(), duration_s=duration)
    return commit_all(ended)


def commit(
    folder: Path, record: dict[str, Any], logdir_fault: bool = False, claim: Claim | None = None
) -> Summary:
    """Write the record of a run whose files are complete (see commit_all)."""
    return commit_all([Unrecorded(folder, record, claim, logdir_fault)])[0]


def commit_all(ended: list[Unrecorded]) -> list[Summary]:
    """Write the records of runs whose files are complete: each staged, all made durable at once,
    then each moved into place while its claim is still this sweep's (see rundir.commit_record).
    Each summary says what became of its run (lost to another sweep, or unfinished when its record
    could not be written)."""
    staged: list[Path | OSError] = []
    for run in ended:
        try:
            staged.append(rundir.stage_record(run.folder, run.record))
        except OSError as exc:
            staged.append(exc)
    ready = [(run, path) for run, path in zip(ended, staged) if isinstance(path, Path)]
    try:
        rundir.make_durable(
            [path for _, path in ready]
            + [run.folder / name for run, _ in ready for name in run.record["files"]]
        )
    except OSError as exc:
        for _, path in ready:
            path.unlink(missing_ok=True)
        staged = [exc for _ in staged]
    return [_commit(run, path) for run, path in zip(ended, staged)]


def _commit(run: Unrecorded, staged: Path | OSError) -> Summary:
    folder, record, logdir_fault = run.folder, run.record, run.logdir_fault
    duration = record.get("duration_s") or 0.0
    try:
        if isinstance(staged, OSError):
            raise staged
        rundir.commit_record(folder, record, run.claim, staged)
    except ClaimLost:
        return Summary(
            f"{record['experiment']}/{record['run']}",
            LOST,
            {},
            duration,
            "another sweep took the run over while this one was paused; this result was discarded",
        )
    except OSError as exc:  # with no record the run counts as unfinished: the next sweep runs it again
        logdir_fault = logdir_fault or exc.errno in LOGDIR_ERRNOS
        record["error"] = record["error"] or f"cannot write {folder / rundir.RECORD}: {exc.strerror}"
        record["status"] = Status.INTERRUPTED if logdir_fault else Status.FAILED
    return Summary(
        f"{record['experiment']}/{record['run']}",
        record["status"],
        record["metrics"],
        duration,
        record["error"],
        logdir_fault,
    )


def record_ended(logdir: Path, run: RunPlan, status: str, error: str, claim: Claim | None = None) -> Summary:
    """Write the record (and a session end) of a run that could not write its own: its worker
    died, or the sweep stopped it before its results came back."""
    folder = logdir / run.folder
    record = base_record(run, status, error)
    if claim is not None and not owns(claim):
        return Summary(run.folder, LOST, {}, 0.0, "taken over by another sweep")
    try:  # the session end, so TensorBoard agrees
        folder.mkdir(parents=True, exist_ok=True)
        end_killed_run(folder, record["hparams"], status)
    except OSError:
        pass
    try:
        rundir.commit_record(folder, record, claim)
    except ClaimLost:
        return Summary(run.folder, LOST, {}, 0.0, "taken over by another sweep")
    except OSError as exc:
        error = f"{error}; and its record could not be written: {exc.strerror}"
    return Summary(run.folder, status, {}, 0.0, error)
