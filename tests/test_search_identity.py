"""What a search's study is: the same search of the same trials. A rerun whose settings other than
the searched ones differ is another search and is refused, naming what changed; settings that are
no part of a run's identity (its time limit, the engine) are not; --force starts a new study."""

from __future__ import annotations

import json

from test_faults import trainer
from test_search import records, small, study

import trainer as api


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_rerun_with_other_unsearched_settings_is_refused_and_force_starts_a_new_study(tmp_path):
    spec = small(tmp_path, "random", trials=4, steps=100)
    logdir = tmp_path / "logs"
    api.sweep(spec, logdir, workers=0, quiet=True)
    journal = (logdir / "small" / "study.journal").read_bytes()
    before = _listing(logdir / "small")

    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--set", "train.steps=400")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        f"error: {logdir}/small/study.journal: the experiment small was searched with other settings than "
        f"its spec's (train.steps 100 -> 400); its trials cannot join that study. Give the spec a new name "
        f"(--set name=small-2), or move {logdir}/small away"
    )
    assert _listing(logdir / "small") == before
    assert (logdir / "small" / "study.journal").read_bytes() == journal

    # Two settings at once, one of a value the spec leaves to its default: both are named.
    code, out, err = trainer(
        tmp_path, "sweep", spec, "--logdir", logdir, "--set", "model.bias=true", "--set", "train.steps=400"
    )
    assert code == 2 and "(model.bias false -> true; train.steps 100 -> 400)" in err, err

    # A time limit and the engine change no run: the sweep goes on in the same study.
    code, out, err = trainer(
        tmp_path,
        "sweep",
        spec,
        "--logdir",
        logdir,
        "--set",
        "train.timeout=600",
        "--set",
        "train.engine=loop",
    )
    assert code == 0, out + err
    assert _listing(logdir / "small") == before

    # --force: a new study of the 400-step trials, the old journal kept beside it.
    code, out, err = trainer(
        tmp_path, "sweep", spec, "--logdir", logdir, "--set", "train.steps=400", "--force"
    )
    assert code == 0, out + err
    assert len(list((logdir / "small").glob("study.journal.replaced-*"))) == 1
    long = {n: r for n, r in records(logdir, "small").items() if r["steps"] == 400}
    assert len(long) == 4
    trials = study(logdir, "small").get_trials()
    assert len(trials) == 4 and {t.state.name for t in trials} == {"COMPLETE"}
    values = {r["trial"]["number"]: r["metrics"]["final/train/loss"] for r in long.values()}
    assert {t.user_attrs["trial"]: t.value for t in trials} == values
    assert study(logdir, "small").user_attrs["search"]["config"]["train.steps"] == 400


def test_a_merged_folder_of_other_trials_is_refused_and_one_of_the_same_rebuilds_its_study(tmp_path):
    spec = small(tmp_path, "random", trials=4, steps=100)
    api.sweep(spec, tmp_path / "mine", workers=0, quiet=True)
    code, out, err = trainer(tmp_path, "merge", tmp_path / "mine", "--into", tmp_path / "team")
    assert code == 0, err
    team = tmp_path / "team"
    first = sorted(records(team, "small"))[0]

    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", team, "--set", "train.steps=400")
    assert code == 2 and err.strip() == (
        f"error: {team}/small/{first}: the experiment small was searched with other settings than its "
        f"spec's (train.steps 100 -> 400); its trials cannot join that study. Give the spec a new name "
        f"(--set name=small-2), or move {team}/small away"
    )
    assert not (team / "small" / "study.journal").exists()  # nothing was made of a refused search

    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", team)
    assert code == 0, out + err
    assert "(0 run now, 4 already done)" in out
    trials = study(team, "small").get_trials()
    values = {r["trial"]["number"]: r["metrics"]["final/train/loss"] for r in records(team, "small").values()}
    assert {t.user_attrs["trial"]: t.value for t in trials} == values


def test_runs_recorded_before_their_configuration_was_in_the_study_are_compared_by_their_records(tmp_path):
    spec = small(tmp_path, "random", trials=2, steps=100)
    logdir = tmp_path / "logs"
    api.sweep(spec, logdir, workers=0, quiet=True)
    (logdir / "small" / "study.journal").unlink()
    for path in (logdir / "small").glob("*/record.json"):  # as an earlier version wrote them
        record = json.loads(path.read_text())
        del record["trial"]["search"]["config"]
        path.write_text(json.dumps(record))

    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--set", "train.steps=400")
    assert code == 2 and "spec's (train.steps 100 -> 400); its trials cannot join that study" in err, err
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir)
    assert code == 0 and "(0 run now, 2 already done)" in out, out + err
