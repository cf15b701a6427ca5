"""Which columns the experiment record declares, in what order, and which TensorBoard shows first."""

from __future__ import annotations

import pytest
from tensorboard.plugins.hparams import plugin_data_pb2

from trainer.tensorboard.hparams import (
    EXPERIMENT_TAG,
    declared_keys,
    declared_metrics,
    experiment_pb,
    shown_first,
    swept_keys,
)


def run(
    experiment: str, swept: dict, status: str = "complete", metrics: dict | None = None, **hparams
) -> dict:
    """A run record as the index reads it: dotted keys are written with '__' for '.'."""
    values = {"experiment": experiment, **{k.replace("__", "."): v for k, v in hparams.items()}}
    return {
        "experiment": experiment,
        "swept": swept,
        "status": status,
        "hparams": values,
        "metrics": {"eval_loss": 0.1, "converged": False, "diverged": False} if metrics is None else metrics,
    }


def grid(experiment: str, keys: dict[str, list], **fixed) -> list[dict]:
    """Every combination of the keys' values, each run sweeping them all."""
    runs = [{}]
    for key, values in keys.items():
        runs = [{**r, key: v} for r in runs for v in values]
    return [
        run(experiment, dict(r), **{k.replace(".", "__"): v for k, v in r.items()}, **fixed) for r in runs
    ]


# The comparison set in miniature: seeds and batch sizes swept by most experiments, the rest by one.
COMPARISON = (
    grid(
        "batch-reduction",
        {"loss.reduction": ["sum", "mean"], "train.batch_size": [1.0, 10.0], "train.seed": [0.0, 1.0]},
        data__kind="seed_toy",
        loss__kind="l1",
    )
    + grid(
        "l1-vs-mse",
        {"loss.kind": ["l1", "mse"], "schedule.kind": ["constant", "cosine"], "train.seed": [0.0, 1.0]},
        data__kind="seed_toy",
        loss__reduction="mean",
    )
    + grid(
        "lr-weight-decay",
        {"optimizer.lr": [0.1, 0.01], "optimizer.weight_decay": [0.0, 0.1]},
        data__kind="seed_toy",
        train__batch_size=1.0,
    )
    + [
        run(
            "synthetic-mlp",
            {"optimizer": {"kind": "adam", "lr": 0.003}, "train.batch_size": b},
            optimizer__kind="adam",
            optimizer__lr=0.003,
            optimizer__betas="[0.9, 0.999]",
            train__batch_size=b,
            data__kind="synthetic",
        )
        for b in (32.0, 256.0)
    ]
    + [
        run(
            "synthetic-mlp",
            {"optimizer": {"kind": "sgd", "lr": 0.01, "momentum": 0.9}, "train.batch_size": b},
            optimizer__kind="sgd",
            optimizer__lr=0.01,
            optimizer__momentum=0.9,
            train__batch_size=b,
            data__kind="synthetic",
        )
        for b in (32.0, 256.0)
    ]
)


def test_what_most_experiments_swept_comes_first_then_the_experiment_then_the_rest():
    # Seed, batch size and lr are swept by two experiments each (in 16, 12 and 8 runs); the others by
    # one, the section's momentum not at all (only SGD has it); ties keep the order of the runs.
    assert swept_keys(COMPARISON) == [
        "train.seed",
        "train.batch_size",
        "optimizer.lr",
        "loss.reduction",
        "loss.kind",
        "schedule.kind",
        "optimizer.weight_decay",
        "optimizer.kind",
    ]
    keys = declared_keys(COMPARISON)
    assert keys[:9] == [*swept_keys(COMPARISON), "experiment"]
    assert set(keys[9:]) == {"data.kind", "optimizer.betas", "optimizer.momentum"}


def test_tensorboard_is_told_to_show_the_five_most_widely_swept_settings_first():
    keys = declared_keys(COMPARISON)
    assert shown_first(COMPARISON, keys) == {
        "train.batch_size",
        "train.seed",
        "optimizer.lr",
        "loss.reduction",
        "loss.kind",
    }
    infos = {i.name: i.differs for i in record_of(COMPARISON).hparam_infos}
    assert [name for name, differs in infos.items() if differs] == keys[:5]


@pytest.mark.parametrize(
    "runs, expected",
    [
        pytest.param(grid("one", {"optimizer.lr": [0.1, 0.2]}), ["optimizer.lr", "experiment"], id="one-key"),
        pytest.param(
            grid("one", {"train.seed": [0.0, 1.0], "optimizer.lr": [0.1, 0.2]}),
            ["train.seed", "optimizer.lr", "experiment"],
            id="spec-order-when-equally-swept",
        ),
        pytest.param(
            grid("pinned", {"optimizer.lr": [0.1]}) + grid("other", {"optimizer.lr": [0.2]}),
            ["experiment", "optimizer.lr"],
            id="a-pinned-key-is-not-swept",
        ),
        pytest.param(
            [run("a", {}, optimizer__lr=0.1), run("b", {}, optimizer__lr=0.2, model__bias=True)],
            ["experiment", "optimizer.lr", "model.bias"],
            id="nothing-swept",
        ),
    ],
)
def test_declared_keys(runs, expected):
    assert declared_keys(runs) == expected


def test_with_nothing_swept_the_first_differing_settings_are_shown():
    runs = [
        run("a", {}, optimizer__lr=0.1, model__bias=False),
        run("b", {}, optimizer__lr=0.1, model__bias=True),
    ]
    keys = declared_keys(runs)
    assert keys == ["experiment", "model.bias"] and shown_first(runs, keys) == {"experiment", "model.bias"}


# --- metrics ------------------------------------------------------------------------------------


def m(**values) -> dict:
    """Record metrics by their tags: m(train_loss=0.1) -> {'final/train/loss': 0.1}."""
    names = {
        "train_loss": "final/train/loss",
        "best_train_loss": "best/train/loss",
        "val_accuracy": "final/val/accuracy",
        "best_val_accuracy": "best/val/accuracy",
        "distance": "final/weight_distance",
        "converged": "final/converged",
        "converged_step": "final/converged_step",
        "diverged": "final/diverged",
    }
    return {names.get(k, k): v for k, v in values.items()}


@pytest.mark.parametrize(
    "runs, expected",
    [
        pytest.param(
            [
                run("a", {}, metrics=m(train_loss=0.1, converged=True, converged_step=40, diverged=False)),
                run("a", {}, metrics=m(train_loss=0.2, converged=False, converged_step=None, diverged=False)),
            ],
            ["final/train/loss", "final/converged", "final/diverged"],
            id="a-step-some-runs-lack",
        ),
        pytest.param(
            [
                run("a", {}, metrics=m(train_loss=0.1, distance=0.01, diverged=False)),
                run("b", {}, metrics=m(train_loss=0.2, diverged=False)),
            ],
            ["final/train/loss", "final/diverged"],
            id="a-distance-only-some-data-knows",
        ),
        pytest.param(
            [
                run("a", {}, metrics=m(train_loss=0.1, converged_step=10)),
                run("a", {}, status="diverged", metrics=m(train_loss=None, diverged=True, diverged_step=7)),
                run("a", {}, status="failed", metrics={}),
            ],
            ["final/train/loss", "final/converged_step"],
            id="complete-runs-decide",
        ),
        pytest.param(
            [run("a", {}, status="diverged", metrics=m(best_train_loss=0.3, diverged=True, diverged_step=7))],
            ["best/train/loss", "final/diverged"],
            id="no-complete-run",
        ),
        pytest.param([run("a", {}, status="failed", metrics={})], [], id="nothing-finished"),
        pytest.param(
            [run("a", {}, metrics=m(val_accuracy=0.8, best_val_accuracy=0.9, diverged=False))],
            ["final/val/accuracy", "best/val/accuracy", "final/diverged"],
            id="fixed-meanings-last",
        ),
        pytest.param(
            [run("a", {}, metrics={"eval_loss": 0.1, "converged": True, "diverged": False})],
            ["final/eval_loss", "final/converged", "final/diverged"],
            id="a-record-of-an-earlier-version",
        ),
    ],
)
def test_a_metric_is_declared_when_every_complete_run_has_a_value(runs, expected):
    assert declared_metrics(runs) == expected


def record_of(runs: list[dict]):
    (value,) = experiment_pb(runs).value
    assert value.tag == EXPERIMENT_TAG
    return plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content).experiment


def test_metric_columns_are_named_by_what_they_measure():
    runs = [
        run(
            "a",
            {},
            metrics={
                "best/val/accuracy": 0.9,
                "final/train/loss": 0.2,
                "final/top5/f1": 0.5,
                "final/weight_distance": 0.1,
            },
        )
    ]
    shown = {m.name.tag: (m.display_name, m.description) for m in record_of(runs).metric_infos}
    assert shown["best/val/accuracy"] == (
        "best val/accuracy",
        "best accuracy on the validation rows over the run's evaluations",
    )
    assert shown["final/train/loss"] == (
        "final train/loss",
        "loss on the training rows at the end of training (mean per row)",
    )
    assert shown["final/top5/f1"] == ("final top5/f1", "f1 on the top5 at the end of training")
    assert shown["final/weight_distance"][0] == "distance to truth"
