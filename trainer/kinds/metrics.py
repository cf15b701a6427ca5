"""Metrics measured at every evaluation, on the training rows and on the validation rows.

`eval.metrics` lists built-in names or import paths of the user's functions. A metric is called
as `metric(output, target)` with the model's output and the targets of all rows of a split, and
returns a number, a 0-d tensor, or a dict of named numbers (each becomes a curve and a column).
Whether higher is better is read from the function's `greater_is_better` attribute: true or
false, or for a metric returning a dict, a dict of them by name (default: lower is better). It
decides which value is a run's best.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.core.strict import Invalid, is_import_path, suggest
from trainer.kinds import registry as kinds
from trainer.kinds.losses import fit


@dataclass(frozen=True)
class Metric:
    name: str  # the curve's name: val/<name>, train/<name>
    compute: Callable[[Any, Any], Any]  # of one run's outputs and targets
    greater_is_better: bool | dict[str, bool]
    doc: str
    classes_only: bool = False  # needs class labels (accuracy)
    # A built-in metric of many runs at once: outputs and targets with a leading run dimension
    # [runs, ...] -> [runs]; `compute` is it for a run dimension of one, so both engines agree.
    over_runs: Callable[[Any, Any], Any] | None = None


def per_run_mean(values: Any) -> Any:
    """Each run's mean of its [runs, ...] values: [runs]."""
    return values.reshape(values.shape[0], -1).mean(dim=1)


def accuracy(output: Any, target: Any) -> Any:
    """Top-1 accuracy: the share of rows whose highest score is the true class (for one logit a row,
    a positive logit means class 1)."""
    if output.dim() == target.dim() + 1 and output.shape[-1] > 1:
        predicted = output.argmax(dim=-1)
    else:
        predicted = (fit(output, target) > 0).to(target.dtype)
    return per_run_mean((predicted == target).float())


def mae(output: Any, target: Any) -> Any:
    """Mean absolute error."""
    return per_run_mean((fit(output, target) - target).abs().float())


def rmse(output: Any, target: Any) -> Any:
    """Root mean squared error."""
    return per_run_mean((fit(output, target) - target).float().square()).sqrt()


def _builtin(name: str, over_runs: Callable[[Any, Any], Any], greater: bool, doc: str, **more: Any) -> Metric:
    def one_run(output: Any, target: Any) -> Any:
        return over_runs(output.unsqueeze(0), target.unsqueeze(0))[0]

    return Metric(name, one_run, greater, doc, over_runs=over_runs, **more)


# Each is written for outputs [runs, rows, ...] and targets [runs, rows]: the value of each run.
BUILTIN = {
    "accuracy": _builtin("accuracy", accuracy, True, accuracy.__doc__.splitlines()[0], classes_only=True),
    "mae": _builtin("mae", mae, False, "mean absolute error"),
    "rmse": _builtin("rmse", rmse, False, "root mean squared error"),
}


# Values a run records beside its metrics, and a user's metric common enough to be known by name:
# whether higher is better. The built-in metrics say it themselves (BUILTIN).
KNOWN_DIRECTIONS = {
    "loss": False,
    "weight_distance": False,
    "converged_step": False,
    "converged": True,
    "macro_f1": True,
}


def direction_of(metric: str) -> str | None:
    """Which way a recorded value is better as its name tells ('maximize' for final/val/accuracy,
    'minimize' for best/train/loss), or None where the name does not tell (a user's metric)."""
    name = metric.rpartition("/")[2]
    if name in BUILTIN:
        higher = BUILTIN[name].greater_is_better
    elif name in KNOWN_DIRECTIONS:
        higher = KNOWN_DIRECTIONS[name]
    else:
        return None
    return "maximize" if higher else "minimize"


def resolve(name: str, folder: Any, key: str) -> Metric:
    """A built-in metric by name, or the user's by import path; Invalid names what is wrong."""
    if name in BUILTIN:
        return BUILTIN[name]
    if not is_import_path(name):
        raise Invalid(
            [
                (
                    key,
                    f"unknown metric {name!r}{suggest(name, list(BUILTIN))}; the built-in metrics are "
                    f"{', '.join(BUILTIN)}, or name a function of yours as module:function",
                )
            ]
        )
    target = kinds.import_attribute(name, str(Path(folder).resolve()) if folder is not None else None, key)
    if not callable(target):
        raise Invalid(
            [(key, f"{name} is {type(target).__name__}, not a function (output, target) -> number")]
        )
    short = name.rpartition(":")[2].rpartition(".")[2]
    doc = ((getattr(target, "__doc__", None) or short).strip().splitlines() or [short])[0]
    greater = getattr(target, "greater_is_better", False)
    return Metric(short, target, dict(greater) if isinstance(greater, dict) else bool(greater), doc)


def greater_is_better(metric: Metric, name: str) -> bool:
    """Whether a higher value of one of a metric's values is better."""
    if isinstance(metric.greater_is_better, dict):
        return bool(metric.greater_is_better.get(name, False))
    return metric.greater_is_better


def values(metric: Metric, output: Any, target: Any) -> dict[str, Any]:
    """What a metric returns, as name -> number or 0-d tensor."""
    result = metric.compute(output, target)
    if isinstance(result, dict):
        return {str(k): v for k, v in result.items()}
    return {metric.name: result}
