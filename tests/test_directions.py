"""One direction per metric name (trainer.kinds.metrics.direction_of), and every place that ranks by a
metric (a search's study, the report's findings, a contradicting search.direction) takes it from there."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trainer.kinds import metrics
from trainer.kinds.metrics import BUILTIN, KNOWN_DIRECTIONS, direction_of
from trainer.reporting import findings
from trainer.spec.search import SearchSettings
from trainer.spec.trials import metric_of

NAMED = [*BUILTIN, *KNOWN_DIRECTIONS]


@pytest.mark.parametrize(
    "metric, expected",
    [
        pytest.param("final/val/loss", "minimize", id="loss"),
        pytest.param("best/train/accuracy", "maximize", id="accuracy"),
        pytest.param("final/val/macro_f1", "maximize", id="macro_f1"),
        pytest.param("final/train/mae", "minimize", id="mae"),
        pytest.param("final/val/rmse", "minimize", id="rmse"),
        pytest.param("final/weight_distance", "minimize", id="distance"),
        pytest.param("final/converged", "maximize", id="converged"),
        pytest.param("final/converged_step", "minimize", id="converged_step"),
        pytest.param("final/val/char_acc", None, id="a-users-metric"),
    ],
)
def test_a_metric_name_tells_its_direction(metric, expected):
    assert direction_of(metric) == expected


def test_builtin_metrics_say_their_own_direction():
    for name, metric in BUILTIN.items():
        assert direction_of(f"final/val/{name}") == ("maximize" if metric.greater_is_better else "minimize")


def _search(metric: str) -> SimpleNamespace:
    report = SimpleNamespace(metric=None, higher_is_better=None)
    return SimpleNamespace(settings=SearchSettings(metric=metric), spec=SimpleNamespace(report=report))


@pytest.mark.parametrize("name", NAMED)
def test_searches_and_findings_agree_on_every_named_metric(name):
    metric = f"final/train/{name}"
    run = SimpleNamespace(validation_rows=0)
    assert metric_of(_search(metric), run) == (metric, direction_of(metric))
    assert findings.direction(metric, []) == (direction_of(metric) == "maximize")


def test_an_unnamed_metric_is_minimized_by_a_search_and_judged_from_its_runs_by_the_report():
    metric = "final/val/char_acc"
    assert metric_of(_search(metric), SimpleNamespace(validation_rows=1))[1] == "minimize"
    runs = [{"metrics": {"final/val/char_acc": 0.5, "best/val/char_acc": 0.9}}]
    assert findings.direction(metric, runs) is True
    assert metrics.direction_of(metric) is None
