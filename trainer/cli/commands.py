"""The command line: sweep, run, check, status, index, merge, report, compare.

It imports little before it knows the command: a sweep starts its workers' fork server first, so
that torch's import there (seconds) overlaps everything else the sweep does before its first run."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.cli.parser import parser
from trainer.core.errors import UserError
from trainer.core.status import Status
from trainer.core.visible import visible, visible_lines
from trainer.reporting import tables as report
from trainer.service import EXIT_INTERRUPTED, SweepRequest, check_executor, run_sweep

if TYPE_CHECKING:
    from trainer.spec.plan import RunPlan

EXIT_CLOSED_PIPE = 141  # what a shell reports for a process ended by SIGPIPE, as `yes | head` is


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`status | head`): stop quietly, as Unix tools do.
        _silence_output()
        return EXIT_CLOSED_PIPE


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        for line in exc.problems:
            print(f"error: {visible_lines(line)}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:  # before runs start or after they end: nothing to record
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except OSError as exc:  # a file system fault no command foresaw: still one sentence
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"error: {visible(where)}{visible(exc.strerror or exc)}; nothing more was done", file=sys.stderr
        )
        return 2


def _silence_output() -> None:
    """Point stdout and stderr at /dev/null, so that flushing them at exit raises nothing more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass  # not a file descriptor (a test's capture): nothing will be flushed to a pipe
    os.close(devnull)


def _plan(args: argparse.Namespace) -> list[RunPlan]:
    from trainer.spec.sweep import plan

    return plan(args.specs, args.overrides, getattr(args, "allow_large", False))


def cmd_check(args: argparse.Namespace) -> int:
    runs = _plan(args)
    searches = {s.spec.path: s for s in getattr(runs, "searches", {}).values()}
    for spec in args.specs:
        search = searches.get(spec)
        if search is not None and search.draws_later:
            replicas = f"{search.replicas} replicate{'s' if search.replicas != 1 else ''}"
            print(f"{spec}: ok, {search.space.trials} trials x {replicas}, drawn as the study goes")
        else:
            count = sum(r.spec_path == spec for r in runs)
            print(f"{spec}: ok, {count} run{'s' if count != 1 else ''}")
        if search is not None:
            _print_search(search, runs)
    _print_imported(runs)
    return 0


def _print_search(search: Any, runs: list[RunPlan]) -> None:
    """The search space and, for methods that draw them up front, the trials drawn."""
    for line in search.space.lines():
        print(f"  {line}")
    print(f"  optimizes {search.metric or 'the main evaluation loss'} ({search.direction or 'minimize'})")
    if search.draws_later:
        return
    trials: dict[int, Any] = {}
    for run in runs:
        if run.experiment == search.experiment and run.trial is not None:
            trials.setdefault(run.trial.number, run.trial)
    if search.settings.method == "grid":
        return
    print(f"  drawn trials ({len(trials)}):")
    for number, trial in trials.items():
        values = ", ".join(f"{k}={_shown(v)}" for k, v in trial.params)
        print(f"    trial {number:0{search.width}d}: {values}")


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_imported(runs: list[RunPlan]) -> None:
    """Say which user code checking imported and ran (a spec that names code runs it)."""
    from trainer.kinds.registry import code_of

    paths = list(dict.fromkeys(path for run in runs for _, path in run.code))
    if paths:
        print(
            "imported and tried, to check the specs: "
            + ", ".join(f"{path} ({code_of(path)['file'] or 'installed'})" for path in paths)
        )


def _request(args: argparse.Namespace, workers: int) -> SweepRequest:
    request = SweepRequest(
        args.command,
        list(args.specs),
        list(args.overrides),
        args.logdir,
        workers,
        args.force,
        args.rerun_failed,
        args.quiet,
        getattr(args, "executor", "local"),
        list(getattr(args, "executor_opt", None) or []),
    )
    if getattr(args, "address", None) is not None:  # --address: Ray's own option, said the short way
        if request.executor != "ray":
            raise UserError("--address: names a Ray cluster, so it needs --executor ray")
        request.option_texts.append(f"address={args.address}")
    return request


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.dry_run and args.allow_large:
        from trainer.spec.sweep import refuse_long_listing

        refuse_long_listing(args.specs, args.overrides)
    request = _request(args, args.workers)
    if args.executor == "local" and not args.dry_run and args.workers >= 1:
        from trainer.executors.workers import prepare_workers

        prepare_workers()  # torch's import in the workers' fork server overlaps the planning
    check_executor(request, running=not args.dry_run)
    runs = _plan(args)
    if args.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {args.workers}")
    if args.dry_run:
        _print_imported(runs)
        for search in getattr(runs, "searches", {}).values():
            print(f"{search.spec.path}:")
            _print_search(search, runs)
        later = sum(s.total_runs for s in getattr(runs, "searches", {}).values() if s.draws_later)
        _print_plan(runs, Path(args.logdir), later)
        return 0
    return run_sweep(runs, request)


def cmd_run(args: argparse.Namespace) -> int:
    runs = _plan(args)
    for search in getattr(runs, "searches", {}).values():
        raise UserError(
            f"{search.spec.path}: searches ({search.settings.method}, {search.space.trials} trials); 'run' "
            f"runs one configuration: use 'sweep', or write the configuration out under another name"
        )
    if len(runs) != 1:
        keys = ", ".join(dict.fromkeys(k for r in runs for k in r.swept_keys))
        raise UserError(
            f"{args.specs[0]}: sweeps {len(runs)} runs; 'run' runs one. Pin the swept keys "
            f"({keys}) with --set KEY=VALUE, or use 'sweep'"
        )
    request = _request(args, 0)
    check_executor(request)
    return run_sweep(runs, request)


def _print_plan(runs: list[RunPlan], logdir: Path, later: int = 0) -> None:
    from trainer.run import rundir

    by_experiment: dict[str, list[RunPlan]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment, []).append(run)
    for experiment, group in by_experiment.items():
        keys = list(dict.fromkeys(k for r in group for k in r.swept_keys))
        varying = " x ".join(
            f"{k} ({len({repr(v) for r in group for kk, v in r.swept if kk == k})})" for k in keys
        )
        print(
            f"{experiment}: {len(group)} run{'s' if len(group) != 1 else ''}"
            + (f" over {varying}" if keys else "")
        )
        for run in group:
            state = rundir.state_of(logdir, run.experiment, run.name).state
            note = "" if state == Status.MISSING else f"  [{state}]"
            print(f"  {run.name}  ({run.steps} steps){note}")
    drawn = f", and {later} a TPE search draws as it goes" if later else ""
    print(f"{len(runs)} runs planned into {logdir}/{drawn} (dry run: nothing was written)")


def cmd_status(args: argparse.Namespace) -> int:
    logdir = Path(args.logdir)
    if not logdir.is_dir():
        raise UserError(f"{logdir}: no such log folder")
    return print_status(logdir, args)


def print_status(logdir: Path, args: argparse.Namespace) -> int:
    """The status table, as --sort, --reverse, --filter, --verify, --format and --columns ask; 1
    when some run is damaged."""
    fmt, columns = getattr(args, "fmt", "table"), getattr(args, "columns", None)
    if fmt == "table" and columns is None:
        lines, damaged = report.status_report(logdir, args.sort, args.filters, args.reverse, args.verify)
    else:
        from trainer.reporting.rows import status_output

        wanted = None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]
        if wanted == []:
            raise UserError("--columns: name at least one column, e.g. --columns run,state,final/val/loss")
        lines, damaged = status_output(
            logdir, fmt, wanted, args.sort, args.filters, args.reverse, args.verify
        )
    for line in lines:  # names are escaped in the table (tables.table), CSV (csv_cell) and JSON
        print(line)
    return 1 if damaged else 0


def cmd_index(args: argparse.Namespace) -> int:
    from trainer.reporting import index

    logdir = Path(args.logdir)
    if not logdir.is_dir():
        raise UserError(f"{logdir}: no such log folder")
    count, columns = index.rebuild(logdir, focus=args.focus)
    focused = f" of {', '.join(args.focus)}" if args.focus else ""
    print(
        f"{visible(logdir)}: HParams record rebuilt for {count} runs{visible(focused)}; hparam columns: "
        f"{visible(', '.join(columns)) or 'none'}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from trainer.reporting import writeup

    logdir = Path(args.logdir)
    if not logdir.is_dir():
        raise UserError(f"{logdir}: no such log folder")
    out = Path(args.out)
    readme = Path(args.readme) if args.readme else None
    if readme is not None:
        try:
            text = readme.read_text()
        except OSError as exc:
            raise UserError(f"{readme}: cannot be read: {exc.strerror or exc}")
        writeup.with_findings(text, [], str(readme))  # a file without markers is refused before any work
    summary = writeup.write(logdir, out, args.experiments)
    if readme is not None:
        readme.write_text(writeup.with_findings(text, summary, str(readme)))
    for line in writeup.terminal_lines(summary, out):
        print(visible(line))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from trainer.reporting.compare import compare_lines

    for name in (args.a, args.b):
        if not Path(name).is_dir():
            raise UserError(f"{name}: no such log folder")
    for line in compare_lines(Path(args.a), Path(args.b), args.experiment, args.metric, args.fmt):
        print(line)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from trainer.reporting import index
    from trainer.run.merge import merge

    def waiting() -> None:
        print(f"waiting for another merge into {args.into} to finish ...", file=sys.stderr, flush=True)

    result = merge([Path(s) for s in args.sources], Path(args.into), args.include_unfinished, waiting)
    for line in result.lines():  # each names runs of the teammates' folders
        print(visible(line))
    count, _ = index.rebuild(Path(args.into))
    print(f"{visible(args.into)}: HParams record rebuilt for {count} runs")
    return 1 if result.refused or result.damaged else 0


COMMANDS = {
    "sweep": cmd_sweep,
    "run": cmd_run,
    "check": cmd_check,
    "status": cmd_status,
    "index": cmd_index,
    "merge": cmd_merge,
    "compare": cmd_compare,
    "report": cmd_report,
}
