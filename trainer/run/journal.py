"""A search's study on disk: Optuna's journal storage in the experiment's folder
(`<logdir>/<experiment>/study.journal`), the lock two sweeps on the folder share, and opening the
study kept there, for the sweep that searches (trainer.run.study) and for a reader (the report).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from trainer.core import guards
from trainer.core.errors import LogDirError
from trainer.spec.pruners import pruner_kind
from trainer.spec.search import sampler
from trainer.spec.searches import Search

JOURNAL = "study.journal"
# A journal a reader (the report) opens at the most: a study of 10,000 trials each told 100
# evaluations is about 200 MB.
MAX_READ_JOURNAL = 512 << 20
LOCK = ".study.lock"  # held while a trial is made, drawn, told or ended: two sweeps make each once


def quiet_optuna() -> Any:
    """Optuna, imported where first needed, saying only its errors."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def pruner(search: Search) -> Any:
    """The search's Optuna pruner, as its kind builds it (trainer.spec.pruners)."""
    prune = search.settings.prune
    steps = max((r.steps for r in [*search.runs, *search.probes]), default=None)
    return pruner_kind(prune.kind).build(prune, steps)


def open_study(logdir: Path, experiment: str, search: Search | None = None, create: bool = True) -> Any:
    """The experiment's Optuna study in its log folder (None if it has none and `create` is false)."""
    found = opened(logdir, experiment, search, create)
    return found[0] if found is not None else None


def opened(logdir: Path, experiment: str, search: Search | None, create: bool) -> tuple[Any, Any] | None:
    """The study and the journal storage it is kept in."""
    optuna = quiet_optuna()
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = logdir / experiment / JOURNAL
    problem = journal_problem(logdir, experiment)
    if problem is not None:
        if not create:
            return None  # a reader leaves it be
        raise LogDirError(problem)
    existed = path.is_file()
    if not create and (not existed or path.stat().st_size > MAX_READ_JOURNAL):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = JournalStorage(JournalFileBackend(str(path)))
        if search is None:
            return optuna.load_study(study_name=experiment, storage=storage), storage
        held = [s.study_name for s in storage.get_all_studies()] if existed else []
        if existed and experiment not in held and path.stat().st_size:
            # Optuna skips a broken last line (a write cut short): what it could read holds no study.
            raise ValueError(f"it holds no study of the experiment {experiment}")
        if experiment in held:
            # Read, writing nothing: a study drawn otherwise is refused with its journal as it was.
            study = optuna.load_study(
                study_name=experiment,
                storage=storage,
                sampler=sampler(search.settings),
                pruner=pruner(search),
            )
            return study, storage
        study = optuna.create_study(
            study_name=experiment,
            storage=storage,
            load_if_exists=True,  # a sweep beside this one may have just made it
            direction=search.direction,
            sampler=sampler(search.settings),
            pruner=pruner(search),
        )
        return study, storage


def journal_problem(logdir: Path, experiment: str) -> str | None:
    """Why the experiment's journal or its lock may not be opened (a symlink, dangling or not: the
    journal would be appended wherever it leads; a named pipe would block), or None."""
    folder = logdir / experiment
    return guards.file_problem(logdir, folder / JOURNAL) or guards.file_problem(logdir, folder / LOCK)
