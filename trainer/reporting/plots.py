"""The report's pictures, drawn with matplotlib (Agg backend, no display): evaluation curves with
their seed band, the ranking metric against each swept numeric setting, and weight trajectories."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from trainer.reporting.findings import ExperimentFindings  # noqa: E402
from trainer.run import rundir  # noqa: E402
from trainer.tensorboard.curves import Band  # noqa: E402
from trainer.tensorboard.hparams import metric_text  # noqa: E402

WIDTH, HEIGHT, DPI = 8.0, 4.5, 100  # inches; PNGs of 800 x 450 pixels
PANEL_WIDTH = 4.0
MAX_LEGEND = 12  # groups named in a legend; more are drawn but not named


def _save(figure: plt.Figure, path: Path) -> Path:
    """The figure as a PNG at path, put in place whole (a symlink there is replaced, not followed)."""
    png = io.BytesIO()
    figure.savefig(png, dpi=DPI, format="png")
    plt.close(figure)
    rundir.write_atomic(path, png.getvalue(), durable=False)
    return path


def _log_scale(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and bool(positive) and max(positive) / min(positive) >= 30


def metric_label(tag: str) -> str:
    name, _ = metric_text(tag)
    return name + (" (mean per row)" if tag.endswith("/loss") else "")


def curves(found: ExperimentFindings, tag: str, bands: dict[str, Band], path: Path) -> Path:
    """Each group's evaluation curve of `tag`: the seed mean as a line, min to max as a band."""
    figure, axes = plt.subplots(figsize=(WIDTH, HEIGHT), layout="constrained")
    values: list[float] = []
    palette = plt.get_cmap("tab10" if len(found.groups) <= 10 else "tab20")  # a colour per group
    for i, group in enumerate(found.groups):
        band = bands.get(group.label)
        if band is None:
            continue
        label = f"{group.label} (n={band.runs})" if i < MAX_LEGEND else None
        (line,) = axes.plot(band.steps, band.mean, label=label, linewidth=1.5, color=palette(i % palette.N))
        if band.runs > 1:
            axes.fill_between(band.steps, band.low, band.high, color=line.get_color(), alpha=0.2, linewidth=0)
        values += [*band.low.tolist(), *band.high.tolist()]
    if values and _log_scale(values):
        axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel(f"{tag} (mean per row)" if tag.endswith("loss") else tag)
    axes.set_title(f"{found.name}: {tag}, seed mean; band: lowest to highest seed")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="x-small", loc="best", ncols=2 if len(found.groups) > 6 else 1)
    return _save(figure, path)


def _panels(count: int) -> tuple[plt.Figure, Any]:
    """A figure of `count` panels side by side, one per setting."""
    return plt.subplots(
        1, count, figsize=(max(WIDTH / 2, PANEL_WIDTH * count), HEIGHT), layout="constrained", squeeze=False
    )


def settings(found: ExperimentFindings, path: Path) -> Path | None:
    """The ranking metric against each swept numeric setting: every run as a dot, the setting's
    marginal mean (over the other settings) as a line; one panel per setting."""
    effects = {
        e.key: e for e in found.effects.get(found.metric, []) if all(v[1] is not None for v in e.values)
    }
    keys = [k for k in found.swept if k in effects]
    if not keys:
        return None
    figure, panels = _panels(len(keys))
    for axes, key in zip(panels[0], keys):
        xs, ys = [], []
        for group in found.groups:
            for run in group.runs:
                value = (run.get("metrics") or {}).get(found.metric)
                if run.get("status") == "complete" and value is not None and key in group.numbers:
                    xs.append(group.numbers[key])
                    ys.append(float(value))
        axes.scatter(xs, ys, s=12, color="0.6", label="one run")
        points = sorted((v[1], v[2]) for v in effects[key].values)
        axes.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            "o-",
            color="C0",
            label="mean over the other settings",
        )
        if _log_scale(xs) or key.endswith(".lr"):
            axes.set_xscale("log")
        if _log_scale(ys):
            axes.set_yscale("log")
        axes.set_xlabel(key)
        axes.set_ylabel(metric_label(found.metric))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small")
    better = "higher" if found.higher_is_better else "lower"
    # Short lines: a single panel is narrow, and a longer title would run off its edges.
    figure.suptitle(f"{found.name}: each swept setting\n{found.metric}, {better} is better")
    return _save(figure, path)


def weights(
    found: ExperimentFindings, trajectories: dict[str, dict[str, Band]], truth: list[float], path: Path
) -> Path:
    """Each weight's seed mean and band against its true value, one panel per group."""
    labels = [g.label for g in found.groups if g.label in trajectories]
    columns = min(4, len(labels))
    rows = math.ceil(len(labels) / columns)
    figure, panels = plt.subplots(
        rows,
        columns,
        figsize=(PANEL_WIDTH * columns, 3.0 * rows),
        layout="constrained",
        squeeze=False,
        sharey=True,
    )
    for axes, label in zip(panels.flat, labels):
        for i, (tag, band) in enumerate(
            sorted(trajectories[label].items(), key=lambda item: int(item[0][2:]))
        ):
            (line,) = axes.plot(
                band.steps,
                band.mean,
                linewidth=1.2,
                label=f"{tag} (true {truth[i]:g})" if i < len(truth) else tag,
            )
            if band.runs > 1:
                axes.fill_between(
                    band.steps, band.low, band.high, color=line.get_color(), alpha=0.2, linewidth=0
                )
            if i < len(truth):
                axes.axhline(truth[i], color=line.get_color(), linestyle=":", linewidth=1)
        runs = next(iter(trajectories[label].values())).runs
        axes.set_title(f"{label} (n={runs})", fontsize="small")
        axes.set_xlabel("training step")
        axes.xaxis.set_major_locator(MaxNLocator(4))
        axes.grid(alpha=0.3)
    for axes in panels[:, 0]:
        axes.set_ylabel("weight value")
    for axes in list(panels.flat)[len(labels) :]:
        axes.set_visible(False)
    panels.flat[0].legend(fontsize="x-small")
    figure.suptitle(f"{found.name}: weights, seed mean and lowest-to-highest band; dotted: true values")
    return _save(figure, path)


def _judged(run: dict[str, Any]) -> float | None:
    """The value a pruned run was judged by where it stopped (its evaluation of the search's metric)."""
    stopped = run.get("stopped") if run.get("status") == "pruned" else None
    values = [v for k, v in (stopped or {}).items() if k not in ("step", "reason")]
    value = values[0] if values else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def search(found: ExperimentFindings, path: Path) -> Path | None:
    """A search's trials against each searched setting: a complete trial's seed mean as a dot (its
    seeds' spread as a bar), a pruned trial's seed mean where it stopped (the value it was judged
    by) as a hollow mark; a log axis for a setting drawn on a log scale."""
    s = found.search
    if s is None or not s.searched:
        return None
    metric = found.metric
    keys = s.searched
    figure, panels = _panels(len(keys))
    for axes, key in zip(panels[0], keys):
        complete: list[tuple[Any, float, float]] = []
        pruned: list[tuple[Any, float]] = []
        for group in found.groups:
            value = ((group.runs[0].get("trial") or {}).get("params") or {}).get(key)
            if value is None:
                continue
            stats = group.metrics.get(metric)
            if stats is not None:
                complete.append((value, stats.mean, stats.std or 0.0))
            elif group.counts.get("pruned"):
                judged = [_judged(r) for r in group.runs]
                judged = [v for v in judged if v is not None]
                if judged:
                    pruned.append((value, math.fsum(judged) / len(judged)))
        numeric = key in s.space
        order = sorted({str(v) for v, *_ in complete + pruned}) if not numeric else []

        def x(value: Any, numeric: bool = numeric, order: list[str] = order) -> float:
            return float(value) if numeric else float(order.index(str(value)))

        if pruned:
            axes.scatter(
                [x(v) for v, _ in pruned],
                [y for _, y in pruned],
                s=18,
                facecolors="none",
                edgecolors="0.55",
                label="pruned: its seeds' mean where it stopped",
            )
        if complete:
            axes.errorbar(
                [x(v) for v, _, _ in complete],
                [m for _, m, _ in complete],
                yerr=[e for _, _, e in complete],
                fmt="o",
                color="C0",
                markersize=4,
                elinewidth=0.8,
                label="complete: mean, seeds' std",
            )
        values = [v for v, *_ in complete + pruned]
        if numeric and s.space[key].get("log"):
            # Plain labels at each decade; at 1, 2 and 5 of each where the range spans little more than one.
            axes.set_xscale("log")
            low, high = s.space[key].get("low"), s.space[key].get("high")
            wide = bool(low and high and low > 0 and math.log10(high / low) > 1.5)
            axes.xaxis.set_major_locator(LogLocator(subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
            axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axes.xaxis.set_minor_formatter(NullFormatter())
        elif numeric and values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not numeric:
            axes.set_xticks(range(len(order)), order)
        ys = [m for _, m, _ in complete] + [y for _, y in pruned]
        if ys and _log_scale(ys):
            axes.set_yscale("log")
        axes.set_xlabel(key)
        axes.set_ylabel(metric_label(metric))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small")
    better = "higher" if found.higher_is_better else "lower"
    figure.suptitle(f"{found.name}: {s.method} search, {s.trials} trials\n{metric}, {better} is better")
    return _save(figure, path)
