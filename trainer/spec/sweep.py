"""Planning a sweep: every spec loaded, expanded into its runs (trainer.spec.grid) or its search's
trials (trainer.spec.searches), and every run validated (trainer.spec.validate) before any starts;
all problems of all specs are one SpecError."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from trainer.core.errors import SpecError
from trainer.spec.apart import Apart
from trainer.spec.files import Spec, load_spec
from trainer.spec.grid import case_note, expand, locate
from trainer.spec.overrides import parse_overrides, spec_level
from trainer.spec.plan import RunPlan
from trainer.spec.probe import probe_apart
from trainer.spec.schema import Config, check_key, experiment_name
from trainer.spec.searches import Search, searched
from trainer.spec.sections import MAPPING

# Planning is about 0.3 ms a run: a dry run of more than this would say nothing for over 15 s.
MAX_LISTED_RUNS = 50_000


class Planned(list):
    """The planned runs, and the searches among their specs by experiment (trainer.spec.searches.Search)."""

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
            f"{locate(specs[run.spec_path], key)}: {key}: {message}"
            + ("" if key.startswith(("search.", "report.")) else f" (run {run.folder})")  # the spec's own
            for run, key, message in found
        )
    if not problems:
        problems.extend(device_problems(runs, specs))
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
        f"{case_note(spec.name, other.name)}; give each spec its own name"
    )


def device_problems(runs: list[RunPlan], specs: dict[str, Spec]) -> list[str]:
    wanting = [r for r in runs if r.config.train.device == "cuda"]
    if not wanting:
        return []
    import torch  # only when a spec asks for the GPU

    if torch.cuda.is_available():
        return []
    run = wanting[0]
    return [
        f"{locate(specs[run.spec_path], 'train.device')}: train.device: 'cuda' was asked for (run "
        f"{run.experiment}/{run.name}) but torch {torch.__version__} sees no GPU; use 'auto' or 'cpu', "
        f"or install a CUDA build of torch"
    ]


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
