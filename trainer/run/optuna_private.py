"""What Optuna offers no public call for, in one place: telling a trial of a study its value at an
evaluation step, and asking the study's pruner about it, where this process holds no Trial for it.

Optuna hands a Trial (with `report` and `should_prune`) only to whoever asked for it, and keeps
its constructor to itself; a sweep reports to trials that a sweep beside it, or one before it,
put into the study. So this goes through the storage's interface (`BaseStorage`), as
`Trial.report` and `Trial.should_prune` do themselves, and hands the trial to the pruner's public
`prune(study, trial)`. tests/test_optuna_private.py pins what it relies on.
"""

from __future__ import annotations

from typing import Any


def report(study: Any, storage: Any, number: int, step: int, value: float) -> bool | None:
    """Tell the study's trial `number` (Optuna's numbering) its value at `step`, and whether its
    pruner stops it there. A step told before keeps its first value, as Trial.report keeps it; None
    where the trial finished before the step was told (told by a sweep beside this one)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    trial = storage.get_trial(trial_id)
    if step not in trial.intermediate_values:
        if trial.state.is_finished():
            return None
        storage.set_trial_intermediate_value(trial_id, step, float(value))
        trial = storage.get_trial(trial_id)
    return study.pruner.prune(study, trial)
