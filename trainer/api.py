"""The Python API: run a sweep from a notebook or a script, and read any log folder's results as
pandas DataFrames. Every function raises trainer.UserError, with the same sentences as the command
line, for anything a user has to fix; pandas is imported only here.

    import trainer

    runs = trainer.sweep("experiments/batch-size.yaml", logdir="logs")   # a DataFrame, a row per run
    curves = trainer.curves("logs", tags=["w/0", "val/loss"])            # run, tag, step, value
    found = trainer.report("logs")                                       # the groups over their seeds
    both = trainer.compare("logs", "logs-alice")                          # runs matched across folders
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.core.errors import UserError
from trainer.core.strict import suggest

if TYPE_CHECKING:
    import pandas as pd


def _folder(logdir: Any, what: str = "logdir") -> Path:
    if not isinstance(logdir, (str, Path)) or not str(logdir).strip():
        raise UserError(f"{what}: expected the path of a log folder, got {logdir!r}")
    folder = Path(logdir)
    if not folder.is_dir():
        raise UserError(
            f"{what}: {folder} is no folder" + ("" if folder.exists() else " (it does not exist)")
        )
    return folder


def sweep(
    spec: str | Path | Mapping[str, Any],
    logdir: str | Path = "logs",
    workers: int = 0,
    executor: str = "local",
    overrides: Iterable[str] | Mapping[str, Any] = (),
    force: bool = False,
    rerun_failed: bool = False,
    quiet: bool = False,
    executor_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Run a sweep, as `python -m trainer sweep` does, and return its runs (trainer.runs of its
    experiments). `spec` is a spec file's path or the spec itself as a mapping (user code and CSV
    paths are then looked up from the current folder); `overrides` are --set's KEY=VALUE texts, or a
    mapping of them. `workers=0` (the default) trains in this process, one run after another, as
    `python -m trainer run` does; more start that many worker processes, which run user code by its
    import path and never the calling script. Progress is a tqdm bar (tqdm.auto's in a notebook);
    `quiet` shows only the summary. Ctrl-C (SIGINT, SIGTERM, SIGHUP) stops the runs in progress as
    the command line does, each recorded as interrupted with a checkpoint to go on from, and then
    raises KeyboardInterrupt. What the sweep changes of this process (sys.path, os.environ, Optuna's
    log level; torch's threads and the random states with workers=0) is set back as it was when it
    returns or raises. `executor` is where the runs run ('local', 'ray', 'slurm'), and
    `executor_options` its options, as --executor-opt gives them (e.g. {"partition": "gpu"})."""
    with _as_found():
        return _sweep(
            spec, logdir, workers, executor, overrides, force, rerun_failed, quiet, executor_options
        )


@contextlib.contextmanager
def _as_found() -> Iterator[None]:
    """The caller's process, as a sweep found it, when the sweep returns or raises: the folders of
    user code it put on sys.path, what it (Ray) or a library it imported (torch's compiler) set in
    os.environ, and Optuna's log level, which planning and the searches turn down to errors (to
    INFO, as Optuna's import sets it, where the sweep imported Optuna). torch's threads and the
    random states are set back where the runs change them (trainer.executors.here)."""
    path, environ = list(sys.path), dict(os.environ)
    optuna_level = logging.getLogger("optuna").level if "optuna" in sys.modules else logging.INFO
    try:
        yield
    finally:
        sys.path[:] = path
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        if "optuna" in sys.modules:
            logging.getLogger("optuna").setLevel(optuna_level)


def _sweep(
    spec: str | Path | Mapping[str, Any],
    logdir: str | Path,
    workers: int,
    executor: str,
    overrides: Iterable[str] | Mapping[str, Any],
    force: bool,
    rerun_failed: bool,
    quiet: bool,
    executor_options: Mapping[str, Any] | None,
) -> pd.DataFrame:
    from trainer.service import EXIT_INTERRUPTED, SweepRequest, check_executor, run_sweep
    from trainer.spec.sections import MAPPING
    from trainer.spec.sweep import plan

    overrides = _override_texts(overrides)
    if isinstance(spec, Mapping):
        source: str | Mapping[str, Any] = spec
    elif isinstance(spec, (str, Path)):
        source = str(spec)
    else:
        raise UserError(f"spec: expected a spec file's path or a mapping, got {type(spec).__name__}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise UserError(f"workers: must be a whole number of at least 0, got {workers!r}")
    if not isinstance(executor, str):
        raise UserError(f"executor: expected an executor's name, got {executor!r}")
    if executor != "local" and workers == 0:
        workers = 1
    if executor_options is not None and not isinstance(executor_options, Mapping):
        raise UserError(
            f"executor_options: expected a mapping of the executor's options, got {type(executor_options).__name__}"
        )
    request = SweepRequest(
        "sweep",
        [source if isinstance(source, str) else MAPPING],
        overrides,
        str(logdir),
        workers,
        force,
        rerun_failed,
        quiet,
        executor,
        again="trainer.sweep(...) with the same arguments",
        continue_with=lambda new_name: (
            "sweep(..., force=True)",
            f"sweep(..., overrides={{'name': '{new_name}'}})",
        ),
    )
    check_executor(request, dict(executor_options) if executor_options is not None else None)
    runs = plan([source], overrides)
    if executor == "local" and workers >= 1:
        from trainer.executors.workers import prepare_workers

        prepare_workers()
    progress = None
    if "ipykernel" in sys.modules:  # a notebook: its own bar widget (tqdm.auto), on the cell's output
        from tqdm.auto import tqdm

        from trainer.executors.progress import Progress

        progress = Progress(enabled=not quiet, terminal=True, bars=tqdm)
    code = run_sweep(runs, request, progress=progress)
    if code == EXIT_INTERRUPTED:  # as Ctrl-C anywhere else in a script: it goes no further
        raise KeyboardInterrupt(
            f"the sweep into {logdir} was interrupted; its stopped runs are recorded as interrupted, "
            "and the same sweep again goes on from their checkpoints"
        )
    if code == 2:
        raise UserError(f"the sweep into {logdir} stopped before its runs were done; it said why above")
    searches = getattr(runs, "searches", {})
    experiments = list(dict.fromkeys([r.experiment for r in runs] + list(searches)))
    found = runs_frame(Path(logdir), experiments)
    drawn = {name for name, search in searches.items() if search.draws_later}  # a TPE search's runs
    ours = found["run"].isin({r.name for r in runs}) | found["experiment"].isin(drawn)
    return found[ours].reset_index(drop=True)


def _override_texts(overrides: Any) -> list[str]:
    """--set texts of sweep()'s overrides: KEY=VALUE texts (or one), or a mapping of key to value."""
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, Mapping):
        texts = []
        for key, value in overrides.items():
            if not isinstance(key, str):
                raise UserError(f"overrides: {key!r} is no dotted key such as 'optimizer.lr'")
            texts.append(f"{key}={_override_text(value)}")
        return texts
    if not isinstance(overrides, Iterable):
        raise UserError(
            f"overrides: expected KEY=VALUE texts or a mapping of keys to values, got {type(overrides).__name__}"
        )
    texts = list(overrides)
    wrong = [t for t in texts if not isinstance(t, str)]
    if wrong:
        raise UserError(
            f"overrides: {wrong[0]!r} is no KEY=VALUE text; give texts such as 'optimizer.lr=0.1', or a "
            f"mapping such as {{'optimizer.lr': 0.1}}"
        )
    return texts


def _override_text(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def runs(logdir: str | Path = "logs", experiment: str | None = None) -> pd.DataFrame:
    """One row per run of a log folder (of one experiment): experiment, run, state, steps, time_s,
    engine, device, code (the digest of its user code), then every setting (typed: numbers as
    numbers) and every final and best metric (NaN where a run has none)."""
    folder = _folder(logdir)
    if experiment is not None:
        known = sorted({p.name for p in folder.iterdir() if p.is_dir() and p.name[0] not in "._"})
        if experiment not in known:
            raise UserError(
                f"experiment: no experiment {experiment!r} in {folder}{suggest(experiment, known)}; "
                f"it holds {', '.join(known) or 'no runs'}"
            )
    return runs_frame(folder, None if experiment is None else [experiment])


def runs_frame(logdir: Path, experiments: Sequence[str] | None) -> pd.DataFrame:
    import pandas as pd

    from trainer.reporting.rows import all_columns, rows

    found = [r for r in rows(logdir) if experiments is None or r["experiment"] in experiments]
    frame = pd.DataFrame(found, columns=all_columns(found))
    for name in frame.columns:
        if "/" in name:  # a metric: a number, NaN where missing
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    return frame


def curves(
    logdir: str | Path = "logs", tags: Iterable[str] | None = None, runs: Iterable[str] | None = None
) -> pd.DataFrame:
    """The logged scalars, long-form: experiment, run, tag, step, value, one row per point, read from
    the event files as TensorBoard reads them (what a resumed run logged twice, once). `tags` and
    `runs` ("experiment/run", or a run's name) narrow it down; all tags and all runs by default."""
    import pandas as pd

    from trainer.run import rundir
    from trainer.tensorboard.curves import run_scalars, scalar_tags

    folder = _folder(logdir)
    tags = [tags] if isinstance(tags, str) else None if tags is None else list(tags)
    wanted = [runs] if isinstance(runs, str) else None if runs is None else list(runs)
    every = rundir.run_folders(folder)
    chosen = [(e, n) for e, n in every if wanted is None or f"{e}/{n}" in wanted or n in wanted]
    if wanted is not None:
        found = {f"{e}/{n}" for e, n in chosen} | {n for _, n in chosen}
        missing = [w for w in wanted if w not in found]
        if missing:
            raise UserError(
                f"runs: no run {missing[0]!r} in {folder}; name runs as experiment/run or by their names, "
                f"such as {(f'{every[0][0]}/{every[0][1]}' if every else 'toy/seed=0')!r}"
            )
    out: list[tuple[str, str, str, int, float]] = []
    logged: set[str] = set()
    for experiment, name in chosen:
        path = folder / experiment / name
        for tag, points in run_scalars(path, tags if tags is not None else scalar_tags(path)).items():
            if points:
                logged.add(tag)
            out += [(experiment, name, tag, step, value) for step, value in points]
    if tags is not None and chosen:
        unknown = [t for t in tags if t not in logged]
        if unknown:
            known = sorted({t for e, n in chosen[:20] for t in scalar_tags(folder / e / n)})
            raise UserError(
                f"tags: no run logs {unknown[0]!r}"
                + suggest(unknown[0], known)
                + f"; they log {', '.join(known[:30])}"
            )
    return pd.DataFrame(out, columns=["experiment", "run", "tag", "step", "value"])


def report(logdir: str | Path = "logs", out: str | Path | None = None) -> pd.DataFrame:
    """The findings as data: one row per group of runs (a configuration over its seeds), best first
    within each experiment: its label, runs (complete and not), the ranking metric with its mean,
    standard deviation and 95% t-interval over the complete runs, its code digest and its swept
    settings (typed as trainer.runs() types them). A group without a value of the metric has no
    rank and comes after the ranked ones; a search's pruned trial has the step its pruner stopped
    it at and the value it judged there (`pruned at step`, `value at pruning`, NaN for the others).
    With `out`, report.md and its pictures are written there, as `python -m trainer report`
    writes them."""
    import pandas as pd

    from trainer.reporting.findings import findings
    from trainer.reporting.index import records
    from trainer.reporting.search import pruned_at
    from trainer.reporting.tables import code_column

    folder = _folder(logdir)
    if out is not None:
        from trainer.reporting import writeup

        writeup.write(folder, Path(out), [])  # raises UserError, saying why, where it cannot
    rows = []
    for found in findings(records(folder)):
        for rank, group in enumerate(found.groups, 1):
            numbers = group.metrics.get(found.metric)
            half = numbers.half_width if numbers is not None else None
            pruning = pruned_at(group.runs)
            hparams = group.runs[0].get("hparams") or {}
            rows.append(
                {
                    "experiment": found.name,
                    "rank": rank if numbers is not None else None,
                    "group": group.label,
                    "runs": len(group.runs),
                    "complete": group.complete,
                    "metric": found.metric,
                    "higher is better": found.higher_is_better,
                    "mean": numbers.mean if numbers is not None else math.nan,
                    "std": _nan(numbers.std) if numbers is not None else math.nan,
                    "ci95 low": numbers.mean - half if half is not None else math.nan,
                    "ci95 high": numbers.mean + half if half is not None else math.nan,
                    "pruned at step": pruning.step if pruning is not None else math.nan,
                    "value at pruning": _nan(pruning.value) if pruning is not None else math.nan,
                    "code": code_column(group.runs[0]),
                    # As trainer.runs() has them: numbers as numbers (a section swept whole as its text).
                    **{k: hparams.get(k, text) for k, text in group.settings.items()},
                }
            )
    return pd.DataFrame(rows)


def compare(a: str | Path, b: str | Path, experiment: str | None = None) -> pd.DataFrame:
    """Two log folders side by side: one row per configuration (over its seeds) either folder has,
    matched by its settings, and per final metric: each side's complete runs, mean and standard
    deviation over them, the difference of the means (b - a), and the code digests of each side's
    runs (`same code` False after a code change)."""
    import pandas as pd

    from trainer.reporting.compare import COLUMNS, compared

    return pd.DataFrame(compared(_folder(a, "a"), _folder(b, "b"), experiment), columns=list(COLUMNS))


def _nan(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
