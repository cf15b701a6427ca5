"""Run names: short, unambiguous, readable in TensorBoard's Trial ID column."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.spec.names import labels, run_name
from trainer.spec.sweep import plan

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize(
    "keys, expected",
    [
        pytest.param(["optimizer.lr", "train.batch_size"], ["lr", "batch_size"], id="last-part"),
        pytest.param(["optimizer.kind"], ["optimizer"], id="a-kind-by-its-section"),
        pytest.param(
            ["loss.kind", "schedule.kind", "train.seed"], ["loss", "schedule", "seed"], id="two-kinds"
        ),
        pytest.param(["model.bias", "data.bias"], ["model.bias", "data.bias"], id="same-last-part"),
        pytest.param(
            ["optimizer", "optimizer.kind"], ["optimizer", "optimizer.kind"], id="a-kind-and-its-section"
        ),
    ],
)
def test_labels(keys, expected):
    assert list(labels(keys).values()) == expected


SECTIONS = [{"kind": "adam", "lr": 0.003}, {"kind": "sgd", "lr": 0.01, "momentum": 0.9}]


@pytest.mark.parametrize(
    "values, sweep, expected",
    [
        pytest.param([], None, "base", id="nothing-swept"),
        pytest.param(
            [("train.batch_size", "full"), ("optimizer.weight_decay", 0.1)],
            None,
            "batch_size=full,weight_decay=0.1",
            id="plain",
        ),
        pytest.param([("optimizer.kind", "adam")], None, "optimizer=adam", id="kind"),
        pytest.param(
            [("optimizer", SECTIONS[1]), ("train.batch_size", 32)],
            {"optimizer": SECTIONS},
            "optimizer=sgd,lr=0.01,momentum=0.9,batch_size=32",
            id="section-by-its-differences",
        ),
        pytest.param(
            [("optimizer", {"kind": "sgd", "lr": 0.1, "nesterov": True})],
            {
                "optimizer": [
                    {"kind": "sgd", "lr": 0.1, "nesterov": True},
                    {"kind": "sgd", "lr": 0.1, "nesterov": False},
                ]
            },
            "nesterov=true",
            id="section-same-kind",
        ),
        pytest.param(
            [("optimizer", {"kind": "sgd"})],
            {"optimizer": [{"kind": "sgd"}, {"kind": "sgd", "momentum": 0.9}]},
            "optimizer=sgd",
            id="section-whose-differences-it-lacks",
        ),
        pytest.param(
            [("optimizer", {"kind": "sgd", "lr": 0.1})],
            {"optimizer": [{"kind": "sgd", "lr": 0.1}]},
            "optimizer=sgd,lr=0.1",
            id="section-of-one-value",
        ),
        pytest.param(
            [("optimizer.lr", 0.5), ("optimizer", {"kind": "sgd", "lr": 0.1})],
            {"optimizer": [{"kind": "sgd", "lr": 0.1}]},
            "lr=0.5,optimizer=sgd",
            id="a-deeper-key-refines-the-section",
        ),
        pytest.param([("optimizer.lr", 0.1), ("name", "again")], None, "lr=0.1", id="no-experiment-name"),
        pytest.param(
            [("model.hidden", [64, 64]), ("data.path", "../data/x y.csv")],
            None,
            "hidden=64-64,path=.._data_x_y.csv",
            id="unsafe-characters",
        ),
    ],
)
def test_run_name(values, sweep, expected):
    assert run_name(values, sweep) == expected


def test_a_long_name_is_cut_with_a_hash_that_keeps_it_unique():
    a, b = (run_name([("description", "x" * 200 + end)]) for end in "ab")
    assert len(a) == len(b) == 100 and a != b and a.startswith("description=xxx")


def test_comparison_set_names_are_unambiguous_and_shorter_than_before():
    runs = plan(sorted(str(p) for p in EXPERIMENTS.glob("*.yaml")))
    folders = [r.folder for r in runs]
    assert len(set(folders)) == len(folders) == 216
    assert max(map(len, folders)) <= 64
    assert "synthetic-mlp/optimizer=sgd,lr=0.01,momentum=0.9,batch_size=256" in folders
    assert "synthetic-mlp/optimizer=adam,lr=0.003,batch_size=32" in folders
    assert "l1-vs-mse/loss=mse,batch_size=full,schedule=cosine,seed=4" in folders
    assert not any("kind" in f for f in folders)
