"""The sweep service: what `python -m trainer sweep` and `run`, and the Python API's sweep(), all
call once their specs are planned. It runs the runs through the driver (trainer.executors.driver),
rebuilds the log folder's HParams record, prints the summary and says the exit status."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.core.errors import LogDirError
from trainer.core.hints import trainer_command
from trainer.core.visible import visible, visible_lines
from trainer.reporting import summary as report

if TYPE_CHECKING:
    from trainer.spec.plan import RunPlan

EXIT_FAILED_RUNS = 1
EXIT_INTERRUPTED = 130


@dataclass
class SweepRequest:
    """What a caller asks of a sweep, besides its planned runs."""

    command: str  # "sweep" or "run": how the commands it suggests begin
    specs: list[str]
    overrides: list[str]
    logdir: str
    workers: int  # 0: in this process
    force: bool = False
    rerun_failed: bool = False
    quiet: bool = False
    executor: str = "local"
    option_texts: list[str] = field(default_factory=list)  # the executor's options as KEY=VALUE texts
    executor_options: Any = None  # the options given, checked, by check_executor
    again: str | None = None  # how the caller says "the same again", where not the command line
    continue_with: Callable[[str], tuple[str, str]] | None = None  # replace and keep, said the caller's way


def check_executor(
    request: SweepRequest, options: dict[str, Any] | None = None, running: bool = True
) -> None:
    """Refuse, before anything is planned, an executor that is none, options it does not have, or
    (where the sweep is to run) one that cannot run here; the options given, from `options` (a
    mapping) or request.option_texts, are kept in request.executor_options."""
    from trainer.executors.base import executor, given_options, require

    executor(request.executor)
    if options is not None:  # the API's mapping
        request.executor_options = given_options(request.executor, options, "executor_options:")
    else:
        request.executor_options = given_options(request.executor, request.option_texts)
    if options is not None:
        request.option_texts = [f"{k}={v}" for k, v in options.items()]
    if running:
        require(request.executor)


def studies_summary(searches: dict[str, Any], logdir: Path, records: list[dict[str, Any]]) -> list[str]:
    """A line per search: its trials by state, the best trial's mean, the steps pruning saved."""
    from trainer.reporting.search import summary_lines

    lines = []
    for name, search in searches.items():
        lines += summary_lines(search, [r for r in records if r["experiment"] == name])
    return lines


def run_sweep(runs: list[RunPlan], args: SweepRequest, progress: Any = None) -> int:
    """Run the planned runs as the request says, rebuild the log folder's HParams record, and print
    the summary; the exit status (0, EXIT_FAILED_RUNS, EXIT_INTERRUPTED, or 2 for a fault of the log
    folder or of the executor)."""
    from trainer.executors.driver import ChangedConfig, Options, run_all
    from trainer.executors.progress import Progress
    from trainer.reporting import index

    logdir = Path(args.logdir)
    progress = progress or Progress(enabled=not args.quiet)
    try:
        options = Options(logdir, args.workers, args.force, args.rerun_failed, progress)
        options.executor = args.executor
        options.executor_options = args.executor_options
        options.searches = getattr(runs, "searches", {})
        result = run_all(runs, options)
    except ChangedConfig as changed:
        raise LogDirError(_changed_spec(changed, args)) from None
    records = index.records(logdir)
    try:
        index.rebuild(logdir, records)
    except OSError as exc:
        print(
            f"warning: the HParams record of {visible(logdir)} could not be rebuilt: {exc.strerror}",
            file=sys.stderr,
        )
    planned = {r.folder for r in runs} - {run.folder for run, _ in result.changed}
    searched = {name for name, s in getattr(runs, "searches", {}).items() if s.draws_later}
    ours = [r for r in records if r["folder"] in planned or r["experiment"] in searched]
    # The Python API's sweep() says its own call; the command line, the command that ran.
    command = args.again or (f"{trainer_command()} {shlex.join(sys.argv[1:])}" if sys.argv[1:] else "")
    total = len(runs) + sum(s.total_runs for s in getattr(runs, "searches", {}).values() if s.draws_later)
    for line in report.sweep_summary(ours, result, logdir, command or "the same command", total, args.quiet):
        print(visible_lines(line))
    if not args.quiet:
        for line in studies_summary(getattr(runs, "searches", {}), logdir, ours):
            print(visible(line))
    if result.interrupted:
        return EXIT_INTERRUPTED
    if result.changed:
        for paragraph in _changed_spec(ChangedConfig(logdir, result.changed), args, meanwhile=True):
            print(f"error: {visible_lines(paragraph)}", file=sys.stderr)
        return 2
    if result.logdir_fault or result.startup_fault:
        return 2
    return EXIT_FAILED_RUNS if result.failed else 0


def _changed_spec(changed: Any, args: SweepRequest, meanwhile: bool = False) -> list[str]:
    """A paragraph per experiment whose finished runs a changed spec would replace, with the commands
    that replace them or keep both (or, where args.continue_with says them another way, such as the
    Python API's arguments, that)."""
    paragraphs = []
    continue_with = args.continue_with
    for (experiment, spec_path), group in changed.by_experiment().items():
        options = [o for text in args.overrides for o in ("--set", text)]
        if args.logdir != "logs":
            options += ["--logdir", args.logdir]
        if args.command == "sweep" and args.workers != (os.cpu_count() or 1):
            options += ["--workers", str(args.workers)]
        if args.command == "sweep" and args.executor != "local":
            options += ["--executor", args.executor]
            options += [o for text in args.option_texts for o in ("--executor-opt", text)]
        command = [args.command, spec_path, *options]
        new_name = _free_name(Path(args.logdir), experiment)
        what, first, others = changed.first_difference(group)
        if continue_with is not None:
            replace, keep = continue_with(new_name)
        else:
            replace = f"{trainer_command()} {shlex.join([*command, '--force'])}"
            keep = f"{trainer_command()} {shlex.join([*command, '--set', f'name={new_name}'])}"
        paragraphs.append(
            report.changed_spec(
                experiment,
                Path(args.logdir) / experiment,
                len(group),
                what,
                first,
                others,
                replace=replace,
                keep=keep,
                meanwhile=meanwhile,
            )
        )
    return paragraphs


def _free_name(logdir: Path, experiment: str) -> str:
    """The experiment's name with the first suffix -2, -3, ... that no folder has yet."""
    number = 2
    while (logdir / f"{experiment}-{number}").exists():
        number += 1
    return f"{experiment}-{number}"
