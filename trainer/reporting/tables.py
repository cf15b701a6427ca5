"""Tables for people: the end-of-sweep summary, the status of a log folder, and changed specs."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainer.core.errors import UserError
from trainer.core.status import Status
from trainer.core.visible import visible

MAX_ROWS = 40
# A number inside a name, so that names sort as people read them: batch_size=32 before 128.
_NUMBER = re.compile(r"((?:(?<==)-)?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def count_of_runs(count: int) -> str:
    return f"{count} run" + ("" if count == 1 else "s")


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    """Aligned columns, each cell shown (trainer.core.visible): a name with a newline or an escape
    sequence in it neither forges a row nor reaches the terminal as a command."""
    cells = [[visible(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*r).rstrip() for r in cells]


def natural_key(text: str) -> tuple:
    """A sort key that orders the numbers in a text by value: 'lr=0.01' < 'lr=0.1', 'x=5' < 'x=32'."""
    parts = _NUMBER.split(text)
    return tuple(float(part) if i % 2 else part for i, part in enumerate(parts))


def stopped_at(record: dict[str, Any]) -> int | None:
    """The step a run diverged at, or the steps an interrupted or failed run had done, or the step
    where its user code stopped a complete run (StopRun); None for a run that went to its end."""
    status = record.get("status")
    stopped = record.get("stopped")
    if status in (Status.COMPLETE, Status.PRUNED) and isinstance(stopped, dict):
        return stopped.get("step")
    if status == Status.DIVERGED:
        step = (record.get("metrics") or {}).get("diverged_step")
        return step if step is not None else record.get("steps_done")
    if status in (Status.FAILED, Status.INTERRUPTED):
        return record.get("steps_done")
    return None


def _step(value: Any) -> str:
    return "-" if value is None else str(value)


def main_loss(metrics: dict[str, Any]) -> Any:
    """The final loss that ranks a run: on the validation rows where there are some (a record
    of an earlier version of the trainer calls it eval_loss)."""
    return metrics.get("final/val/loss", metrics.get("final/train/loss", metrics.get("eval_loss")))


def code_column(record: dict[str, Any]) -> str | None:
    """The short digest of the user code that made a run (trainer.run.record.code_id), or None."""
    from trainer.run.record import code_id

    return code_id(record.get("code")) or None


# The status table's columns: the name --sort and --filter take (the header, with _ for spaces),
# the header, and the value from a run's record.
COLUMNS: dict[str, tuple[str, Any]] = {
    "run": ("run", lambda r: r["folder"]),
    # A run an executor has queued or running elsewhere says where ("running on Slurm (job 12)").
    "status": ("status", lambda r: r.get("where") or r.get("status", "?")),
    "final_loss": ("final loss", lambda r: main_loss(r.get("metrics") or {})),
    "distance": ("distance", lambda r: (r.get("metrics") or {}).get("final/weight_distance")),
    "converged_at": ("converged at", lambda r: (r.get("metrics") or {}).get("final/converged_step")),
    "stopped_at": ("stopped at", stopped_at),
    "time": ("time", lambda r: r.get("duration_s")),
    "code": ("code", code_column),
}
_SHOWN = {
    "final_loss": _number,
    "distance": _number,
    "converged_at": _step,
    "stopped_at": _step,
    "time": lambda t: "-" if t is None else f"{t:.1f} s",
    "code": _step,
}


def run_table(records: list[dict[str, Any]]) -> list[str]:
    """The runs as a table, one line each; the code column only where some run used user code."""
    names = [n for n in COLUMNS if n != "code" or any(code_column(r) for r in records)]
    rows = []
    for record in records:
        rows.append([_SHOWN.get(n, str)(COLUMNS[n][1](record)) for n in names])
    return table(rows, [loss_header(records) if n == "final_loss" else COLUMNS[n][0] for n in names])


def loss_header(records: list[dict[str, Any]]) -> str:
    """The final loss column's header, naming the split its values are of (main_loss)."""
    held = {"final/val/loss" in (r.get("metrics") or {}) for r in records if r.get("metrics")}
    if held == {True}:
        return "final val/loss"
    if held == {False}:
        return "final train/loss"
    return "final loss (val, else train)" if held else "final loss"


SHOWN_KEYS = ("status", "hparams", "swept", "metrics", "stopped", "steps_done", "duration_s", "code")


def shown_part(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a record that status shows, sorts and filters by (SHOWN_KEYS, the engine's name
    and the device)."""
    kept = {key: record[key] for key in SHOWN_KEYS if key in record}
    engine, resolved = record.get("engine"), record.get("resolved")
    if isinstance(engine, dict):
        kept["engine"] = {"name": engine.get("name")}
    if isinstance(resolved, dict):
        kept["resolved"] = {"device": resolved.get("device")}
    return kept


# The states in which a run may be queued or running in an executor's hands (a requeued Slurm job's
# run has recorded itself as interrupted and goes on).
UNENDED = (Status.RUNNING, Status.UNFINISHED, Status.INTERRUPTED, Status.MISSING)


def status_records(logdir: Path, deep: bool = False) -> list[dict[str, Any]]:
    """Every run under a log folder: what status shows of its record (if any; shown_part) with its
    folder and its state as status, 'damaged' (with the reason as damage) where its files no
    longer match its record (see trainer.verify; `deep` reads every file). Each record is read,
    checked and cut down before the next one is read."""
    from trainer.executors.base import places
    from trainer.run import rundir, verify

    where = places(logdir)
    found = []
    for experiment, name in rundir.run_folders(logdir):
        state = rundir.state_of(logdir, experiment, name)
        damage = state.problem or verify.check(logdir / experiment / name, state.record, deep)
        status = verify.DAMAGED if damage is not None else state.state
        found.append(
            dict(
                shown_part(state.record or {}),
                folder=f"{experiment}/{name}",
                experiment=experiment,
                status=status,
                damage=damage,
                where=where.pop(f"{experiment}/{name}", None) if status in UNENDED else None,
            )
        )
        del state  # the whole record goes before the next is read
    return found + _not_begun(where)


def _not_begun(where: dict[str, str]) -> list[dict[str, Any]]:
    """Runs an executor has queued that have no folder yet (a Slurm job still pending)."""
    from trainer.core import untrusted

    found = []
    for folder, place in sorted(where.items()):
        experiment, _, name = folder.partition("/")
        if untrusted.name_problem("experiment", experiment) or untrusted.name_problem("run", name):
            continue  # not a run folder's name: a ledger from elsewhere names no run of this folder
        found.append(
            {
                "folder": folder,
                "experiment": experiment,
                "status": Status.MISSING,
                "damage": None,
                "where": place,
            }
        )
    return found


def setting_of(records: list[dict[str, Any]], key: str, option: str) -> str:
    """The hparam a --sort or --filter key names: a column, a whole key, or a key's last part."""
    if key.replace(" ", "_") in COLUMNS or key == "experiment":
        return key.replace(" ", "_")
    known = sorted({k for r in records for k in r.get("hparams") or {}})
    if key in known:
        return key
    measured = sorted({k for r in records for k in r.get("metrics") or {} if "/" in k})
    if key in measured:
        return key
    # A key's label in run names (lr, seed, optimizer for optimizer.kind); a swept key first.
    ends = [k for k in known if k.rpartition(".")[2] == key or k == f"{key}.kind"]
    swept = [k for k in ends if any(k in (r.get("swept") or {}) for r in records)]
    if len(ends) == 1 or len(swept) == 1:
        return (swept or ends)[0]
    if ends:
        raise UserError(
            f"{option} {key}: several settings end in {key!r} ({visible(', '.join(ends))}); give the whole key"
        )
    short = {k.rpartition(".")[2] for k in known} | {
        k.removesuffix(".kind") for k in known if k.endswith(".kind")
    }
    names = [*COLUMNS, "experiment", *known, *sorted(short), *measured]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(
        f"{option} {key}: no column, setting or metric of that name{hint}; columns: {', '.join(COLUMNS)}, "
        f"a setting such as optimizer.lr, or a metric the runs record such as "
        f"{visible((measured or ['final/train/loss'])[0])}"
    )


def value_of(record: dict[str, Any], key: str) -> Any:
    if key in COLUMNS:
        return COLUMNS[key][1](record)
    if key == "experiment":
        return record["experiment"]
    if "/" in key:  # a metric: final/val/loss, best/val/accuracy
        return (record.get("metrics") or {}).get(key)
    return (record.get("hparams") or {}).get(key)


def _matches(value: Any, wanted: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return wanted.lower() in (("true", "1") if value else ("false", "0"))
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(wanted), value, rel_tol=1e-9)
        except ValueError:
            return False
    return str(value) == wanted


def filter_records(records: list[dict[str, Any]], filters: Iterable[str]) -> list[dict[str, Any]]:
    """The runs that match every KEY=VALUE: a column (status=diverged) or a setting (batch_size=1, lr=0.1)."""
    for text in filters:
        key, sep, wanted = text.partition("=")
        if not sep or not key:
            raise UserError(
                f"--filter {text}: expected KEY=VALUE, e.g. --filter status=diverged or "
                f"--filter optimizer.lr=0.1"
            )
        key = setting_of(records, key.strip(), "--filter")
        swept_as = {r["folder"]: _swept_text(r, key) for r in records}
        records = [
            r for r in records if _matches(value_of(r, key), wanted) or swept_as[r["folder"]] == wanted
        ]
    return records


def _swept_text(record: dict[str, Any], key: str) -> str | None:
    """A swept value as the spec wrote it (batch_size 'full' is resolved to a number in hparams)."""
    value = (record.get("swept") or {}).get(key)
    return value if isinstance(value, str) else None


def sort_records(
    records: list[dict[str, Any]], column: str | None = None, reverse: bool = False
) -> list[dict[str, Any]]:
    """Runs by name in natural order, or by a column or setting; runs without a value last."""
    records = sorted(records, key=lambda r: natural_key(r["folder"]))
    if column is None:
        return records[::-1] if reverse else records
    key = setting_of(records, column, "--sort")

    def order(record: dict[str, Any]) -> tuple:
        value = value_of(record, key)
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)):
            return (0, value, ())
        return (0, 0.0, natural_key(value)) if isinstance(value, str) else (1, 0.0, ())

    present = [r for r in records if value_of(r, key) is not None]
    missing = [r for r in records if value_of(r, key) is None]
    return sorted(present, key=order, reverse=reverse) + missing


def status_lines(
    logdir: Path,
    sort: str | None = None,
    filters: Iterable[str] = (),
    reverse: bool = False,
    deep: bool = False,
) -> list[str]:
    """Every run under a log folder with its state: complete, diverged, failed, interrupted,
    unfinished (its process is gone), running or damaged; filtered and sorted as asked."""
    return status_report(logdir, sort, filters, reverse, deep)[0]


def status_report(
    logdir: Path,
    sort: str | None = None,
    filters: Iterable[str] = (),
    reverse: bool = False,
    deep: bool = False,
) -> tuple[list[str], int]:
    """status_lines, and how many runs are damaged; `deep` reads every file (status --verify)."""
    everything = status_records(logdir, deep)
    if not everything:
        return [f"no runs under {visible(logdir)}"], 0
    damaged = [
        f"  {visible(r['folder'])}: {visible(r['damage'])}" for r in everything if r["damage"] is not None
    ]
    shown = sort_records(filter_records(everything, filters), sort, reverse)
    counts: dict[str, int] = {}
    for record in shown:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    total = (
        f"{len(shown)} of {len(everything)} runs"
        if len(shown) != len(everything)
        else count_of_runs(len(shown))
    )
    lines = (
        [f"{total} match {visible(' and '.join(filters))}"]
        if not shown
        else [*run_table(shown), "", f"{total}: {summary}"]
    )
    lines += code_versions(shown)
    if damaged:
        lines += [
            "Damaged (their files no longer match their records; a sweep runs them again, keeping the "
            "damaged files aside):",
            *damaged,
        ]
    return lines, len(damaged)


def code_versions(records: list[dict[str, Any]]) -> list[str]:
    """A line for each experiment whose runs were made by more than one version of its user code."""
    versions: dict[str, dict[str, int]] = {}
    for record in records:
        code = code_column(record)
        if code is not None:
            counts = versions.setdefault(record.get("experiment", "?"), {})
            counts[code] = counts.get(code, 0) + 1
    return [
        f"{visible(experiment)}: its runs were made by {len(counts)} versions of its user code ("
        + ", ".join(
            f"code {visible(code)}: {count_of_runs(n)}"
            for code, n in sorted(counts.items(), key=lambda c: (-c[1], c[0]))
        )
        + "); the report keeps them apart"
        for experiment, counts in sorted(versions.items())
        if len(counts) > 1
    ]
