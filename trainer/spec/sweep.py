"""Expanding specs into planned runs: the grid, run names, and validation of every run before any starts."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainer.core.errors import SpecError
from trainer.core.strict import is_import_path, reusing
from trainer.kinds import data, losses, metrics, models
from trainer.kinds import registry as kinds
from trainer.kinds.models import LinearModel
from trainer.spec.apart import Apart
from trainer.spec.files import MAPPING, Spec, combine, load_spec, parent_key, parse_overrides, spec_level
from trainer.spec.names import run_name
from trainer.spec.plan import DISTANCE, RunPlan, Trial
from trainer.spec.probe import inspect_apart, probe_apart, width_problem
from trainer.spec.schema import Config, Invalid, build, check_key, experiment_name
from trainer.spec.search import Distribution, Space, draw, eval_tag, study_configuration

MAX_RUNS = 10_000
DEFAULT_STEPS = 1000


def total_steps(config: Config, rows: int, batch_size: int) -> int:
    train = config.train
    if train.steps is not None:
        return train.steps
    if train.epochs is not None:
        return train.epochs * math.ceil(rows / batch_size)
    return DEFAULT_STEPS


# --- naming -----------------------------------------------------------------------------------


class Planned(list):
    """The planned runs, and the searches among their specs by experiment (trainer.spec.sweep.Search)."""

    searches: dict[str, Search]

    def __init__(self, runs: list[RunPlan], searches: dict[str, Search] | None = None):
        super().__init__(runs)
        self.searches = searches or {}


def plan(paths: list[Any], overrides: list[str] = (), allow_large: bool = False) -> Planned:
    """Load, expand and validate every spec (a file's path, or a spec as a mapping); all problems of
    all specs raise one SpecError. The runs of a TPE search are drawn as it goes: its Search (in
    `.searches`) makes them."""
    parsed, problems = parse_overrides(overrides)
    loaded: list[Spec] = []
    for path in paths:
        try:
            if isinstance(path, Mapping):
                loaded.append(load_spec(MAPPING, parsed, data=path))
            else:
                loaded.append(load_spec(path, parsed))
        except SpecError as exc:
            problems.extend(exc.problems)
    # A --set key under a section with kinds is known once the specs say which sections are user code.
    opened = set().union(*(spec.open_sections for spec in loaded))
    bad = [
        (o, problem)
        for o in parsed
        if not spec_level(o.key) and (problem := check_key(Config, o.key, opened)) is not None
    ]
    if bad:
        raise SpecError([f"--set {o.text}: {problem}" for o, problem in bad])
    with Apart() as apart:  # the user code that planning calls runs there
        return _planned(loaded, problems, allow_large, apart)


def _planned(loaded: list[Spec], problems: list[str], allow_large: bool, apart: Apart) -> Planned:
    runs: list[RunPlan] = []
    searches: dict[str, Search] = {}
    specs: dict[str, Spec] = {}
    names: dict[str, Spec] = {}
    for spec in loaded:
        specs[spec.path] = spec
        problems.extend(spec.problems)
        if isinstance(spec.name, str) and experiment_name(spec.name) is None:
            # Folder names that differ only in case are one folder on macOS and Windows.
            other = names.setdefault(spec.name.lower(), spec)
            if other is not spec:
                problems.append(_same_name(spec, other))
                continue
        try:
            if spec.search is not None or spec.space or spec.search_given:
                if spec.problems:
                    continue  # a search's own settings are wrong: what follows from them would be noise
                search = searched(spec, apart, allow_large)
                searches[search.experiment] = search
                runs.extend(search.runs)
            else:
                runs.extend(expand(spec, allow_large, apart))
        except SpecError as exc:
            problems.extend(exc.problems)
    probes = [r for s in searches.values() if s.draws_later for r in s.probes]
    if not problems and any(run.code for run in runs + probes):
        runs, found = probe_apart(runs, apart)
        found += probe_apart(probes, apart)[1] if probes else []
        problems.extend(
            f"{_locate(specs[run.spec_path], key)}: {key}: {message}"
            + ("" if key.startswith(("search.", "report.")) else f" (run {run.folder})")  # the spec's own
            for run, key, message in found
        )
    if not problems:
        problems.extend(_device_problems(runs, specs))
    if problems:
        raise SpecError(list(dict.fromkeys(problems)))
    return Planned(runs, searches)


def _same_name(spec: Spec, other: Spec) -> str:
    where = spec.where("name")
    if where == other.where("name"):
        return (
            f"{where}: name: would give {other.path} and {spec.path} the same experiment name "
            f"{spec.name!r}; give one spec at a time a new name, or change the name in each file"
        )
    return (
        f"{where}: name: the experiment name {spec.name!r} is already used by {other.where('name')}"
        f"{_case_note(spec.name, other.name)}; give each spec its own name"
    )


def _case_note(name: str, other: str) -> str:
    return (
        ""
        if name == other
        else f" as {other!r} (names that differ only in case share a folder on macOS and Windows)"
    )


def expand(spec: Spec, allow_large: bool = False, apart: Apart | None = None) -> list[RunPlan]:
    """Every run of one spec, validated; problems raise SpecError."""
    count = math.prod(len(v) for v in spec.sweep.values())
    if count > MAX_RUNS and not allow_large:
        raise SpecError(
            f"{spec.where('sweep')}: sweep: {count:,} runs is more than {MAX_RUNS:,}, which is "
            f"likely a mistake; pass --allow-large to run them all"
        )
    keys = list(spec.sweep) + spec.overridden
    found: dict[str, list[str]] = {}
    collisions: list[str] = []
    runs: list[RunPlan] = []
    by_name: dict[str, RunPlan] = {}
    with reusing():  # the runs share most sections: each distinct one is built once
        for picks in itertools.product(*(range(len(v)) for v in spec.sweep.values())):
            indices = dict(zip(spec.sweep, picks))
            values = {k: spec.sweep[k][i] for k, i in indices.items()}
            try:
                raw = combine(spec, values)
                named = [(k, values[k]) if k in values else (k, _lookup(raw, k)) for k in keys]
                name = run_name(named, spec.sweep)
                run = _validate(spec, raw, name, tuple(named), apart)
            except Invalid as invalid:
                for key, message in invalid.problems:
                    found.setdefault(f"{_locate(spec, key, indices)}: {key}: {message}", []).append(
                        run_name([(k, values[k]) for k in spec.sweep], spec.sweep)
                    )
                continue
            other = by_name.setdefault(name.lower(), run)
            if other is not run:
                collisions.append(
                    f"{spec.where('sweep')}: sweep: runs {format_values(other.swept)} and "
                    f"{format_values(run.swept)} would both be written to the folder {name!r}"
                    f"{_case_note(name, other.name)}; make the swept values distinct"
                )
                continue
            runs.append(run)
    if found or collisions:
        raise SpecError(
            [message + _which_runs(names, count) for message, names in found.items()] + collisions
        )
    return runs


def format_values(values: tuple[tuple[str, Any], ...]) -> str:
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in values) + "}"


def _which_runs(names: list[str], total: int) -> str:
    if total <= 1 or len(names) == total:
        return ""
    shown = ", ".join(names[:2])
    more = f" and {len(names) - 2} more" if len(names) > 2 else ""
    return f" (in run{'s' if len(names) > 1 else ''} {shown}{more})"


def _lookup(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _locate(spec: Spec, key: str, indices: dict[str, int] | None = None) -> str:
    """Where the value of a key came from: its --set, its swept value's line, or its line in the file.

    The deepest --set or swept key at or above the key gave its value (see spec.combine).
    """
    origins = spec.origins
    probe = key
    while probe:
        if probe in origins:
            return origins[probe]
        if probe in spec.space:
            return spec.where(f"sweep.{probe}")
        if probe in spec.sweep:
            if indices is None or probe not in indices:
                return spec.where(f"sweep.{probe}")
            return spec.where(f"sweep.{probe}[{indices[probe]}]{key[len(probe) :]}")
        probe = parent_key(probe)
    return spec.where(key)


def _validate(
    spec: Spec, raw: dict[str, Any], name: str, swept: tuple[tuple[str, Any], ...], apart: Apart | None
) -> RunPlan:
    with kinds.searching(spec.folder):
        config: Config = build(Config, raw)
    if apart is not None and kinds.kind_of(config.data).is_user_code:
        info = inspect_apart(config.data, spec.folder, config.train.timeout, spec.path, apart)
    else:
        info = data.inspect(config.data, spec.folder)
    problems: list[tuple[str, str]] = []
    batch = config.train.batch_size
    batch_size = info.rows if batch == "full" else batch
    if batch_size > info.rows:
        held = f" after {info.validation_rows} held out for validation" if info.validation_rows else ""
        problems.append(
            (
                "train.batch_size",
                f"{batch} is larger than the training data ({info.rows} rows{held}); "
                f"use at most {info.rows}, or 'full'",
            )
        )
    problems += losses.check_targets(config.loss, info.classes)
    model = config.model
    outputs = _outputs(config, info)
    if models.is_builtin(model) and len(info.input_shape) != 1:
        problems.append(
            (
                "model.kind",
                f"{model.kind!r} takes rows of features, but one input of this data has the "
                f"shape {list(info.input_shape)}; use a model of your own (module:Class)",
            )
        )
    if isinstance(model, LinearModel) and isinstance(model.init, tuple) and len(model.init) != info.features:
        problems.append(
            (
                "model.init",
                f"has {len(model.init)} values but the data has {info.features} features; "
                f"give one initial weight per feature",
            )
        )
    if outputs is None:
        problems.append(
            (
                "data.classes",
                "the number of classes cannot be told from this data (its targets are not one "
                "integer label per row); give data.classes",
            )
        )
    elif models.is_builtin(model) and losses.task_of(config.loss) == losses.CLASSES:
        problem = width_problem(model, outputs, info.labels)
        if problem is not None:
            problems.append(problem)
    code = [
        (f"{section}.kind", getattr(config, section).kind)
        for section in kinds.FAMILIES
        if is_import_path(getattr(config, section).kind)
    ]
    for i, metric_name in enumerate(config.eval.metrics):
        key = f"eval.metrics[{i}]"
        try:
            metric = metrics.resolve(metric_name, spec.folder, key)
        except Invalid as invalid:
            problems += invalid.problems
            continue
        if metric.classes_only and info.classes is None:
            problems.append((key, f"{metric_name} needs class labels, but the targets are real numbers"))
        if is_import_path(metric_name):
            code.append((key, metric_name))
    if config.data.collate is not None:
        if not info.dataset:
            problems.append(("data.collate", "makes batches of a Dataset's items; this data is tensors"))
        elif not callable(data.collate_of(config.data, spec.folder)):
            problems.append(("data.collate", f"{config.data.collate} is not a function of a list of items"))
        code.append(("data.collate", config.data.collate))
    problems += _watch_problems(config, info)
    if config.log.hook is not None:
        hook = kinds.import_attribute(config.log.hook, str(spec.folder.resolve()), "log.hook")
        if not callable(hook):
            problems.append(
                (
                    "log.hook",
                    f"{config.log.hook} is {type(hook).__name__}, not a function "
                    f"hook(writer, step, model, **context)",
                )
            )
        code.append(("log.hook", config.log.hook))
    if problems:
        raise Invalid(problems)
    shape = models.Shape(info.features, outputs or 1)
    has_truth = info.true_weights is not None and isinstance(model, LinearModel) and outputs == 1
    return RunPlan(
        experiment=config.name,
        name=name,
        config=config,
        swept=swept,
        spec_path=spec.path,
        data_folder=str(spec.folder),
        rows=info.rows,
        features=info.features,
        steps=total_steps(config, info.rows, batch_size),
        batch_size=batch_size,
        has_truth=has_truth,
        validation_rows=info.validation_rows,
        input_shape=info.input_shape,
        outputs=outputs or 1,
        classes=info.classes,
        labels=info.labels,
        parameters=models.parameter_count(model, shape),
        regression=losses.task_of(config.loss) == losses.REGRESSION,
        code=tuple(code),
        report=spec.report,
        true_weights=tuple(info.true_weights) if has_truth else None,
    )


def _watch_problems(config: Config, info: data.DataInfo) -> list[tuple[str, str]]:
    """Whether train.early_stopping.metric is a value this run's evaluations have."""
    stopping = config.train.early_stopping
    if stopping is None or stopping.metric is None:
        return []
    split, _, name = stopping.metric.partition("/")
    key = "train.early_stopping.metric"
    if split == "val" and not info.validation_rows:
        return [
            (
                key,
                f"{stopping.metric} is measured on held-out rows, and none are; set data.validation, "
                f"or watch train/{name}",
            )
        ]
    known = ["loss", *(m for m in config.eval.metrics if m in metrics.BUILTIN)]
    if name not in known and all(m in metrics.BUILTIN for m in config.eval.metrics):
        return [
            (
                key,
                f"{stopping.metric} is no value of this run's evaluations; they have "
                + ", ".join(f"{split}/{n}" for n in known),
            )
        ]
    return []


def _outputs(config: Config, info: data.DataInfo) -> int | None:
    """The outputs of a built-in model: as given, one per class for a classification loss, else
    one per target value."""
    given = getattr(config.model, "outputs", "auto")
    if given != "auto":
        return given
    if losses.task_of(config.loss) == losses.CLASSES or (
        info.classes is not None and losses.task_of(config.loss) is None
    ):
        return info.classes
    return models.element_count(info.target_shape)


def _device_problems(runs: list[RunPlan], specs: dict[str, Spec]) -> list[str]:
    wanting = [r for r in runs if r.config.train.device == "cuda"]
    if not wanting:
        return []
    import torch  # only when a spec asks for the GPU

    if torch.cuda.is_available():
        return []
    run = wanting[0]
    return [
        f"{_locate(specs[run.spec_path], 'train.device')}: train.device: 'cuda' was asked for (run "
        f"{run.experiment}/{run.name}) but torch {torch.__version__} sees no GPU; use 'auto' or 'cpu', "
        f"or install a CUDA build of torch"
    ]


# Planning is about 0.3 ms a run: a dry run of more than this would say nothing for over 15 s.
MAX_LISTED_RUNS = 50_000


# --- sweeps too large to list -----------------------------------------------------------------


def refuse_long_listing(paths: list[str], overrides: list[str]) -> None:
    """Refuse, from the specs' sweep lengths alone, a dry run that would list more than
    MAX_LISTED_RUNS runs: planning them would take minutes and gigabytes before the first line."""
    parsed, problems = parse_overrides(overrides)
    if problems:
        return  # planning reports them
    counts = []
    for path in paths:
        try:
            spec = load_spec(path, parsed)
        except SpecError:
            return
        if spec.sweep:
            counts.append((spec, math.prod(len(values) for values in spec.sweep.values())))
    total = sum(count for _, count in counts)
    if total <= MAX_LISTED_RUNS:
        return
    raise SpecError(
        [
            f"{spec.where('sweep')}: sweep: {count:,} runs ("
            + " x ".join(f"{key} {len(values):,}" for key, values in spec.sweep.items())
            + ")"
            for spec, count in counts
            if count > 1
        ]
        + [
            f"--dry-run lists at most {MAX_LISTED_RUNS:,} runs, one line each, and these specs plan {total:,}; "
            f"narrow the sweep or split it over several specs (nothing was planned or written)"
        ]
    )


# --- searches ---------------------------------------------------------------------------------


@dataclass
class Search:
    """One spec's search: its space, the metric it optimizes, and the runs of its trials (drawn up
    front for grid, random and sobol; for tpe made by trial_runs as the study draws each trial)."""

    experiment: str
    space: Space
    spec: Spec
    metric: str  # the ranking metric the study optimizes: final/val/loss
    direction: str  # minimize or maximize
    runs: list[RunPlan] = field(default_factory=list)
    probes: list[RunPlan] = field(default_factory=list)  # tpe: runs at the space's corners, checked now
    width: int = 3  # digits of a trial's number in its runs' names

    @property
    def settings(self) -> Any:
        return self.space.settings

    @property
    def draws_later(self) -> bool:
        return self.settings.method == "tpe"

    @property
    def pruning(self) -> bool:
        return self.settings.prune.kind != "none"

    @property
    def replicas(self) -> int:
        return math.prod(len(v) for v in self.space.replicates.values())

    @property
    def total_runs(self) -> int:
        return len(self.runs) if not self.draws_later else self.space.trials * self.replicas

    @property
    def identity(self) -> dict[str, Any]:
        """What drew its study and what its trials train (identity), as its runs' trials carry it."""
        first = next(iter([*self.runs, *self.probes]))
        return json.loads(first.trial.search)

    def trial_runs(self, number: int, params: dict[str, Any]) -> list[RunPlan]:
        """The runs of one trial (one per replicate), validated; problems raise SpecError."""
        return _trial_runs(self, number, params, None)


def searched(spec: Spec, apart: Apart | None, allow_large: bool = False) -> Search:
    """A spec with a search section or distributions: its search and the runs planned now."""
    from trainer.spec.search import SearchSettings

    settings = spec.search or SearchSettings()
    method = settings.method
    where = spec.where("search")
    problems = []
    if method == "grid":
        problems += [
            f"{spec.where(f'sweep.{key}')}: sweep.{key}: a distribution is drawn from by a search, but "
            f"search.method is grid{'' if spec.search else ' (no search: section)'}; set search.method "
            f"to random, sobol or tpe (with search.trials), or give a list of values"
            for key in spec.space
        ]
    elif settings.trials is None:
        problems.append(f"{where}: search.trials: missing; give how many configurations {method} draws")
    keys = settings.replicates if settings.replicates is not None else spec.report.replicates
    if settings.replicates is not None:
        for i, key in enumerate(settings.replicates):
            problem = check_key(Config, key, spec.open_sections)
            if problem is not None:
                problems.append(f"{spec.where('search.replicates')}: search.replicates[{i}]: {problem}")
    if method == "grid" and settings.trials is not None:
        problems.append(
            f"{spec.where('search.trials')}: search.trials: a grid runs every combination of its lists; "
            f"leave search.trials out, or draw them with search.method random, sobol or tpe"
        )
    replicates = {k: spec.sweep[k] for k in keys if k in spec.sweep}
    if settings.replicates is not None:
        problems += [
            f"{spec.where('search.replicates')}: search.replicates[{i}]: {key} is not swept; list its "
            f"values under sweep: to repeat every trial over them"
            for i, key in enumerate(settings.replicates)
            if key not in spec.sweep
            and key not in spec.space
            and check_key(Config, key, spec.open_sections) is None
        ]
    # A swept key pinned would draw (or number, or average) the trials otherwise than the study did.
    problems += [
        f"{o.origin}: {o.key} is swept by the spec's {method} search; a search with it fixed is "
        f"another search: write the value into the spec, out of sweep:, under a new name"
        for o in spec.overrides
        if o.key in spec.order
    ]
    problems += [
        f"{spec.where(f'sweep.{k}')}: sweep.{k}: is a replicate (search.replicates), whose values every "
        f"trial runs with; give it a list, not a distribution"
        for k in keys
        if k in spec.space
    ]
    if problems:
        raise SpecError(problems)
    if method == "grid":
        dimensions = {
            k: Distribution("choice", choices=tuple(v)) for k, v in spec.sweep.items() if k not in replicates
        }
    else:
        dimensions = {
            k: spec.space[k] if k in spec.space else Distribution("choice", choices=tuple(spec.sweep[k]))
            for k in spec.order
            if k not in replicates
        }
    if not dimensions and method != "grid":
        raise SpecError(
            f"{spec.where('sweep')}: sweep: {method} has nothing to draw; give a distribution such as "
            f"optimizer.lr: {{loguniform: [0.001, 0.1]}}, or a list that is no replicate"
        )
    if method == "grid":
        settings = dataclasses.replace(
            settings, trials=math.prod(len(d.choices) for d in dimensions.values())
        )
    space = Space(settings, dimensions, replicates)
    count = space.trials * math.prod(len(v) for v in replicates.values())
    if count > MAX_RUNS and not allow_large:
        raise SpecError(
            f"{where}: search.trials: {count:,} runs ({space.trials:,} trials x "
            f"{count // space.trials} replicates) is more than {MAX_RUNS:,}, which is likely a mistake; "
            f"pass --allow-large to run them all"
        )
    search = Search(spec.name, space, spec, "", "minimize", width=max(3, len(str(space.trials - 1))))
    if method == "grid":
        search.runs = _grid_trials(search, expand(spec, allow_large, apart))
    elif method == "tpe":
        search.probes = [run for corner in _corners(space) for run in _trial_runs(search, -1, corner, apart)]
    else:
        # Every value a range holds must make a valid run, whatever the draws: its ends are tried.
        for corner in _corners(space):
            _trial_runs(search, -1, corner, apart)
        draws = draw(space)
        found: list[str] = []
        for number, params in enumerate(draws):
            try:
                search.runs += _trial_runs(search, number, params, apart)
            except SpecError as exc:
                found += exc.problems
        if found:
            raise SpecError(list(dict.fromkeys(found)))
    return search


def _metric_of(search: Search, run: RunPlan) -> tuple[str, str]:
    """The metric a search optimizes and its direction, as the run's evaluations have it."""
    from trainer.spec.search import direction

    spec = search.spec
    metric = search.settings.metric or spec.report.metric
    if metric is None:
        metric = "final/val/loss" if run.validation_rows else "final/train/loss"
    higher = spec.report.higher_is_better
    if higher is None:
        higher = metric.rpartition("/")[2] in ("accuracy", "macro_f1")
    return metric, direction(search.settings, higher)


def _trial(search: Search, run: RunPlan, number: int, params: dict[str, Any]) -> RunPlan:
    metric, way = _metric_of(search, run)
    search.metric, search.direction = metric, way
    tag = DISTANCE if metric == "final/weight_distance" else eval_tag(metric)
    key = "search.metric" if search.settings.metric else "report.metric"
    name = metric.rpartition("/")[2]
    natural = {"loss": "minimize", "mae": "minimize", "rmse": "minimize", "weight_distance": "minimize"}
    natural["accuracy"] = "maximize"
    if search.settings.direction is not None and natural.get(name, way) != way:
        raise Invalid(
            [
                (
                    "search.direction",
                    f"{way}, but {metric} is better {'higher' if natural[name] == 'maximize' else 'lower'}",
                )
            ]
        )
    if tag == DISTANCE and not run.has_truth:
        raise Invalid(
            [
                (
                    key,
                    f"{metric} is known only for a linear model of data that knows its true weights (seed_toy)",
                )
            ]
        )
    split, _, name = tag.partition("/")
    if split == "val" and not run.validation_rows:
        raise Invalid([(key, f"{metric} is measured on held-out rows, and none are; set data.validation")])
    known = ["loss", *(m for m in run.config.eval.metrics if m in metrics.BUILTIN)]
    if tag != DISTANCE and name not in known and all(m in metrics.BUILTIN for m in run.config.eval.metrics):
        raise Invalid(
            [
                (
                    key,
                    f"{metric} is no value of this run's evaluations; they have "
                    + ", ".join(
                        f"{when}/{s}/{n}"
                        for when in ("final", "best")
                        for s in (["train", "val"] if run.validation_rows else ["train"])
                        for n in known
                    ),
                )
            ]
        )
    space = tuple((k, (d.low, d.high, d.log)) for k, d in search.space.dimensions.items() if d.numeric)
    reports = tag if search.pruning else None
    settings = search.settings
    verdicts = verdict_steps(settings.prune, run.steps, run.config.eval.every) if search.pruning else ()
    if search.pruning and not verdicts:
        raise Invalid(
            [
                (
                    "search.prune.min_steps",
                    f"{settings.prune.min_steps} is at or past the runs' last evaluation before their end "
                    f"({run.steps} steps, evaluated every {run.config.eval.every}): no run would be pruned",
                )
            ]
        )
    trial = Trial(
        number,
        tuple(params.items()),
        space,
        reports,
        settings.method,
        settings.prune.kind,
        metric,
        way,
        tuple(search.space.replicates),
        verdicts,
        json.dumps(identity(search, run), sort_keys=True),
    )
    return dataclasses.replace(run, trial=trial)


def identity(search: Search, run: RunPlan) -> dict[str, Any]:
    """What decides a search's trials and verdicts, and what they train (`run` is any of its runs):
    a study drawn otherwise, or of trials configured otherwise, is another study. Its number of
    trials is not part of it: more trials go on drawing where the study stopped."""
    settings = search.settings
    prune = settings.prune
    pruner = {"kind": "none"}
    if prune.kind == "median":
        pruner = {"kind": "median", "min_steps": prune.min_steps, "startup_trials": prune.startup_trials}
    elif prune.kind in ("asha", "hyperband"):
        pruner = {
            "kind": prune.kind,
            "min_steps": prune.min_steps,
            "reduction_factor": prune.reduction_factor,
        }
    return {
        "method": settings.method,
        "seed": settings.seed,
        "metric": search.metric,
        "direction": search.direction,
        "prune": pruner,
        "space": {key: d.text() for key, d in search.space.dimensions.items()},
        "replicates": list(search.space.replicates),
        "config": study_configuration(run.config_data, search.space.dimensions, search.space.replicates),
    }


def verdict_steps(prune: Any, steps: int, every: int) -> tuple[int, ...]:
    """The evaluation steps at which a pruner may stop a run: for median every one from min_steps
    on; for asha the first at or past each rung (min_steps, times reduction_factor, times it again,
    ... below the run's end)."""
    evaluations = range(0, steps, every)
    if prune.kind in ("median", "hyperband"):  # hyperband's brackets have rungs of their own
        return tuple(s for s in evaluations if s >= prune.min_steps)
    rungs, rung = [], prune.min_steps
    while rung < steps:
        rungs.append(rung)
        rung *= prune.reduction_factor
    return tuple(
        sorted({s for r in rungs if (s := next((e for e in evaluations if e >= r), None)) is not None})
    )


def _grid_trials(search: Search, runs: list[RunPlan]) -> list[RunPlan]:
    """A grid's runs as trials, numbered by their configuration (the replicates apart)."""
    numbers: dict[str, int] = {}
    out = []
    for run in runs:
        params = {k: v for k, v in run.swept if k in search.space.dimensions}
        number = numbers.setdefault(json.dumps(params, sort_keys=True, default=str), len(numbers))
        try:
            out.append(_trial(search, run, number, params))
        except Invalid as invalid:
            raise SpecError([f"{_locate(search.spec, k)}: {k}: {m}" for k, m in invalid.problems])
    return out


def _corners(space: Space) -> list[dict[str, Any]]:
    """Values at each end of every numeric distribution, with each choice: where a drawn trial
    could fail to validate, it fails here, before any run starts."""
    choice_keys = [k for k, d in space.dimensions.items() if not d.numeric]
    combos = list(
        itertools.islice(itertools.product(*(space.dimensions[k].choices for k in choice_keys)), 64)
    )
    corners = []
    for end in ("low", "high"):
        for combo in combos:
            values = dict(zip(choice_keys, combo))
            for k, d in space.dimensions.items():
                if d.numeric:
                    values[k] = getattr(d, end)
            corners.append({k: values[k] for k in space.dimensions})
    return corners


def _numeric(search: Search) -> set[str]:
    return {k for k, d in search.space.dimensions.items() if d.numeric}


def _short(value: Any) -> Any:
    """A drawn number as a run's name shows it: three significant digits."""
    if isinstance(value, float):
        return float(f"{value:.3g}")
    return value


def _trial_runs(search: Search, number: int, params: dict[str, Any], apart: Apart | None) -> list[RunPlan]:
    spec = search.spec
    replicates = search.space.replicates
    runs = []
    problems: dict[str, None] = {}
    for picks in itertools.product(*replicates.values()):
        values = {**params, **dict(zip(replicates, picks))}
        indices = {k: spec.sweep[k].index(v) for k, v in zip(replicates, picks)}
        try:
            raw = combine(spec, values)
            named = [(k, values[k]) for k in spec.order if k in values] + [
                (k, _lookup(raw, k)) for k in spec.overridden
            ]
            shown = [(k, _short(v)) if k in search.space.dimensions else (k, v) for k, v in named]
            prefix = "probe" if number < 0 else f"trial={number:0{search.width}d}"
            name = f"{prefix},{run_name(shown, spec.sweep)}".removesuffix(",base")
            run = _validate(spec, raw, name, tuple(named), apart)
            runs.append(_trial(search, run, number, params))
        except Invalid as invalid:
            for key, message in invalid.problems:
                where = _locate(spec, key, indices)
                if key.startswith(("search.", "report.")):  # the same for every trial
                    problems[f"{spec.where(key)}: {key}: {message}"] = None
                elif number < 0:
                    ends = ", ".join(
                        f"{k}: {json.dumps(v)}" for k, v in params.items() if k in _numeric(search)
                    )
                    problems[f"{where}: {key}: {message} (at an end of the searched ranges: {ends})"] = None
                else:
                    problems[f"{where}: {key}: {message} (trial {format_values(tuple(params.items()))})"] = (
                        None
                    )
    if problems:
        raise SpecError(list(problems))
    return runs
