"""Tables for people: the end-of-sweep summary and the status of a log folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from trainer import rundir

MAX_ROWS = 40


def _runs(count: int) -> str:
    return f"{count} run" + ("" if count == 1 else "s")


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


def run_rows(records: Iterable[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for record in records:
        metrics = record.get("metrics") or {}
        converged = metrics.get("converged_step")
        rows.append([record["folder"], record.get("status", "?"), _number(metrics.get("eval_loss")),
                     _number(metrics.get("weight_distance")),
                     "-" if converged is None else str(converged),
                     "-" if record.get("duration_s") is None else f"{record['duration_s']:.1f} s"])
    return rows


RUN_HEADER = ["run", "status", "final loss", "distance", "converged at", "time"]


def sweep_summary(records: list[dict[str, Any]], report: Any, logdir: Path, command: str,
                  planned: int | None = None) -> list[str]:
    """What the sweep did, a table of its runs, its failures, and how to look at the results."""
    rows = run_rows(sorted(records, key=lambda r: r["folder"]))
    lines = [""]
    lines += table(rows[:MAX_ROWS], RUN_HEADER)
    if len(rows) > MAX_ROWS:
        lines.append(f"... and {len(rows) - MAX_ROWS} more: python -m trainer status {logdir}")
    counts: dict[str, int] = {}
    for record in records:
        counts[record.get("status", "?")] = counts.get(record.get("status", "?"), 0) + 1
    done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines.append("")
    lines.append(f"{_runs(len(records))}" + (f": {done}" if done else "")
                 + f" ({len(report.ran)} run now, {len(report.kept)} already done"
                 + (f", {len(report.elsewhere)} left to another sweep" if report.elsewhere else "") + ")")
    if planned is not None and planned > len(records):
        missing = planned - len(records)
        elsewhere = " (another sweep is running them)" if report.elsewhere else ""
        lines.append(f"{_runs(missing)} of the {planned} planned {'has' if missing == 1 else 'have'} "
                     f"no record yet{elsewhere}")
    if report.kept_failed:
        count = len(report.kept_failed)
        lines.append(f"{_runs(count)} failed before and {'was' if count == 1 else 'were'} not retried; "
                     f"add --rerun-failed to retry {'it' if count == 1 else 'them'}")
    failed = [s for s in report.ran if s.status == "failed"]
    if failed:
        lines.append("Failed:")
        for summary in failed[:MAX_ROWS]:
            trace = logdir / summary.folder / rundir.TRACEBACK
            where = f" (traceback: {trace})" if trace.exists() else ""
            lines.append(f"  {summary.folder}: {summary.error}{where}")
    if report.logdir_fault:
        lines.append(f"Stopped: the log folder cannot be written ({report.logdir_fault}); "
                     f"free space or fix its permissions, then run the same command again.")
    if report.startup_fault:
        lines.append(f"Stopped: {report.startup_fault}")
    if report.interrupted:
        lines.append(f"Interrupted. Finished runs are kept; to resume, run the same command again:\n  {command}")
    lines.append(f"Open TensorBoard:  tensorboard --logdir {logdir}")
    return lines


def status_lines(logdir: Path, deep: bool = False) -> list[str]:
    """Every run under a log folder with its state: complete, diverged, failed, interrupted,
    unfinished (its process is gone), running, or damaged (see trainer.verify)."""
    return status_report(logdir, deep)[0]


def status_report(logdir: Path, deep: bool = False) -> tuple[list[str], int]:
    """status_lines, and how many runs are damaged; `deep` reads every file (status --verify)."""
    from trainer import verify

    rows, counts, damaged = [], {}, []
    for experiment, name in rundir.run_folders(logdir):
        state = rundir.state_of(logdir, experiment, name)
        status = state.state
        damage = verify.check(logdir / experiment / name, state.record, deep)
        if damage is not None:
            status = verify.DAMAGED
            damaged.append(f"  {experiment}/{name}: {damage}")
        counts[status] = counts.get(status, 0) + 1
        record = dict(state.record or {}, folder=f"{experiment}/{name}", status=status)
        rows.append(run_rows([record])[0])
    if not rows:
        return [f"no runs under {logdir}"], 0
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [*table(rows, RUN_HEADER), "", f"{len(rows)} runs: {summary}"]
    if damaged:
        lines += ["Damaged (their files no longer match their records; a sweep runs them again, keeping the "
                  "damaged files aside):", *damaged]
    return lines, len(damaged)
