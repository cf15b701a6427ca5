"""The pruner registry (trainer.spec.pruners): each kind builds its Optuna pruner, judges at its own
steps, puts its own settings in the study's identity, and the spec's messages name the registry's
kinds."""

from __future__ import annotations

import typing

import optuna
import pytest

from trainer.core.errors import SpecError
from trainer.core.strict import Invalid
from trainer.spec.pruners import PRUNERS, Prune, kinds_text, pruner_kind
from trainer.spec.search import read_search
from trainer.spec.sweep import plan

SPEC = "name: bad\ntrain: {{steps: 10}}\nsearch: {{method: random, trials: 3, prune: {prune}}}\nsweep:\n  optimizer.lr: {{loguniform: [0.001, 0.1]}}\n"


@pytest.mark.parametrize(
    "kind, steps, expected",
    [
        pytest.param("none", 300, optuna.pruners.NopPruner, id="none"),
        pytest.param("median", 300, optuna.pruners.MedianPruner, id="median"),
        pytest.param("asha", 300, optuna.pruners.SuccessiveHalvingPruner, id="asha"),
        pytest.param("hyperband", 300, optuna.pruners.HyperbandPruner, id="hyperband"),
        pytest.param("hyperband", None, optuna.pruners.HyperbandPruner, id="hyperband-steps-unknown"),
    ],
)
def test_each_kind_builds_its_optuna_pruner(kind, steps, expected):
    built = pruner_kind(kind).build(Prune(kind=kind), steps)
    assert type(built) is expected


def test_median_is_built_with_its_settings():
    # startup_trials trials complete before any is pruned: with 1, the second trial is judged.
    pruner = pruner_kind("median").build(Prune(kind="median", min_steps=1, startup_trials=1), None)
    study = optuna.create_study(pruner=pruner)
    first = study.ask()
    first.report(1.0, 1)
    study.tell(first, 1.0)
    second = study.ask()
    second.report(2.0, 0)
    assert not second.should_prune()  # before min_steps
    second.report(2.0, 1)
    assert second.should_prune()


@pytest.mark.parametrize(
    "prune, steps, every, expected",
    [
        pytest.param(Prune(kind="none"), 100, 10, (), id="none-never"),
        pytest.param(Prune(kind="median", min_steps=30), 100, 10, (30, 40, 50, 60, 70, 80, 90), id="median"),
        pytest.param(Prune(kind="hyperband", min_steps=55), 100, 10, (60, 70, 80, 90), id="hyperband"),
        pytest.param(Prune(kind="asha", min_steps=10, reduction_factor=3), 100, 10, (10, 30, 90), id="asha"),
        pytest.param(
            Prune(kind="asha", min_steps=5, reduction_factor=2), 50, 15, (15, 30, 45), id="asha-rungs"
        ),
    ],
)
def test_verdict_steps_of_each_kind(prune, steps, every, expected):
    assert pruner_kind(prune.kind).verdict_steps(prune, steps, every) == expected


@pytest.mark.parametrize(
    "prune, expected",
    [
        pytest.param(Prune(kind="none", min_steps=7), {"kind": "none"}, id="none"),
        pytest.param(
            Prune(kind="median", min_steps=7, startup_trials=2),
            {"kind": "median", "min_steps": 7, "startup_trials": 2},
            id="median",
        ),
        pytest.param(
            Prune(kind="asha", reduction_factor=4),
            {"kind": "asha", "min_steps": 100, "reduction_factor": 4},
            id="asha",
        ),
        pytest.param(
            Prune(kind="hyperband"),
            {"kind": "hyperband", "min_steps": 100, "reduction_factor": 3},
            id="hyperband",
        ),
    ],
)
def test_identity_holds_the_kind_and_its_own_settings(prune, expected):
    assert pruner_kind(prune.kind).identity(prune) == expected


def test_the_section_takes_the_registry_kinds():
    assert typing.get_args(typing.get_type_hints(Prune)["kind"]) == tuple(PRUNERS)
    assert kinds_text() == "none, median, asha or hyperband"
    for kind in PRUNERS:
        assert read_search({"prune": kind}).prune.kind == kind


def test_an_unknown_kind_is_one_sentence_naming_the_file_the_key_and_the_kinds(tmp_path):
    (tmp_path / "bad.yaml").write_text(SPEC.format(prune="hyperbnad"))
    with pytest.raises(SpecError) as raised:
        plan([str(tmp_path / "bad.yaml")])
    (problem,) = raised.value.problems
    assert problem.startswith(f"{tmp_path / 'bad.yaml'}:3: search.prune.kind: ")
    assert "got 'hyperbnad' (did you mean 'hyperband'?)" in problem
    assert ", ".join(repr(k) for k in PRUNERS) in problem
    with pytest.raises(Invalid) as looked_up:
        pruner_kind("hyperbnad")
    assert looked_up.value.problems == [
        ("search.prune.kind", "unknown pruner 'hyperbnad'; give none, median, asha or hyperband")
    ]


@pytest.mark.parametrize(
    "prune, expected",
    [
        pytest.param(
            {"min_steps": 5},
            [("search.prune.kind", "missing; give none, median, asha or hyperband")],
            id="no-kind",
        ),
        pytest.param(
            {"kind": "none", "min_steps": 5},
            [("search.prune.min_steps", "is a setting of a pruner, and search.prune.kind is none")],
            id="none-takes-nothing",
        ),
        pytest.param(
            {"kind": "median", "reduction_factor": 2},
            [
                (
                    "search.prune.reduction_factor",
                    "is a setting of asha and hyperband, and search.prune.kind is median",
                )
            ],
            id="another-kinds-setting",
        ),
    ],
)
def test_a_setting_of_another_kind_names_whose_it_is(prune, expected):
    with pytest.raises(Invalid) as raised:
        read_search({"method": "random", "trials": 3, "prune": prune})
    assert raised.value.problems == expected
