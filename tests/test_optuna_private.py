"""What trainer.run.optuna_private relies on in Optuna, pinned: a value told through the storage
is the trial's intermediate value, a step keeps its first value, a finished trial is left as it
is, and the pruner's verdict is the one Trial.report and Trial.should_prune give. trainer/run/study.py
itself uses Optuna's public API alone."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from trainer.run import optuna_private

STUDY = Path(__file__).resolve().parents[1] / "trainer" / "run" / "study.py"


def _study(tmp_path: Path, name: str) -> tuple[optuna.Study, JournalStorage]:
    storage = JournalStorage(JournalFileBackend(str(tmp_path / f"{name}.journal")))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    return optuna.create_study(study_name=name, storage=storage, pruner=pruner), storage


def _one_completed(study: optuna.Study) -> None:
    done = study.ask()
    for step in range(3):
        done.report(1.0, step)
    study.tell(done, 1.0)


@pytest.mark.parametrize("values", [[0.5, 2.0, 3.0], [2.0, 0.5, 0.9]], ids=["pruned-late", "pruned-first"])
def test_report_gives_the_verdict_of_trial_report_and_should_prune(tmp_path, values):
    ours, storage = _study(tmp_path, "ours")
    theirs, _ = _study(tmp_path, "theirs")
    for study in (ours, theirs):
        _one_completed(study)
    number = ours.ask().number  # asked here; reported to as a trial another sweep made
    trial = theirs.ask()
    for step, value in enumerate(values):
        trial.report(value, step)
        assert optuna_private.report(ours, storage, number, step, value) == trial.should_prune()
    assert ours.trials[number].intermediate_values == theirs.trials[trial.number].intermediate_values


def test_a_step_keeps_its_first_value(tmp_path):
    study, storage = _study(tmp_path, "s")
    number = study.ask().number
    optuna_private.report(study, storage, number, 0, 1.5)
    optuna_private.report(study, storage, number, 0, 9.0)
    assert study.trials[number].intermediate_values == {0: 1.5}


def test_a_finished_trial_is_left_as_it_is(tmp_path):
    study, storage = _study(tmp_path, "s")
    number = study.ask().number
    study.tell(number, 1.0)
    assert optuna_private.report(study, storage, number, 0, 2.0) is None
    assert study.trials[number].intermediate_values == {}
    # Told again by a sweep that had not seen the end: skipped, as the public API promises.
    study.tell(number, 5.0, skip_if_finished=True)
    assert study.trials[number].value == 1.0


def test_the_study_module_uses_optunas_public_api_alone():
    source = STUDY.read_text()
    for private in ("_trial_id", "optuna.trial.Trial(", "except RuntimeError", "._storage"):
        assert private not in source, private
    assert not re.search(r"\.sampler\s*=", source)
