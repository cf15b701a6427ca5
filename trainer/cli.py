"""The command line: sweep, run, check, status, index, merge."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from trainer import guards, index, report
from trainer.errors import UserError
from trainer.progress import Progress
from trainer.sweep import RunPlan, plan

EXIT_FAILED_RUNS = 1
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer",
                                     description="YAML experiment specs in, TensorBoard logs out.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, many: bool = True) -> None:
        p.add_argument("specs", nargs="+" if many else 1, metavar="SPEC", help="experiment spec files (YAML)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting in every spec, e.g. --set optimizer.lr=0.05 (repeatable)")
        p.add_argument("--allow-large", action="store_true", help="allow sweeps of more than 10,000 runs")

    def running(p: argparse.ArgumentParser) -> None:
        p.add_argument("--logdir", default="logs", help="log folder (default: logs)")
        p.add_argument("--force", action="store_true", help="rerun runs that are already complete")
        p.add_argument("--rerun-failed", action="store_true", help="rerun runs that failed before")
        p.add_argument("--quiet", action="store_true", help="no progress output")

    p = sub.add_parser("sweep", help="run every run of every spec")
    common(p)
    running(p)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes (default: one per core)")
    p.add_argument("--dry-run", action="store_true", help="list the planned runs; write nothing")

    p = sub.add_parser("run", help="run one configuration in this process")
    common(p, many=False)
    running(p)

    p = sub.add_parser("check", help="validate specs; run nothing")
    common(p)

    for name, text in (("status", "list the runs of a log folder and their states"),
                       ("index", "rebuild the log folder's HParams experiment record")):
        p = sub.add_parser(name, help=text)
        p.add_argument("logdir", nargs="?", default="logs", help="log folder (default: logs)")
        if name == "status":
            p.add_argument("--verify", action="store_true",
                           help="read every finished run's files: event file checksums, config, checkpoint")

    p = sub.add_parser("merge", help="bring teammates' log folders together")
    p.add_argument("sources", nargs="+", metavar="SRC", help="log folders to copy runs from")
    p.add_argument("--into", required=True, metavar="DEST", help="log folder to merge into")
    p.add_argument("--include-unfinished", action="store_true",
                   help="also copy runs that have no final record (failed runs are always copied)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:     # before runs start or after they end: nothing to record
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:        # a file system fault no command foresaw: still one sentence
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; nothing more was done", file=sys.stderr)
        return 2


def _plan(args: argparse.Namespace) -> list[RunPlan]:
    return plan(args.specs, args.overrides, args.allow_large)


def cmd_check(args: argparse.Namespace) -> int:
    runs = _plan(args)
    for spec in args.specs:
        count = sum(r.spec_path == spec for r in runs)
        print(f"{spec}: ok, {count} run{'s' if count != 1 else ''}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.dry_run and args.allow_large:
        guards.refuse_long_listing(args.specs, args.overrides)
    runs = _plan(args)
    if args.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {args.workers}")
    if args.dry_run:
        _print_plan(runs, Path(args.logdir))
        return 0
    return _execute(runs, args, workers=args.workers)


def cmd_run(args: argparse.Namespace) -> int:
    runs = _plan(args)
    if len(runs) != 1:
        keys = ", ".join(dict.fromkeys(k for r in runs for k in r.swept_keys))
        raise UserError(f"{args.specs[0]}: sweeps {len(runs)} runs; 'run' runs one. Pin the swept keys "
                        f"({keys}) with --set KEY=VALUE, or use 'sweep'")
    return _execute(runs, args, workers=0)


def _execute(runs: list[RunPlan], args: argparse.Namespace, workers: int) -> int:
    from trainer.runner import Options, run_all

    logdir = Path(args.logdir)
    progress = Progress(enabled=not args.quiet)
    result = run_all(runs, Options(logdir, workers, args.force, args.rerun_failed, progress))
    records = index.records(logdir)
    try:
        index.rebuild(logdir, records)
    except OSError as exc:
        print(f"warning: the HParams record of {logdir} could not be rebuilt: {exc.strerror}", file=sys.stderr)
    planned = {r.folder for r in runs}
    ours = [r for r in records if r["folder"] in planned]
    command = "python -m trainer " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    for line in report.sweep_summary(ours, result, logdir, command or "the same command", len(runs)):
        print(line)
    if result.interrupted:
        return EXIT_INTERRUPTED
    if result.logdir_fault or result.startup_fault:
        return 2
    return EXIT_FAILED_RUNS if result.failed else 0


def _print_plan(runs: list[RunPlan], logdir: Path) -> None:
    from trainer import rundir
    by_experiment: dict[str, list[RunPlan]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment, []).append(run)
    for experiment, group in by_experiment.items():
        keys = list(dict.fromkeys(k for r in group for k in r.swept_keys))
        varying = " x ".join(f"{k} ({len({repr(v) for r in group for kk, v in r.swept if kk == k})})" for k in keys)
        print(f"{experiment}: {len(group)} run{'s' if len(group) != 1 else ''}" + (f" over {varying}" if keys else ""))
        for run in group:
            state = rundir.state_of(logdir, run.experiment, run.name).state
            note = "" if state == "missing" else f"  [{state}]"
            print(f"  {run.name}  ({run.steps} steps){note}")
    print(f"{len(runs)} runs planned into {logdir}/ (dry run: nothing was written)")


def cmd_status(args: argparse.Namespace) -> int:
    logdir = Path(args.logdir)
    if not logdir.is_dir():
        raise UserError(f"{logdir}: no such log folder")
    lines, damaged = report.status_report(logdir, args.verify)
    for line in lines:
        print(line)
    return 1 if damaged else 0


def cmd_index(args: argparse.Namespace) -> int:
    logdir = Path(args.logdir)
    if not logdir.is_dir():
        raise UserError(f"{logdir}: no such log folder")
    count, columns = index.rebuild(logdir)
    print(f"{logdir}: HParams record rebuilt for {count} runs; hparam columns: {', '.join(columns) or 'none'}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from trainer.merge import merge

    result = merge([Path(s) for s in args.sources], Path(args.into), args.include_unfinished)
    for line in result.lines():
        print(line)
    count, _ = index.rebuild(Path(args.into))
    print(f"{args.into}: HParams record rebuilt for {count} runs")
    return 1 if result.refused or result.damaged else 0


COMMANDS = {"sweep": cmd_sweep, "run": cmd_run, "check": cmd_check, "status": cmd_status,
            "index": cmd_index, "merge": cmd_merge}
