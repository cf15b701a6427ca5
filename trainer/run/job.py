"""One run, start to finish: a clean folder, the resolved configuration, training, the final record
(written by trainer.run.commit)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trainer.core.deadline import TimedOut, limit_of, time_limit
from trainer.core.status import Status
from trainer.run import resuming, rundir
from trainer.run.claims import Claim, ClaimLost
from trainer.run.commit import (
    LOGDIR_ERRNOS,
    LOST,
    Summary,
    Unrecorded,
    claim_allows,
    commit,
    finish,
    finish_all,
    record_ended,
)
from trainer.run.record import RunRecord, config_text, portable, start_record
from trainer.spec.plan import RunPlan
from trainer.spec.units import engine_record
from trainer.tensorboard import curves
from trainer.tensorboard.endings import end_session
from trainer.training.context import Judge, RunContext

# The executors take a run's summary, its commit and the record of a run killed from here too.
__all__ = ["LOST", "Summary", "commit", "execute", "execute_group", "execute_unit", "record_ended"]


def execute(run: RunPlan, logdir: Path, context: RunContext) -> Summary:
    """Run one configuration into a clean folder (or go on from the checkpoint in it) and write its
    record; never raises for a run's fault. context.on_checkpoint is told the run's folder after
    each checkpoint it writes there.

    With a claim, the record is written only while the claim is still this sweep's (see
    rundir.commit_record); a run claimed by another sweep meanwhile ends as 'lost', writing nothing."""
    from trainer.training.loop import train

    folder, claim = logdir / run.folder, context.claim(run)
    clock = time.monotonic()
    record = start_record(run, context.engine or {"name": "loop", "reason": None})
    sink = None
    try:
        resume, why_not = resuming.usable(run, folder, record) if claim_allows(claim) else (None, None)
        if resume is not None:
            resuming.reopen(folder)
            sink = new_sink(run, folder, record)
            record["resumed"] = {"from_step": resume.step}
            clock -= resume.seconds  # the run's time is its attempts' together
        else:
            sink = open_run(run, folder, record)
            if why_not is not None:
                record["started_over"] = why_not
        checkpoints = resuming.checkpoints(run, folder, record, clock, context.on_checkpoint)
        with time_limit(run.config.train.timeout), user_exits():
            outcome = train(run, sink, context, checkpoints, resume)
        record_outcome(run, folder, record, outcome)
    except (Exception, TimedOut) as exc:  # the run's fault is recorded; the sweep goes on
        if record_fault(folder, record, sink, claim, exc):
            return finish(folder, record, clock, logdir_fault=True, claim=claim)
    finally:
        _close(sink)
    return finish(folder, record, clock, claim=claim)


def execute_unit(
    unit: Any,
    logdir: Path,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int], None] = lambda steps: None,
    claims: dict[str, Claim] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    judge: Judge | None = None,
) -> list[Summary]:
    """Run a unit of work (trainer.spec.units.Unit: one run, or a group for the batched engine) into the
    log folder, one summary per run; never raises for a run's fault. `claims` by run folder; a run
    of the loop engine tells `on_checkpoint` its folder after each checkpoint."""
    context = RunContext(should_stop, on_progress, judge, on_checkpoint, claims or {}, engine_record(unit))
    if unit.engine != "batched":
        (run,) = unit.runs
        return [execute(run, logdir, context)]
    return execute_group(list(unit.runs), logdir, context)


def execute_group(runs: list[RunPlan], logdir: Path, context: RunContext) -> list[Summary]:
    """Train a group as one program (trainer.batched), each run into its own folder with its own
    record. Should the program itself fail, each run is trained by the loop engine instead, with
    the reason in its record, so that no run pays for another's fault."""
    from trainer.training.batched import train_group

    clock = time.monotonic()
    records = [start_record(run, context.engine) for run in runs]
    folders = [logdir / run.folder for run in runs]
    sinks: list[Any] = []
    done = [0]  # the steps the group has done, for runs that time out

    def progress(steps: int) -> None:
        done[0] = steps
        context.on_progress(steps)

    try:
        for run, folder, record in zip(runs, folders, records):
            sinks.append(open_run(run, folder, record))
        with time_limit(limit_of(runs)):
            outcomes = train_group(runs, sinks, dataclasses.replace(context, on_progress=progress))
    except TimedOut as exc:  # the group's time is up for each of its runs: no loop engine retries them
        exc.steps_done = done[0]
        ended = []
        for run, folder, record, sink in itertools.zip_longest(runs, folders, records, sinks):
            claim = context.claim(run)
            ended.append(Unrecorded(folder, record, claim, record_fault(folder, record, sink, claim, exc)))
            _close(sink)
        return finish_all(ended, clock)
    except Exception as exc:
        for sink in sinks:
            _close(sink)
        reason = f"the batched program failed: {portable(f'{type(exc).__name__}: {exc}')}"
        # The sweep follows a unit's checkpoints by one step count: a group's runs tell it none.
        alone = dataclasses.replace(context, engine={"name": "loop", "reason": reason}, on_checkpoint=None)
        fallen: list[Summary] = []
        for run in runs:
            fallen.append(execute(run, logdir, alone))
            if fallen[-1].logdir_fault:  # a full or read-only disk: the rest stay unfinished
                break
        return fallen
    ended = []
    for run, folder, record, sink, outcome in zip(runs, folders, records, sinks, outcomes):
        claim = context.claim(run)
        logdir_fault = False
        try:
            record_outcome(run, folder, record, outcome)
        except Exception as exc:
            logdir_fault = record_fault(folder, record, sink, claim, exc)
        finally:
            _close(sink)
        ended.append(Unrecorded(folder, record, claim, logdir_fault))
    return finish_all(ended, clock)


class UserExit(Exception):
    """User code called sys.exit(), or raised KeyboardInterrupt where no Ctrl-C raises it."""

    def __init__(self, message: str, steps_done: int):
        super().__init__(message)
        self.steps_done = steps_done


@contextlib.contextmanager
def user_exits() -> Iterator[None]:
    """sys.exit() in user code ends the run as failed, not the process running it; so does a
    KeyboardInterrupt where Ctrl-C raises none (a worker ignores it, and a sweep's own process turns
    it into a stop request: trainer.executors.stopping)."""
    try:
        yield
    except SystemExit as exc:
        raise UserExit(
            f"the user code called sys.exit({exc.code!r})", getattr(exc, "steps_done", 0)
        ) from None
    except KeyboardInterrupt as exc:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            raise  # Python's own Ctrl-C: a caller of ours that stops
        raise UserExit("the user code raised KeyboardInterrupt", getattr(exc, "steps_done", 0)) from None


def open_run(run: RunPlan, folder: Path, record: RunRecord) -> Any:
    """A clean run folder with the resolved configuration, and the sink writing its event file."""

    # A half-written event file left beside a new one would show doubled curves.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    text = config_text(run, record["config"])
    (folder / rundir.CONFIG).write_text(text, encoding="utf-8")
    return new_sink(run, folder, record, text)


def new_sink(run: RunPlan, folder: Path, record: RunRecord, text: str | None = None) -> Any:
    """The sink writing the run's values into its folder, as log.sinks asks (trainer.sinks)."""
    from trainer.sinks import build_sink

    text = config_text(run, record["config"]) if text is None else text
    return build_sink(run.config.log, folder, record["hparams"], text)


def record_outcome(run: RunPlan, folder: Path, record: RunRecord, outcome: Any) -> None:
    """Put a trained run's outcome in its record, and keep its final weights."""
    record.update(
        status=outcome.status,
        metrics=outcome.metrics,
        steps_done=outcome.steps_done,
        final_weights=outcome.final_weights,
        weights_sha256=outcome.weights_sha256,
        curve=curves.record_curve(outcome.eval_tags, outcome.history, run.steps),
    )
    if outcome.stopped is not None:
        record["stopped"] = outcome.stopped
    if outcome.best is not None:
        record["best"] = outcome.best
    record["resolved"]["device"] = outcome.device
    kept = run.config.log.checkpoint
    if outcome.status == Status.COMPLETE and kept in ("final", "both"):
        save_checkpoint(folder / rundir.CHECKPOINT, outcome.model.state_dict())
        record["checkpoint"] = rundir.CHECKPOINT
    if outcome.status == Status.COMPLETE and kept in ("best", "both") and outcome.best_state is not None:
        save_checkpoint(folder / rundir.BEST, outcome.best_state)
        record["best_checkpoint"] = rundir.BEST
    if outcome.status in (Status.COMPLETE, Status.DIVERGED):
        resuming.finished(folder)


def record_fault(
    folder: Path, record: RunRecord, sink: Any, claim: Claim | None, exc: Exception | TimedOut
) -> bool:
    """Record a run's fault (its event file ends, its traceback is kept); whether the log folder
    itself is at fault (a full or read-only disk), which stops the sweep."""
    # A full or read-only disk is no fault of the run: it is left to be run again once that is fixed.
    logdir_fault = isinstance(exc, OSError) and exc.errno in LOGDIR_ERRNOS
    record.update(
        status=Status.INTERRUPTED if logdir_fault else Status.FAILED,
        error=str(exc) if isinstance(exc, (TimedOut, UserExit)) else portable(f"{type(exc).__name__}: {exc}"),
        steps_done=getattr(exc, "steps_done", record.get("steps_done", 0)),
    )
    try:
        if not claim_allows(claim):
            raise ClaimLost(claim.path)  # the folder is another sweep's now: write nothing there
        if sink is not None:
            sink.fail(record["status"])
        elif folder.is_dir():  # it failed before its sink was made
            end_session(folder, record["hparams"], record["status"])
    except Exception:
        pass
    try:
        if claim_allows(claim):
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


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """A model's state_dict, on the CPU, written atomically (see trainer.run.checkpoint)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({name: t.detach().cpu() for name, t in state.items()}, buffer)
    # Made durable with the run's record (see rundir.commit_record).
    rundir.write_atomic(path, buffer.getvalue(), durable=False)
