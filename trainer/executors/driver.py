"""The sweep driver: which runs need running (trainer.run.selection), then the chosen executor
runs them (trainer.executors.base), and the tally of what became of each comes back.

The driver knows no executor: it picks one by name from the registry and hands it the units and a
Sweep. Ctrl-C, SIGTERM and SIGHUP are a flag for the whole sweep, wherever its runs are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.executors.base import executor, given_options, options_of, spec_options
from trainer.executors.progress import Progress
from trainer.executors.schedule import Sweep, drive
from trainer.executors.stopping import StopRequest
from trainer.run.claims import Held
from trainer.run.selection import (
    ChangedConfig,
    Report,
    check_inside,
    check_writable,
    recorded_otherwise,
    select,
)
from trainer.run.study import Studies
from trainer.spec.plan import RunPlan
from trainer.spec.searches import Search

__all__ = ["ChangedConfig", "Options", "Report", "run_all"]


@dataclass
class Options:
    logdir: Path
    workers: int = 1  # 0: run in this process
    force: bool = False  # rerun complete runs too
    rerun_failed: bool = False  # rerun runs that failed before
    progress: Progress | None = None
    executor: str = "local"  # where runs run: a name in trainer.executors.EXECUTORS
    executor_options: Any = None  # its options: KEY=VALUE texts, or a mapping of them
    searches: dict[str, Search] = field(default_factory=dict)  # the specs' searches, by experiment


def run_all(runs: list[RunPlan], opts: Options) -> Report:
    """Run what needs running; returns the report (the caller prints it)."""
    report = Report()
    with StopRequest() as stop:
        todo, seen = select(runs, opts.logdir, opts.force, opts.rerun_failed, report)
        studies, total = None, len(runs)
        if opts.searches:
            check_inside(runs, opts.logdir)
            check_writable(opts.logdir)  # after select: a refused sweep leaves the folder untouched
            studies = Studies(opts.searches, opts.logdir, fresh=opts.force)  # in each experiment's folder
            earlier = studies.so_far()  # a TPE search's trials drawn by sweeps before this one
            if earlier:
                more, more_seen = select(earlier, opts.logdir, opts.force, opts.rerun_failed, report)
                todo, runs = todo + more, runs + earlier
                seen.update(more_seen)
            total = len(runs) + studies.left_to_draw()
            studies.start(todo)
        progress = opts.progress or Progress(enabled=False)
        progress.start(total, len(runs) - len(todo))
        if todo or (studies is not None and studies.left_to_draw()):
            check_inside(todo, opts.logdir)
            check_writable(opts.logdir)  # after select: a refused sweep leaves the folder untouched
            # With no workers, runs run in this process, whatever the executor.
            name = "local" if opts.workers == 0 else opts.executor
            given = given_options(name, opts.executor_options if name == opts.executor else None)
            options = options_of(name, given)
            for section in {run.executor for run in todo}:  # the specs' executor: sections, checked first
                spec_options(name, section, given)
            claims = Held(opts.logdir)
            folders = {str(Path(r.data_folder).resolve()) for r in todo}
            if studies is not None:
                folders |= studies.data_folders()
            sweep = Sweep(
                opts.logdir, opts.workers, seen, report, progress, stop, claims, studies, folders, given=given
            )
            try:
                with executor(name).start(sweep, options) as backend:
                    drive(backend, todo, sweep)
            finally:
                claims.close()
            recorded_otherwise(todo, opts.logdir, report)
        progress.close()
        report.interrupted = stop.is_set()
    return report
