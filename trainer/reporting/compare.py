"""Two log folders side by side (mine against a teammate's, before and after a code change): the
configurations either has, matched by their settings over their seeds, each metric's mean and seed
spread on both sides, the difference, and which user code made each side's runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainer.core.status import Status
from trainer.reporting.findings import DEFAULT_REPLICATES, SKIPPED, settings_of, shown, trial_label
from trainer.reporting.stats import stats
from trainer.reporting.tables import code_column
from trainer.spec.names import BASE_RUN, labels

# The columns of compared(), in order.
COLUMNS = (
    "experiment", "group", "in a", "in b", "metric", "runs a", "mean a", "std a", "runs b", "mean b", "std b",
    "difference", "code a", "code b", "same code",
)  # fmt: skip


def compared(a: Path, b: Path, experiment: str | None = None) -> list[dict[str, Any]]:
    """One row per configuration and final or best metric, of every configuration either folder has
    (of one experiment): its runs in each folder, the complete ones with the metric, their mean and
    standard deviation on each side, the difference of the means (b - a; NaN where a side has none),
    and each side's code digests."""
    from trainer.core.errors import UserError
    from trainer.core.strict import suggest
    from trainer.core.visible import visible
    from trainer.reporting.index import records

    both = [records(folder) for folder in (a, b)]
    if experiment is not None:
        known = sorted({r.get("experiment") or r["folder"].partition("/")[0] for side in both for r in side})
        if experiment not in known:
            raise UserError(
                f"experiment: neither {visible(a)} nor {visible(b)} has an experiment {experiment!r}"
                f"{suggest(experiment, known)}; they hold {visible(', '.join(known)) or 'no finished runs'}"
            )
    sides = [_groups(found, experiment) for found in both]
    # Every configuration gets a row for every metric either folder records (NaN where it has none).
    metrics = list(
        dict.fromkeys(m for side in sides for g in side.values() for r in g["runs"] for m in _numbers(r))
    )
    found = []
    for key in dict.fromkeys([*sides[0], *sides[1]]):
        mine, theirs = sides[0].get(key), sides[1].get(key)
        label = (mine or theirs)["label"]
        runs = [(mine or {}).get("runs", []), (theirs or {}).get("runs", [])]
        codes = [sorted({code_column(r) or "" for r in side}) for side in runs]
        for metric in metrics:
            numbers = [[_numbers(r)[metric] for r in side if metric in _numbers(r)] for side in runs]
            got = [stats(values) for values in numbers]
            mean = [s.mean if s else math.nan for s in got]
            found.append(
                {
                    "experiment": key[0],
                    "group": label,
                    "in a": len(runs[0]),
                    "in b": len(runs[1]),
                    "metric": metric,
                    "runs a": len(numbers[0]),
                    "mean a": mean[0],
                    "std a": _std(got[0]),
                    "runs b": len(numbers[1]),
                    "mean b": mean[1],
                    "std b": _std(got[1]),
                    "difference": mean[1] - mean[0],
                    "code a": ",".join(c for c in codes[0] if c) or None,
                    "code b": ",".join(c for c in codes[1] if c) or None,
                    "same code": codes[0] == codes[1] if runs[0] and runs[1] else None,
                }
            )
    return found


def _std(found: Any) -> float:
    return found.std if found is not None and found.std is not None else math.nan


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    """A complete run's final metrics that are numbers."""
    if record.get("status") != Status.COMPLETE:
        return {}
    return {
        k: float(v)
        for k, v in (record.get("metrics") or {}).items()
        if k.startswith(("final/", "best/"))
        and k not in SKIPPED
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    }


def _groups(found: list[dict[str, Any]], experiment: str | None) -> dict[tuple[str, str], dict[str, Any]]:
    """The runs of each configuration of each experiment, keyed by (experiment, its settings but
    the replicates), with a label as run names show it."""
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    for record in found:
        name = record.get("experiment") or record["folder"].partition("/")[0]
        if experiment is None or name == experiment:
            by_experiment.setdefault(name, []).append(record)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name, runs in by_experiment.items():
        replicates = tuple(settings_of(runs).get("replicates") or DEFAULT_REPLICATES)
        trial = next((r["trial"] for r in runs if isinstance(r.get("trial"), dict)), None)
        if trial is not None:  # a search: repeated over its own replicates
            replicates = tuple(trial.get("replicates") or replicates)
        swept = list(dict.fromkeys(k for r in runs for k in r.get("swept") or {} if k not in replicates))
        short = labels(swept)
        for record in runs:
            hparams = {k: v for k, v in (record.get("hparams") or {}).items() if k not in replicates}
            key = (name, json.dumps(hparams, sort_keys=True))
            settings = {k: shown(v) for k, v in (record.get("swept") or {}).items() if k in swept}
            label = (
                trial_label(record) or ",".join(f"{short[k]}={v}" for k, v in settings.items()) or BASE_RUN
            )
            out.setdefault(key, {"label": label, "runs": []})["runs"].append(record)
    return out


def compare_lines(
    a: Path, b: Path, experiment: str | None, metric: str | None, fmt: str = "table"
) -> list[str]:
    """`compare`: a table of one metric's rows (CSV or JSON lines of every metric's), then the
    configurations only one side has."""
    import csv
    import io
    import json

    from trainer.core.errors import UserError
    from trainer.core.visible import csv_cell, visible
    from trainer.reporting.tables import table

    found = compared(a, b, experiment)
    if not found:
        where = f" of experiment {experiment}" if experiment else ""
        return [visible(f"no finished runs{where} in {a} or {b}")]
    if fmt == "json":
        return [
            json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
            for r in found
        ]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in r.items()} for r in found)
        return out.getvalue().splitlines()
    metrics = list(dict.fromkeys(r["metric"] for r in found))
    searched = _search_metric(a, b, experiment)
    chosen = metric or searched or ("final/val/loss" if "final/val/loss" in metrics else "final/train/loss")
    if chosen not in metrics:
        raise UserError(
            f"--metric {chosen}: no run of either folder records it; they record {visible(', '.join(metrics))}"
        )
    rows = [r for r in found if r["metric"] == chosen]
    shown = [
        [
            r["experiment"],
            r["group"],
            str(r["runs a"]),
            _mean(r["mean a"], r["std a"]),
            str(r["runs b"]),
            _mean(r["mean b"], r["std b"]),
            "-" if math.isnan(r["difference"]) else f"{r['difference']:+.4g}",
            "-"
            if r["same code"] is None
            else "same"
            if r["same code"]
            else f"{r['code a']} -> {r['code b']}",
        ]
        for r in rows
    ]
    lines = [
        f"{visible(chosen)}: {visible(a)} (a) against {visible(b)} (b), mean ± standard deviation over each "
        f"side's complete runs",
        "",
    ]
    lines += table(shown, ["experiment", "group", "runs a", "a", "runs b", "b", "b - a", "code"])
    only = {
        side: [f"{r['experiment']}/{r['group']}" for r in rows if r[f"in {other}"] == 0]
        for side, other in (("a", "b"), ("b", "a"))
    }
    for side, folder in (("a", a), ("b", b)):
        if only[side]:
            lines.append(f"only in {visible(folder)}: " + visible(", ".join(only[side])))
    return lines


def _search_metric(a: Path, b: Path, experiment: str | None) -> str | None:
    """The metric a compared experiment's search optimized, where it is one search's."""
    from trainer.reporting.index import records

    found = {
        (r.get("trial") or {}).get("metric")
        for folder in (a, b)
        for r in records(folder)
        if experiment is None or r.get("experiment") == experiment
    }
    return found.pop() if len(found) == 1 and None not in found else None


def _mean(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.4g}" + ("" if math.isnan(std) else f" ± {std:.2g}")
