"""The report of a log folder: report.md with its pictures beside it, and a summary for the terminal.

Every number and every sentence comes from trainer.findings; the sentences are templates filled
with computed effects, so they stay true when a spec or the trainer changes.
"""

from __future__ import annotations

from pathlib import Path

from trainer.core.errors import UserError
from trainer.core.status import Status
from trainer.core.strict import suggest
from trainer.core.visible import visible
from trainer.reporting import index
from trainer.reporting.findings import CONVERGED, DISTANCE, Effect, ExperimentFindings, Group, findings
from trainer.reporting.page import page
from trainer.reporting.pictures import draw
from trainer.reporting.search import pruned_at
from trainer.reporting.stats import Stats
from trainer.run import rundir

REPORT = "report.md"
PAGE = "report.html"  # the same, one self-contained page with the pictures inside
SUMMARY = "summary.md"  # the findings in brief: what the terminal shows and docs/findings.md quotes
SIGNIFICANT = 3  # digits printed for a value


def num(value: float | None) -> str:
    """A value as the report prints it: three significant digits."""
    if value is None:
        return "-"
    return f"{value:.{SIGNIFICANT}g}"


def spread(s: Stats) -> str:
    """'mean ± std' of a group's runs; a single run has no spread, which is said rather than a zero."""
    return f"{num(s.mean)} (1 run, no spread)" if s.std is None else f"{num(s.mean)} ± {num(s.std)}"


def interval(s: Stats) -> str:
    return "-" if s.half_width is None else f"[{num(s.mean - s.half_width)}, {num(s.mean + s.half_width)}]"


def runs_text(group: Group) -> str:
    """'5' for five complete runs; '4 of 5 (1 failed)' where some did not complete."""
    if not group.failed:
        return str(group.complete)
    others = ", ".join(f"{n} {s}" for s, n in sorted(group.counts.items()) if s != Status.COMPLETE)
    return f"{group.complete} of {len(group.runs)} ({others})"


def _better(found: ExperimentFindings) -> str:
    return "higher is better" if found.higher_is_better else "lower is better"


def separation_text(found: ExperimentFindings) -> str:
    """Whether the best group is told apart from the runner-up, said plainly."""
    ranked = found.ranked()
    if len(ranked) < 2:
        return "Only one group has a value: nothing to compare."
    best, second, sep = ranked[0], ranked[1], found.separation
    head = f"`{best.label}` ranks first, `{second.label}` second"
    if sep is None or sep.separable is None:
        return f"{head}; with one run in a group there is no spread to test them against: add seeds to tell them apart."
    if best.metrics[found.metric].mean == second.metrics[found.metric].mean == 0:
        return (
            f"{head}, but **the two cannot be told apart**: both are zero to float32 precision "
            f"(under a millionth of the experiment's largest {found.metric})."
        )
    if sep.t is None or sep.df is None or sep.critical is None:
        verdict = "separable" if sep.separable else "not separable"
        return f"{head}; every seed gave the same value, so they are {verdict}."
    test = f"Welch's t-test at 95%: t = {num(sep.t)} {'>' if sep.separable else '≤'} {num(sep.critical)}, {num(sep.df)} degrees of freedom"
    if sep.separable:
        return f"{head}: the difference is larger than the seeds' spread explains ({test})."
    return f"{head}, but **the two cannot be told apart** given the seeds' spread ({test})."


def _effect_values(effect: Effect, tag: str) -> str:
    share = tag == CONVERGED
    return ", ".join(
        f"{f'{mean:.0%}' if share else num(mean)} with {value}" for value, _, mean, _ in effect.values
    )


def truth_lines(found: list[ExperimentFindings]) -> list[str]:
    """What decides whether the weights reach the true weights: each experiment's swept settings by
    their effect on the final distance, and on the share of runs that converged."""
    known = [f for f in found if DISTANCE in f.effects and f.effects[DISTANCE]]
    if not known:
        return []
    lines = [
        "Final distance from the weights to the true weights, averaged over the seeds and over the "
        "experiment's other settings (marginal means), the setting with the largest effect first; "
        "'converged' is the share of runs whose training loss stayed within `eval.tolerance` to the end.",
        "",
    ]
    ranking = []
    for f in known:
        parts = []
        converged = {e.key: e for e in f.effects.get(CONVERGED, [])}
        for effect in f.effects[DISTANCE]:
            best, worst = effect.best(False), effect.worst(False)
            ratio = f", {num(worst[2] / best[2])}× apart" if best[2] > 0 else ""
            text = (
                f"`{effect.key}` changes the distance by {num(effect.size)} "
                f"({_effect_values(effect, DISTANCE)}{ratio})"
            )
            if effect.key in converged:
                text += f"; converged: {_effect_values(converged[effect.key], CONVERGED)}"
            parts.append(text)
            ranking.append((effect.size, effect.key, f.name))
        seeds = _seeds_text(f)
        lines.append(f"- **{f.name}** ({seeds}): " + "; ".join(parts) + ".")
    ranking.sort(reverse=True)
    order = ", ".join(f"`{key}` {num(size)} ({name})" for size, key, name in ranking)
    lines += ["", f"Settings by their effect on the distance, largest first: {order}."]
    return lines


def _seeds_text(f: ExperimentFindings) -> str:
    sizes = sorted({len(g.runs) for g in f.groups})
    runs = "/".join(map(str, sizes))
    what = " and ".join(f"`{k}`" for k in f.replicates)
    kind = f"{f.search.method} search of {len(f.groups)} trials" if f.search else f"{len(f.groups)} groups"
    return f"{kind} of {runs} run{'s' if sizes != [1] else ''} over {what}"


def best_line(f: ExperimentFindings) -> str:
    """One experiment's best group, its value and range, and whether it is separable from the next."""
    ranked = f.ranked()
    if not ranked:
        return f"- **{f.name}**: no group has a complete run."
    s = ranked[0].metrics[f.metric]
    pruned = f.search.states.get(Status.PRUNED, 0) if f.search else 0
    failed = sum(g.failed for g in f.groups) - sum(g.counts.get(Status.PRUNED, 0) for g in f.groups)
    failures = f"; {pruned} of {len(f.groups)} trials pruned by {f.search.pruner}" if pruned else ""
    failures += f"; {failed} of {f.runs} runs did not complete" if failed > 0 else ""
    return (
        f"- **{f.name}** ({_seeds_text(f)}{failures}), ranked by {f.metric} ({_better(f)}): "
        f"best `{ranked[0].label}` {spread(s)}, range {num(s.low)}–{num(s.high)}. " + separation_text(f)
    )


def summary_lines(found: list[ExperimentFindings]) -> list[str]:
    """The findings in brief, in Markdown: the best group of each experiment, and what decides
    whether the weights reach the truth where the data knows it."""
    lines = ["**Best configuration of each experiment** (mean ± standard deviation over its seeds):", ""]
    lines += [best_line(f) for f in found]
    truth = truth_lines(found)
    if truth:
        lines += ["", "**What decides whether the weights reach the true weights:**", "", *truth]
    return lines


# --- report.md ----------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(visible(cell).replace("|", "\\|") for cell in row) + " |" for row in rows),
    ]


def experiment_lines(f: ExperimentFindings, images: dict[str, str]) -> list[str]:
    lines = [f"## {f.name}", ""]
    replicate = " and ".join(f"`{k}`" for k in f.replicates)
    lines += [
        f"{f.runs} runs in {len(f.groups)} groups (runs that differ only in {replicate}), "
        f"ranked by `{f.metric}` ({_better(f)}).",
        "",
    ]
    if f.apart:
        lines += [*f.apart, ""]
    rows = []
    for rank, group in enumerate(f.groups, 1):
        s = group.metrics.get(f.metric)
        if s is None:  # unranked, after the ranked groups: a pruned trial says where it was stopped
            pruning = pruned_at(group.runs)
            said = pruning.text(num) if pruning is not None else "no complete run"
            rows.append(["", f"`{group.label}`", runs_text(group), said, "-", "-"])
        else:
            rows.append(
                [
                    str(rank),
                    f"`{group.label}`",
                    runs_text(group),
                    spread(s),
                    f"{num(s.low)}–{num(s.high)}",
                    interval(s),
                ]
            )
    lines += _table(["rank", "group", "runs", f"{f.metric}, mean ± std", "min–max", "95% interval"], rows)
    lines += ["", separation_text(f), ""]
    if f.search is not None:
        lines += search_lines(f, images)
    effects = f.effects.get(f.metric, [])
    if effects:
        lines += [f"### Effect of each setting on {f.metric}", ""]
        rows = [
            [f"`{e.key}`", value, num(mean), str(groups), num(e.size)]
            for e in effects
            for value, _, mean, groups in e.values
        ]
        lines += _table(
            ["setting", "value", f"mean {f.metric}", "groups averaged", "effect (max − min)"], rows
        )
        lines.append("")
    for key, title in (("settings", "against each setting"), ("curves", "curves"), ("weights", "weights")):
        if key in images:
            lines += [f"![{f.name}: {title}]({images[key]})", ""]
    lines += ["### Every metric, per group", ""]
    rows = []
    for group in f.groups:
        for tag in f.metrics:
            s = group.metrics.get(tag)
            if s is not None:
                shown = f"{s.n} of {group.complete}" if s.n != group.complete else str(s.n)
                rows.append(
                    [f"`{group.label}`", tag, shown, spread(s), f"{num(s.low)}–{num(s.high)}", interval(s)]
                )
    lines += _table(["group", "metric", "runs", "mean ± std", "min–max", "95% interval"], rows)
    return lines + [""]


def search_lines(f: ExperimentFindings, images: dict[str, str]) -> list[str]:
    """A search's own section: its trials by state, the best of them over their seeds, what each
    searched setting did, Optuna's importances and the steps pruning saved."""
    s = f.search
    states = ", ".join(f"{n} {state}" for state, n in sorted(s.states.items(), key=lambda kv: -kv[1]))
    lines = [
        "### The search",
        "",
        f"A {s.method} search of {s.trials} trials ({states}), each run once per replicate; a trial's "
        f"value is its mean over them. A trial with a pruned run is not ranked.",
        "",
    ]
    ranked = f.ranked()[:5]
    if ranked:
        rows = [
            [str(i), f"`{g.label}`", runs_text(g), spread(g.metrics[f.metric])]
            for i, g in enumerate(ranked, 1)
        ]
        lines += _table(["rank", "trial", "runs", f"{f.metric}, mean ± std over its seeds"], rows) + [""]
    if "search" in images:
        lines += [f"![{f.name}: each searched setting]({images['search']})", ""]
    complete = s.states.get(Status.COMPLETE, 0)
    if s.importances:
        lines += [
            f"Parameter importances (Optuna's fANOVA over the {complete} complete trials: the share of "
            "the metric's variance each setting explains):",
            "",
        ]
        lines += _table(["setting", "importance"], [[f"`{k}`", num(v)] for k, v in s.importances.items()]) + [
            ""
        ]
    elif complete:
        lines += [f"Too few complete trials ({complete}) for Optuna's parameter importances.", ""]
    if s.pruner != "none" and s.steps_planned:
        lines += [
            f"Pruning ({s.pruner}) stopped {s.states.get(Status.PRUNED, 0)} trials: the trials that ended "
            f"trained {s.steps_trained:,} steps of the {s.steps_planned:,} they would have taken, each "
            f"trained to its end ({s.steps_trained / s.steps_planned:.0%}).",
            "",
        ]
    return lines


def report_lines(
    logdir: Path, found: list[ExperimentFindings], images: dict[str, dict[str, str]]
) -> list[str]:
    runs = sum(f.runs for f in found)
    lines = [
        f"# Findings of {logdir}",
        "",
        f"{runs} runs in {len(found)} experiments. A group is the runs of one configuration over its "
        "replicate settings (seeds); ± is the sample standard deviation over a group's complete runs "
        "(none for a single run), the 95% interval Student's t-interval of the mean (three runs or "
        "more). Failed and diverged runs are counted in the runs column, never averaged in. Bands in "
        "the curves run from the lowest to the highest seed.",
        "",
        *summary_lines(found),
        "",
    ]
    for f in found:
        lines += experiment_lines(f, images.get(f.name, {}))
    return lines


# --- the command --------------------------------------------------------------------------------


def chosen(logdir: Path, experiments: list[str]) -> list[ExperimentFindings]:
    """The findings of the experiments asked for (all by default); an unknown name is an error."""
    records = index.records(logdir)
    if not records:
        raise UserError(f"{logdir}: no finished runs to report on")
    known = sorted({r.get("experiment") or r["folder"].partition("/")[0] for r in records})
    unknown = [name for name in experiments if name not in known]
    if unknown:
        raise UserError(
            [
                f"{name}: no experiment of that name in {logdir}{suggest(name, known)}; it holds {', '.join(known)}"
                for name in unknown
            ]
        )
    return findings(records, experiments)


def write(logdir: Path, out: Path, experiments: list[str] = ()) -> list[str]:
    """Write report.md, summary.md and the pictures into `out`; returns the summary."""
    found = chosen(logdir, list(experiments))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create the report folder: {exc.strerror or exc}")
    for f in found:
        if f.search is not None:
            from trainer.reporting.search import importances

            f.search.importances = importances(logdir, f.name)
    images = {f.name: draw(logdir, f, out) for f in found}
    # A line a name from the folder made two, or an escape sequence in it, is shown escaped.
    lines = [visible(line) for line in report_lines(logdir, found, images)]
    summary = [visible(line) for line in summary_lines(found)]
    # Put in place whole: a symlink already there is replaced, never written through.
    rundir.write_atomic(out / REPORT, "\n".join(lines) + "\n", durable=False)
    rundir.write_atomic(out / SUMMARY, "\n".join(summary) + "\n", durable=False)
    rundir.write_atomic(
        out / PAGE,
        page(lines, out, {name for drawn in images.values() for name in drawn.values()}),
        durable=False,
    )
    return summary


START, END = "<!-- report:start -->", "<!-- report:end -->"


def with_findings(text: str, summary: list[str], where: str) -> str:
    """A Markdown text with the summary put between its report markers."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise UserError(f"{where}: needs one {START} line and, after it, one {END} line to hold the findings")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return head + START + "\n" + "\n".join(summary) + "\n" + END + tail


def terminal_lines(summary: list[str], out: Path) -> list[str]:
    """The summary without Markdown's emphasis, and where the report is."""
    plain = [line.replace("**", "").replace("`", "") for line in summary]
    return [*plain, "", f"Report: {out / REPORT} (pictures beside it)"]
