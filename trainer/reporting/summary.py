"""What a sweep says when it ends: its one-line summary (what ran, what failed and why, how to go
on), and the paragraph for an experiment whose finished runs a changed spec would replace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.core.hints import tensorboard_command, trainer_command
from trainer.core.status import Status
from trainer.core.visible import visible
from trainer.reporting.tables import MAX_ROWS, count_of_runs, natural_key, run_table


def sweep_summary(
    records: list[dict[str, Any]],
    report: Any,
    logdir: Path,
    command: str,
    planned: int | None = None,
    quiet: bool = False,
) -> list[str]:
    """What the sweep did, a table of its runs, its failures, and how to look at the results;
    quiet, only the one-line summary and what went wrong."""
    lines = []
    if not quiet:
        ordered = sorted(records, key=lambda r: natural_key(r["folder"]))
        lines += ["", *run_table(ordered[:MAX_ROWS])]
        if len(ordered) > MAX_ROWS:
            lines.append(f"... and {len(ordered) - MAX_ROWS} more: {trainer_command()} status {logdir}")
        lines.append("")
    counts: dict[str, int] = {}
    for record in records:
        counts[record.get("status", "?")] = counts.get(record.get("status", "?"), 0) + 1
    done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines.append(
        f"{count_of_runs(len(records))}"
        + (f": {done}" if done else "")
        + f" ({len(report.ran)} run now, {len(report.kept)} already done"
        + (f", {len(report.elsewhere)} left to another sweep" if report.elsewhere else "")
        + ")"
    )
    if planned is not None and planned > len(records) + len(report.changed):
        missing = planned - len(records) - len(report.changed)
        elsewhere = " (another sweep is running them)" if report.elsewhere else ""
        lines.append(
            f"{count_of_runs(missing)} of the {planned} planned {'has' if missing == 1 else 'have'} "
            f"no record yet{elsewhere}"
        )
    if report.kept_failed:
        count = len(report.kept_failed)
        lines.append(
            f"{count_of_runs(count)} failed before and {'was' if count == 1 else 'were'} not retried; "
            f"add --rerun-failed to retry {'it' if count == 1 else 'them'}"
        )
    failed = [s for s in report.ran if s.status == Status.FAILED]
    if failed:
        from trainer.run.rundir import TRACEBACK

        lines.append("Failed:")
        for summary in failed[:MAX_ROWS]:
            trace = logdir / summary.folder / TRACEBACK
            where = f" (traceback: {trace})" if trace.exists() else ""
            lines.append(f"  {visible(summary.folder)}: {visible(summary.error)}{visible(where)}")
    lines += _resumed_lines(records, {s.folder for s in report.ran})
    if report.logdir_fault:
        lines.append(
            f"Stopped: the log folder cannot be written ({report.logdir_fault}); "
            f"free space or fix its permissions, then run the same command again."
        )
    if report.startup_fault:
        lines.append(f"Stopped: {report.startup_fault}")
    if report.interrupted:
        lines.append(
            f"Interrupted. Finished runs are kept, and stopped runs go on from their last checkpoints; "
            f"to resume, run the same command again:\n  {command}"
        )
    if not quiet:
        lines.append(f"Open TensorBoard:  {tensorboard_command(logdir)}")
    return lines


def _resumed_lines(records: list[dict[str, Any]], ran: set[str]) -> list[str]:
    """Which of the runs this sweep ran went on from a checkpoint, and which started over, and why."""
    mine = [r for r in records if r.get("folder") in ran]
    resumed = [r for r in mine if isinstance(r.get("resumed"), dict)]
    lines = []
    if resumed:
        shown = ", ".join(
            f"{visible(r['folder'])} (from step {_step_count(r['resumed'].get('from_step', 0))})"
            for r in resumed[:5]
        )
        more = f" and {len(resumed) - 5} more" if len(resumed) > 5 else ""
        lines.append(f"{count_of_runs(len(resumed))} went on from a checkpoint: {shown}{more}")
    over = [r for r in mine if r.get("started_over")]
    if over:
        lines.append(f"{count_of_runs(len(over))} started over:")
        lines += [f"  {visible(r['folder'])}: {visible(r['started_over'])}" for r in over[:MAX_ROWS]]
    return lines


def _step_count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else visible(value)


# What status, its CSV and JSON rows (trainer.reporting.rows) and trainer.runs() read of a record:
# all that status_records keeps of it, so that a log folder's records, final weights, curves and
# configurations are not all held at once (a folder's status then needs the memory of one record
# and of what it shows, not of all its records).


# --- a changed spec ---------------------------------------------------------------------------


def changed_spec(
    experiment: str,
    folder: Path,
    runs: int,
    what: str,
    first: str,
    others: int,
    replace: str,
    keep: str,
    meanwhile: bool = False,
) -> str:
    """One paragraph for an experiment whose finished runs were logged `what` ('with a different
    configuration', 'by different code'; `meanwhile`: by another sweep or a merge while this one ran)."""
    more = f", and {others} more difference{'s' if others != 1 else ''}" if others else ""
    done = (
        "by another sweep while this one ran; they are not this spec's results"
        if meanwhile
        else "nothing was run"
    )
    return (
        f"{experiment}: {runs} finished run{'s' if runs != 1 else ''} in {folder} "
        f"{'was' if runs == 1 else 'were'} logged {what} ({first}{more}); "
        f"{done}. To continue, either\n"
        f"  replace {'it' if runs == 1 else 'them'}:  {replace}\n"
        f"  or keep both:  {keep}"
    )
