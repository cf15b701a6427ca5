"""The command line's arguments: every command with its options and their help, and nothing else."""

from __future__ import annotations

import argparse
import os

from trainer.core.version import __version__
from trainer.executors import EXECUTORS
from trainer.reporting import tables as report


def parser() -> argparse.ArgumentParser:
    """Every command, its arguments and their help."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer", description="YAML experiment specs in, TensorBoard logs out."
    )
    parser.add_argument("--version", action="version", version=f"hparam-trainer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def specs(p: argparse.ArgumentParser, many: bool = True) -> None:
        if many:
            p.add_argument("specs", nargs="+", metavar="SPEC", help="experiment spec files (YAML)")
        else:
            p.add_argument(
                "specs",
                nargs=1,
                metavar="SPEC",
                help="an experiment spec file (YAML); pin its swept keys with --set",
            )
        every = "every spec" if many else "the spec"
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"override a setting in {every}, e.g. --set optimizer.lr=0.05 (repeatable)",
        )
        if many:
            p.add_argument("--allow-large", action="store_true", help="allow sweeps of more than 10,000 runs")

    def running(p: argparse.ArgumentParser, many: bool = True) -> None:
        p.add_argument("--logdir", default="logs", type=folder, help="log folder (default: logs)")
        p.add_argument(
            "--force",
            action="store_true",
            help="rerun runs even if complete, replacing them"
            if many
            else "run it even if it is complete, replacing it",
        )
        p.add_argument(
            "--rerun-failed",
            action="store_true",
            help="rerun runs that failed before" if many else "run it again if it failed before",
        )
        p.add_argument(
            "--quiet",
            action="store_true",
            help="print only errors and the one-line summary (no progress, no table)",
        )

    p = sub.add_parser(
        "sweep",
        help="run every run of every spec",
        description="Run every run of every spec, in a pool of worker processes.",
    )
    specs(p)
    running(p)
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: one per core)"
    )
    p.add_argument(
        "--executor",
        choices=tuple(EXECUTORS),
        default="local",
        help="where runs run: local worker processes (default), Ray tasks on this machine or a "
        "cluster (needs the ray extra), or Slurm jobs (needs the slurm extra)",
    )
    p.add_argument(
        "--executor-opt",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the chosen executor, e.g. partition=gpu or time=60 for slurm, address=HOST:PORT "
        "for ray (repeatable; the options are listed in docs/cluster.md)",
    )
    p.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="with --executor ray: the head of a running Ray cluster, or 'auto', as --executor-opt "
        "address=HOST:PORT (default: RAY_ADDRESS, "
        "else a Ray instance started on this machine with --workers CPUs)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the planned runs; write nothing")

    p = sub.add_parser(
        "run",
        help="run one configuration in this process",
        description="Run the one configuration of a spec in this process.",
    )
    specs(p, many=False)
    running(p, many=False)

    p = sub.add_parser(
        "check",
        help="validate specs; run nothing",
        description="Validate specs and count their runs; run nothing.",
    )
    specs(p)

    p = sub.add_parser(
        "status",
        help="list the runs of a log folder and their states",
        description="List the runs of a log folder: state, final loss, distance, the step each "
        "converged at, the step a diverged, failed or interrupted run stopped at. "
        "Exit status 1 when some run is damaged.",
    )
    log_folder(p)
    status_options(p)
    p.add_argument(
        "--verify",
        action="store_true",
        help="read every finished run's files: event file checksums, config, checkpoint",
    )

    p = sub.add_parser(
        "index",
        help="rebuild the log folder's HParams experiment record",
        description="Rebuild the log folder's HParams experiment record.",
    )
    log_folder(p)
    p.add_argument(
        "--focus",
        action="append",
        default=[],
        metavar="EXPERIMENT",
        help="declare the columns of these experiments' runs (their own metrics, such as val/accuracy), "
        "instead of those every run shares (repeatable; the next sweep or merge goes back to all)",
    )

    p = sub.add_parser(
        "report",
        help="what the runs show over their seeds: report.md with pictures",
        description="Group the runs of each experiment by configuration over their seeds; write the "
        "groups' statistics, their ranking, each setting's effect and pictures to report.md in --out.",
    )
    log_folder(p)
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help="report on these only (default: all)")
    p.add_argument(
        "--out",
        default="reports",
        type=folder,
        help="folder for report.md and its pictures (default: reports)",
    )
    p.add_argument(
        "--readme",
        metavar="FILE",
        help="also put the summary into this Markdown file, between its <!-- report:start --> and "
        "<!-- report:end --> lines",
    )

    p = sub.add_parser(
        "merge",
        help="bring teammates' log folders together",
        description="Copy teammates' runs into one log folder and rebuild its HParams record.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="log folders to copy runs from")
    p.add_argument("--into", required=True, metavar="DEST", help="log folder to merge into")
    p.add_argument(
        "--include-unfinished",
        action="store_true",
        help="also copy runs that have no final record (failed runs are always copied)",
    )
    p = sub.add_parser(
        "compare",
        help="two log folders side by side",
        description="The configurations of two log folders (yours and a teammate's, before and after a "
        "code change), matched by their settings over their seeds: each side's runs, mean and standard "
        "deviation of a metric, the difference, and whether other code made them.",
    )
    p.add_argument("a", type=folder, metavar="LOGDIR_A", help="a log folder")
    p.add_argument("b", type=folder, metavar="LOGDIR_B", help="the log folder to compare it with")
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT", help="compare this experiment only")
    p.add_argument(
        "--metric",
        metavar="METRIC",
        help="the final metric to compare (default: final/val/loss where rows are held out, else "
        "final/train/loss)",
    )
    p.add_argument(
        "--format",
        dest="fmt",
        choices=["table", "csv", "json"],
        default="table",
        help="a table (default), CSV, or JSON lines of every metric",
    )
    return parser


def status_options(p: argparse.ArgumentParser) -> None:
    """The status command's table options: which runs, in what order, which columns, what format."""
    columns = ", ".join(report.COLUMNS)
    p.add_argument(
        "--sort",
        metavar="COLUMN",
        help=f"sort by a column ({columns}), a setting (optimizer.lr, or its last part: lr) or a "
        f"metric (best/val/accuracy); runs without a value last (default: by run name, numbers by value)",
    )
    p.add_argument(
        "--format",
        dest="fmt",
        choices=["table", "csv", "json"],
        default="table",
        help="a table for people (default), CSV with a header row, or JSON lines (one object per run, "
        "for jq); CSV and JSON hold every column unless --columns names some",
    )
    p.add_argument(
        "--columns",
        metavar="A,B,...",
        help="the columns to show, in order: run, state, steps, time_s, engine, device, code, a status "
        "column, a setting (optimizer.lr) or a metric (final/val/loss, best/val/accuracy)",
    )
    p.add_argument("--reverse", action="store_true", help="reverse the order")
    p.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs whose column or setting has this value, e.g. --filter status=diverged, "
        "--filter batch_size=1 (repeatable: all must match)",
    )


def log_folder(p: argparse.ArgumentParser) -> None:
    """The log folder a command reads, as its optional first argument."""
    p.add_argument("logdir", nargs="?", default="logs", type=folder, help="log folder (default: logs)")


def folder(text: str) -> str:
    """A folder's name as given; an empty one would mean the current folder, unasked."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name is no folder; give its path")
    return text
