"""The pictures of an experiment's report: which it draws (the curves of its groups, its
settings' effects, a search's trials, the weights against their true values) and the steps of each
curve read for them; the drawing itself is trainer.reporting.plots (matplotlib, imported here
only when a report draws)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.reporting.bands import eval_tag, group_bands
from trainer.reporting.findings import ExperimentFindings

POINT_BUDGET, MIN_POINTS = 50_000, 50  # steps read of each curve: at most 200, fewer over many runs
MAX_WEIGHT_LINES = 64  # weights drawn against their true values, the first ones


def _truth(f: ExperimentFindings) -> list[float] | None:
    for group in f.groups:
        for run in group.runs:
            truth = run.get("true_weights")
            if isinstance(truth, list) and truth and all(_number(w) for w in truth[:MAX_WEIGHT_LINES]):
                return [float(w) for w in truth[:MAX_WEIGHT_LINES]]
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def draw(logdir: Path, f: ExperimentFindings, out: Path) -> dict[str, str]:
    """The experiment's pictures in `out`: kind -> file name."""
    from trainer.reporting import plots

    tag = eval_tag(f)
    truth = _truth(f)
    # One line a weight: past a few dozen a picture shows nothing more, and a record may claim millions.
    weight_tags = [f"w/{i}" for i in range(min(len(truth), MAX_WEIGHT_LINES))] if truth else []
    # Per-step weight curves cost a parse per kept step; a large experiment keeps fewer steps of each.
    points = max(MIN_POINTS, min(200, POINT_BUDGET // max(1, f.runs)))
    bands = {g.label: group_bands(logdir, g, [tag, *weight_tags], points) for g in f.groups}
    images = {}
    loss_bands = {label: b[tag] for label, b in bands.items() if tag in b}
    if loss_bands:
        images["curves"] = plots.curves(f, tag, loss_bands, out / f"{f.name}-curves.png").name
    drawn = plots.settings(f, out / f"{f.name}-settings.png")
    if drawn is not None:
        images["settings"] = drawn.name
    if f.search is not None:
        searched = plots.search(f, out / f"{f.name}-search.png")
        if searched is not None:
            images["search"] = searched.name
    trajectories = {label: {t: b[t] for t in weight_tags if t in b} for label, b in bands.items()}
    trajectories = {label: t for label, t in trajectories.items() if t}
    if truth and trajectories:
        images["weights"] = plots.weights(f, trajectories, truth, out / f"{f.name}-weights.png").name
    return images
