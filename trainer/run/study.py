"""A search's study: Optuna's record of its trials, kept in the experiment's folder
(`<logdir>/<experiment>/study.journal`, Optuna's journal storage), which a rerun and a concurrent
sweep on the same folder share.

The sweep driver holds one Study per search and tells it what happens: each evaluation a run
reports (`report`, which answers whether to prune the run), each run's end (`ended`), and, for a
TPE search, asks it for the next trial's runs whenever a worker is free (`more`). A trial is a
configuration, run once per replicate (seed): Optuna sees the trial's mean over its replicates,
at each evaluation step once every replicate of the trial this sweep runs has reported it, and at
the end once all of them have ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.core.errors import LogDirError, UserError
from trainer.core.status import FINISHED, Status
from trainer.run import optuna_private, rundir
from trainer.run.drawn_by import SEARCH, changed, check_records, other, record_params, search_records
from trainer.run.journal import JOURNAL, LOCK, journal_problem, opened, quiet_optuna
from trainer.spec.plan import RunPlan
from trainer.spec.search import sampler
from trainer.spec.searches import Search

TRIAL = "trial"  # the user attribute holding a trial's number in the spec's order of trials


class Study:
    """One search's trials, as this sweep runs them. `fresh` (a sweep with --force) starts the study
    over, the old journal kept beside it."""

    def __init__(self, search: Search, logdir: Path, fresh: bool = False):
        self.search = search
        self.logdir = logdir
        self.identity = search.identity
        path = logdir / search.experiment / JOURNAL
        problem = journal_problem(logdir, search.experiment)
        if problem is not None:
            raise LogDirError(problem)
        existed = path.is_file()
        if existed and fresh:  # --force: the search runs again from its start, its old journal kept
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            path.rename(path.with_name(f"{JOURNAL}.replaced-{stamp}"))
        records = search_records(logdir, search.experiment)
        if existed and not fresh:
            self.study, self.storage = self._open(path)
            drawn_by = (self.study.user_attrs or {}).get(SEARCH)
            if drawn_by is not None and other(self.identity, drawn_by):
                raise changed(search, path, drawn_by)
        if not fresh:  # with --force the runs of another search stay as they are, out of the new study
            check_records(search, logdir, records)
        if not existed or fresh:  # made once nothing refuses it
            self.study, self.storage = self._open(path)
            self.study.set_user_attr(SEARCH, self.identity)
        self.dists = {key: d.optuna() for key, d in search.space.dimensions.items()}
        self.ids: dict[int, int] = {}  # trial number -> Optuna's number of the trial
        self.runs: dict[str, RunPlan] = {}  # run folder -> run
        self.replicas: dict[int, list[str]] = {}  # trial number -> its runs' folders
        self.todo: set[str] = set()  # the runs this sweep runs
        self.values: dict[int, dict[int, dict[str, float]]] = {}  # trial -> step -> folder -> value
        self.told: dict[int, set[int]] = {}  # trial -> steps reported to Optuna
        self.ended_runs: dict[str, tuple[str, dict[str, Any]]] = {}  # folder -> (status, metrics)
        self.pruned: set[int] = set()
        self.finished: set[int] = set()
        self.started: set[str] = set()  # runs that reported an evaluation in this sweep
        self._refresh()
        for run in search.runs:
            self._know(run)
        if not existed and not fresh:
            self._rebuild(records)

    def _open(self, path: Path) -> tuple[Any, Any]:
        try:
            return opened(self.logdir, self.search.experiment, self.search, True)
        except (OSError, ValueError) as exc:  # a journal that cannot be read or written
            raise UserError(
                f"{path}: the study cannot be opened ({type(exc).__name__}: {exc}); move it away, and "
                f"the next sweep makes it again from the runs' records"
            ) from None

    def _rebuild(self, records: list[dict[str, Any]]) -> None:
        """A study begun where runs of its trials are already (a merged folder, a journal that was
        lost): each trial goes into it from its runs' records, so no trial is drawn or run twice."""
        by_trial: dict[int, list[dict[str, Any]]] = {}
        for record in records:
            by_trial.setdefault(record["trial"]["number"], []).append(record)
        for number, records in sorted(by_trial.items()):
            if number in self.ids:
                continue
            params = record_params(records[0], self.search)
            if params is None:
                continue
            for run in self.search.trial_runs(number, params) if self.search.draws_later else []:
                self._know(run)
            if number not in self.replicas:
                continue
            self._add_from(number, params)

    def _add_from(self, number: int, params: dict[str, Any]) -> None:
        optuna = quiet_optuna()
        states = [self._recorded(f)[0] for f in self.replicas[number]]
        if all(s in FINISHED for s in states):
            self._tell(number)
        else:  # run again by this sweep, which tells the study
            self._add(number, optuna.trial.TrialState.RUNNING, params=params)

    # --- the trials -------------------------------------------------------------------------

    def _know(self, run: RunPlan) -> None:
        if run.folder not in self.runs:
            self.runs[run.folder] = run
            self.replicas.setdefault(run.trial.number, []).append(run.folder)

    def _refresh(self) -> None:
        for trial in self.study.get_trials(deepcopy=False):
            number = trial.user_attrs.get(TRIAL)
            if isinstance(number, int):
                self.ids.setdefault(number, trial.number)
                if trial.state.is_finished():
                    self.finished.add(number)

    @contextlib.contextmanager
    def _locked(self, refresh: bool = True) -> Iterator[None]:
        """Held while a trial is made, drawn, told a value or ended: a sweep beside this one waits
        (so no trial is made twice, nor told after it ended); not reentrant."""
        with open(self.logdir / self.search.experiment / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if refresh:
                    self._refresh()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _optuna_params(self, number: int) -> dict[str, Any]:
        return self._as_optuna(dict(self.runs[self.replicas[number][0]].trial.params))

    def _as_optuna(self, params: dict[str, Any]) -> dict[str, Any]:
        return {key: d.drawn(params[key]) for key, d in self.search.space.dimensions.items()}

    def _values(self, drawn: dict[str, Any]) -> dict[str, Any]:
        """The settings' values of what Optuna drew (of those it drew)."""
        return {k: d.value(drawn[k]) for k, d in self.search.space.dimensions.items() if k in drawn}

    def _in_study(self, number: int) -> int:
        """Optuna's number of the trial of this number, made (running, as the spec drew it) where
        the study has none yet: one record in the journal."""
        if number not in self.ids:
            self._add(number, quiet_optuna().trial.TrialState.RUNNING)
        return self.ids[number]

    def _add(self, number: int, state: Any, value: float | None = None, params: dict | None = None) -> bool:
        """Put a trial drawn up front into the study, in the given state, unless a sweep beside
        this one did first (then False)."""
        optuna = quiet_optuna()
        with self._locked(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if number in self.ids:
                return False
            made = optuna.trial.create_trial(
                state=state,
                value=value,
                params=self._optuna_params(number) if params is None else self._as_optuna(params),
                distributions=self.dists,
                user_attrs={TRIAL: number},
            )
            self.study.add_trial(made)
            self._refresh()
        return True

    def trials_so_far(self) -> list[RunPlan]:
        """A TPE search's runs of the trials its study holds already (a sweep before this one drew
        them): those that did not finish run again, with the values drawn then."""
        if not self.search.draws_later:
            return []  # drawn up front: the plan has them all
        runs = []
        for trial in self.study.get_trials(deepcopy=False):
            number = trial.user_attrs.get(TRIAL)
            if not isinstance(number, int) or trial.state.name == "FAIL" and not trial.params:
                continue
            params = self._values(trial.params)
            if len(params) != len(self.search.space.dimensions):
                continue
            for run in self.search.trial_runs(number, params):
                self._know(run)
                runs.append(run)
        return runs

    def start(self, todo: list[RunPlan]) -> None:
        """The runs this sweep runs; trials whose runs all finished before (a sweep killed before it
        told the study) are told now."""
        self.todo.update(run.folder for run in todo if run.folder in self.runs)
        for number, folders in self.replicas.items():
            if number in self.finished or any(f in self.todo for f in folders):
                continue
            if all(self._recorded(f)[0] in FINISHED for f in folders):
                self._tell(number)

    def left_to_draw(self) -> int:
        if not self.search.draws_later:
            return 0
        drawn = len(self.study.get_trials(deepcopy=False))
        return max(0, self.search.space.trials - drawn) * self.search.replicas

    def more(self) -> list[RunPlan]:
        """The runs of a newly drawn trial (TPE), or none once the study has all its trials."""
        if not self.search.draws_later:
            return []
        from trainer.core.errors import SpecError

        with self._locked(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            drawn = len(self.study.get_trials(deepcopy=False))
            if drawn >= self.search.space.trials:
                return []
            # A sampler seeded by the search's seed and the trial's number: a sweep that starts
            # again (or one beside this one) draws on from the study, not its first draws again.
            # A study's sampler is given when it is opened: the study is opened again with it.
            drawing = quiet_optuna().load_study(
                study_name=self.study.study_name,
                storage=self.storage,
                sampler=sampler(self.search.settings, (self.search.settings.seed, drawn)),
                pruner=self.study.pruner,
            )
            trial = drawing.ask(self.dists)
            number = trial.number
            trial.set_user_attr(TRIAL, number)
            self.ids[number] = number
        params = self._values(trial.params)
        try:
            runs = self.search.trial_runs(number, params)
        except SpecError:  # a drawn value no run can take: the trial fails, the next is drawn
            self._told(number, None, quiet_optuna().trial.TrialState.FAIL)
            self.finished.add(number)
            return self.more()
        for run in runs:
            self._know(run)
        self.todo.update(run.folder for run in runs)
        return runs

    # --- what the runs say ------------------------------------------------------------------

    def report(self, folder: str, step: int, value: float) -> bool:
        """A run's evaluation value at a step; whether to prune the run now."""
        run = self.runs.get(folder)
        if run is None:
            return False
        number = run.trial.number
        if number in self.pruned:
            return True
        at = self.values.setdefault(number, {}).setdefault(step, {})
        at[folder] = value
        self.started.add(folder)
        if step not in run.trial.verdicts or step in self.told.setdefault(number, set()):
            return False  # no pruner decides here: Optuna is told only where it may
        # The replicates running beside this one: the trial's value at a step is their mean. One
        # not started yet (they run one after another) takes the verdict of those before it.
        waiting = [
            f
            for f in self.replicas[number]
            if f in self.todo and f in self.started and f not in at and f not in self.ended_runs
        ]
        if waiting:
            return False
        mean = math.fsum(at.values()) / len(at)
        if not math.isfinite(mean):
            return False  # the run diverged: it ends by itself
        self.told[number].add(step)
        in_study = self._in_study(number)
        with self._locked(refresh=False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prune = optuna_private.report(self.study, self.storage, in_study, step, mean)
        if prune is None:  # a trial the study holds as finished (told by a sweep beside this one)
            return False
        if prune:
            self.pruned.add(number)
        return prune

    def ended(self, folder: str, status: str, metrics: dict[str, Any]) -> None:
        """A run ended; once every replicate of its trial has, the study is told the trial's result."""
        run = self.runs.get(folder)
        if run is None:
            return
        self.ended_runs[folder] = (status, metrics)
        number = run.trial.number
        if number in self.finished:
            return
        if any(f in self.todo and f not in self.ended_runs for f in self.replicas[number]):
            return
        if status == Status.INTERRUPTED or any(
            self._recorded(f)[0] in (Status.INTERRUPTED, Status.UNFINISHED) for f in self.replicas[number]
        ):
            return  # run again by the next sweep, which tells the study
        self._tell(number)

    def _recorded(self, folder: str) -> tuple[str, dict[str, Any]]:
        if folder in self.ended_runs:
            return self.ended_runs[folder]
        run = self.runs[folder]
        state = rundir.state_of(self.logdir, run.experiment, run.name)
        record = state.record or {}
        return state.state, record.get("metrics") or {}

    def _tell(self, number: int) -> None:
        optuna = quiet_optuna()
        ended = [self._recorded(f) for f in self.replicas[number]]
        states = [s for s, _ in ended]
        values = [m.get(self.search.metric) for _, m in ended]
        state, value = optuna.trial.TrialState.FAIL, None
        if Status.PRUNED in states:
            state = optuna.trial.TrialState.PRUNED
        elif all(s == Status.COMPLETE for s in states) and all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in values
        ):
            state, value = optuna.trial.TrialState.COMPLETE, math.fsum(values) / len(values)
        self.finished.add(number)
        # A trial drawn up front that no pruner asked about goes into the study as it ended.
        if number not in self.ids and not self.search.draws_later and self._add(number, state, value):
            return
        self._told(self._in_study(number), value, None if value is not None else state)

    def _told(self, in_study: int, value: float | None, state: Any) -> None:
        """Tell the study a trial's end (by Optuna's number), unless a sweep beside this one did."""
        with self._locked(refresh=False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study.tell(in_study, value, state=state, skip_if_finished=True)


class Studies:
    """The studies of a sweep's searches, by experiment: what the executors talk to."""

    def __init__(self, searches: dict[str, Search], logdir: Path, fresh: bool = False):
        self.by_experiment = {name: Study(search, logdir, fresh) for name, search in searches.items()}

    def __bool__(self) -> bool:
        return bool(self.by_experiment)

    def _of(self, folder: str) -> Study | None:
        return self.by_experiment.get(folder.partition("/")[0])

    def so_far(self) -> list[RunPlan]:
        return [run for study in self.by_experiment.values() for run in study.trials_so_far()]

    def start(self, todo: list[RunPlan]) -> None:
        for study in self.by_experiment.values():
            study.start(todo)

    def more(self) -> list[RunPlan]:
        for study in self.by_experiment.values():
            runs = study.more()
            if runs:
                return runs
        return []

    def report(self, folder: str, step: int, value: float) -> bool:
        study = self._of(folder)
        return study is not None and study.report(folder, step, value)

    def ended(self, folder: str, status: str, metrics: dict[str, Any]) -> None:
        study = self._of(folder)
        if study is not None:
            study.ended(folder, status, metrics)

    @property
    def pruning(self) -> bool:
        return any(s.search.pruning for s in self.by_experiment.values())

    @property
    def draws_later(self) -> bool:
        """Whether a search draws trials from the results so far (TPE): it is told each end first."""
        return any(s.search.draws_later for s in self.by_experiment.values())

    def left_to_draw(self) -> int:
        """Runs of the trials a TPE search has yet to draw."""
        return sum(study.left_to_draw() for study in self.by_experiment.values())

    def data_folders(self) -> set[str]:
        """The spec folders the trials drawn later come from (their user code and data)."""
        return {
            str(Path(run.data_folder).resolve())
            for s in self.by_experiment.values()
            for run in s.search.probes[:1]
        }
