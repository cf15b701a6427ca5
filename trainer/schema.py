"""The experiment schema: frozen dataclasses, and the strict converter from YAML data to them."""
from __future__ import annotations

import difflib
import functools
import math
import re
import reprlib
import types
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Literal, Union, get_args, get_origin, get_type_hints

Check = Callable[[Any], "str | None"]


def setting(default: Any = MISSING, *checks: Check, doc: str = "") -> Any:
    """A dataclass field with a default, value checks and a one-line description."""
    return field(default=default, metadata={"checks": checks, "doc": doc})


def _bound(test: Callable[[Any], bool], text: str) -> Check:
    # Choices such as batch_size 'full' are checked by their type, not by bounds.
    return lambda v: None if isinstance(v, str) or test(v) else f"must be {text}, got {show(v)}"


def greater_than(bound: float) -> Check:
    return _bound(lambda v: v > bound, f"> {bound}")


def at_least(bound: float) -> Check:
    return _bound(lambda v: v >= bound, f">= {bound}")


def below(bound: float) -> Check:
    return _bound(lambda v: v < bound, f"< {bound}")


def at_most(bound: float) -> Check:
    return _bound(lambda v: v <= bound, f"<= {bound}")


def each(check: Check) -> Check:
    def check_each(values: Any) -> str | None:
        for i, v in enumerate(values or ()):
            problem = check(v)
            if problem:
                return f"item {i}: {problem}"
        return None

    return check_each


def non_empty(values: Any) -> str | None:
    return None if values is None or len(values) > 0 else "must not be empty"


# An experiment name is a folder under the log folder: one plain path component, never '.' or '..'.
EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def experiment_name(name: Any) -> str | None:
    if "tfevents" in name:  # TensorBoard takes such a name for an event file, as the log folder's index is
        return f"{show(name)} is reserved: TensorBoard reads a name holding 'tfevents' as an event file"
    if EXPERIMENT_NAME.match(name):
        return None
    return (f"{show(name)} is not a valid experiment name: use letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit, at most 64 characters")


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SeedToyData:
    """The notebook's ten rows of four binary features; true weights [0, 1, 2, 3]."""

    kind: Literal["seed_toy"] = "seed_toy"


@dataclass(frozen=True, kw_only=True)
class SyntheticData:
    """Rows drawn at random, targets from a linear model plus Gaussian noise."""

    kind: Literal["synthetic"] = "synthetic"
    rows: int = setting(100, at_least(1), doc="number of rows")
    features: int = setting(4, at_least(1), doc="number of input columns")
    weights: tuple[float, ...] | None = setting(
        None, doc="true weights (one per feature); drawn from a standard normal when omitted")
    bias: float = setting(0.0, doc="true intercept added to every target")
    noise: float = setting(0.0, at_least(0), doc="standard deviation of the Gaussian noise on y")
    inputs: Literal["normal", "binary", "uniform"] = setting(
        "normal", doc="distribution of x: standard normal, 0/1 coin flips, or uniform on [0, 1)")
    seed: int = setting(0, _bound(lambda v: -2**63 <= v < 2**64, "from -2**63 to 2**64 - 1, the seeds torch takes"),
                        doc="seed of the data generator (independent of train.seed)")


@dataclass(frozen=True, kw_only=True)
class CsvData:
    """A table of numbers with a header row; one column is the target."""

    kind: Literal["csv"] = "csv"
    path: str = setting(doc="CSV file, relative to the spec file's folder")
    target: str = setting(doc="name of the target column; every other column is a feature")
    true_weights: tuple[float, ...] | None = setting(
        None, doc="known true weights, one per feature, if the data has them")


# --- model ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LinearModel:
    """y = x @ w (+ b): the notebook's Linear(features, 1)."""

    kind: Literal["linear"] = "linear"
    bias: bool = setting(False, doc="learn an intercept")
    init: Literal["default", "zeros"] | tuple[float, ...] = setting(
        "default", doc="'default' (torch's, seeded by train.seed), 'zeros', or one weight per feature")


@dataclass(frozen=True, kw_only=True)
class MlpModel:
    """A small multilayer perceptron with one output."""

    kind: Literal["mlp"] = "mlp"
    hidden: tuple[int, ...] = setting((32, 32), non_empty, each(at_least(1)), doc="hidden layer widths")
    activation: Literal["relu", "tanh", "gelu", "sigmoid"] = setting("relu", doc="activation between layers")
    bias: bool = setting(True, doc="learn biases")
    init: Literal["default", "zeros"] = setting("default", doc="'default' (torch's, seeded) or 'zeros'")


# --- loss -------------------------------------------------------------------------------------

Reduction = Literal["sum", "mean"]
REDUCTION_DOC = "'sum' over the batch (the notebook) or 'mean' (torch's default)"


@dataclass(frozen=True, kw_only=True)
class L1Loss:
    """Absolute error."""

    kind: Literal["l1"] = "l1"
    reduction: Reduction = setting("mean", doc=REDUCTION_DOC)


@dataclass(frozen=True, kw_only=True)
class MseLoss:
    """Squared error."""

    kind: Literal["mse"] = "mse"
    reduction: Reduction = setting("mean", doc=REDUCTION_DOC)


@dataclass(frozen=True, kw_only=True)
class HuberLoss:
    """Squared error below delta, absolute error above."""

    kind: Literal["huber"] = "huber"
    reduction: Reduction = setting("mean", doc=REDUCTION_DOC)
    delta: float = setting(1.0, greater_than(0), doc="where the loss turns from squared to linear")


# --- optimizer and schedule -------------------------------------------------------------------

LR_DOC = "learning rate"
WEIGHT_DECAY_DOC = "L2 penalty coefficient"


@dataclass(frozen=True, kw_only=True)
class SgdOptimizer:
    """torch.optim.SGD."""

    kind: Literal["sgd"] = "sgd"
    lr: float = setting(0.1, greater_than(0), doc=LR_DOC)
    momentum: float = setting(0.0, at_least(0), below(1), doc="momentum factor, in [0, 1)")
    nesterov: bool = setting(False, doc="Nesterov momentum (needs momentum > 0)")
    weight_decay: float = setting(0.0, at_least(0), doc=WEIGHT_DECAY_DOC)

    def problems(self) -> list[tuple[str, str]]:
        if self.nesterov and self.momentum == 0:
            return [("nesterov", "needs momentum > 0 (torch refuses Nesterov without momentum)")]
        return []


@dataclass(frozen=True, kw_only=True)
class AdamOptimizer:
    """torch.optim.Adam."""

    kind: Literal["adam"] = "adam"
    lr: float = setting(0.001, greater_than(0), doc=LR_DOC)
    betas: tuple[float, float] = setting((0.9, 0.999), each(at_least(0)), each(below(1)),
                                         doc="decay rates of the moment estimates, each in [0, 1)")
    eps: float = setting(1e-8, greater_than(0), doc="added to the denominator")
    weight_decay: float = setting(0.0, at_least(0), doc=WEIGHT_DECAY_DOC)
    amsgrad: bool = setting(False, doc="use the AMSGrad variant")


@dataclass(frozen=True, kw_only=True)
class AdamWOptimizer:
    """torch.optim.AdamW (decoupled weight decay)."""

    kind: Literal["adamw"] = "adamw"
    lr: float = setting(0.001, greater_than(0), doc=LR_DOC)
    betas: tuple[float, float] = setting((0.9, 0.999), each(at_least(0)), each(below(1)),
                                         doc="decay rates of the moment estimates, each in [0, 1)")
    eps: float = setting(1e-8, greater_than(0), doc="added to the denominator")
    weight_decay: float = setting(0.01, at_least(0), doc="decoupled weight decay coefficient")
    amsgrad: bool = setting(False, doc="use the AMSGrad variant")


@dataclass(frozen=True, kw_only=True)
class ConstantSchedule:
    """The learning rate stays as given."""

    kind: Literal["constant"] = "constant"


@dataclass(frozen=True, kw_only=True)
class StepSchedule:
    """Multiply the learning rate by gamma every step_size steps."""

    kind: Literal["step"] = "step"
    step_size: int = setting(100, at_least(1), doc="steps between decays")
    gamma: float = setting(0.5, greater_than(0), at_most(1), doc="decay factor, in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class CosineSchedule:
    """Cosine annealing from lr to eta_min over t_max steps."""

    kind: Literal["cosine"] = "cosine"
    t_max: int | None = setting(None, at_least(1), doc="steps of one half-period; the run's length when omitted")
    eta_min: float = setting(0.0, at_least(0), doc="lowest learning rate")


@dataclass(frozen=True, kw_only=True)
class ExponentialSchedule:
    """Multiply the learning rate by gamma every step."""

    kind: Literal["exponential"] = "exponential"
    gamma: float = setting(0.999, greater_than(0), at_most(1), doc="decay factor per step, in (0, 1]")


# --- training, evaluation, logging ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How long, on what batches, from which seed, on which device."""

    steps: int | None = setting(None, at_least(1), doc="optimizer steps (default 1000); or give epochs")
    epochs: int | None = setting(None, at_least(1), doc="passes over the data, instead of steps")
    batch_size: int | Literal["full"] = setting(1, at_least(1), doc="rows per step, or 'full' for all rows")
    sampling: Literal["with_replacement", "shuffle", "sequential"] = setting(
        "with_replacement",
        doc="rows drawn at random with replacement (the notebook), a fresh permutation each epoch, or in order")
    seed: int = setting(0, _bound(lambda v: -2**63 <= v < 2**64, "from -2**63 to 2**64 - 1, the seeds torch takes"),
                        doc="seeds the model's initial weights and the batch sampler")
    device: Literal["auto", "cpu", "cuda"] = setting(
        "auto", doc="'auto' takes the GPU only for models big enough to gain from it")

    def problems(self) -> list[tuple[str, str]]:
        if self.steps is not None and self.epochs is not None:
            return [("epochs", "give either train.steps or train.epochs, not both")]
        return []


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """The full-data loss, measured as a mean per row so runs of any batch size compare."""

    every: int = setting(10, at_least(1), doc="steps between full-data evaluations (and always at the end)")
    tolerance: float = setting(0.05, greater_than(0),
                               doc="converged once the full-data loss stays at or below this to the end")


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    """What reaches TensorBoard and how often."""

    every: int = setting(1, at_least(1), doc="steps between logged minibatch losses, weights and gradients")
    histograms_every: int = setting(10, at_least(0), doc="steps between weight and gradient histograms; 0 for none")
    max_elements: int = setting(16, at_least(0),
                                doc="parameters with more elements get norm curves instead of one curve each")


DataSpec = Union[SeedToyData, SyntheticData, CsvData]
ModelSpec = Union[LinearModel, MlpModel]
LossSpec = Union[L1Loss, MseLoss, HuberLoss]
OptimizerSpec = Union[SgdOptimizer, AdamOptimizer, AdamWOptimizer]
ScheduleSpec = Union[ConstantSchedule, StepSchedule, CosineSchedule, ExponentialSchedule]


@dataclass(frozen=True, kw_only=True)
class Config:
    """One run's complete configuration."""

    name: str = setting(MISSING, experiment_name, doc="experiment name: the folder under the log folder")
    description: str = setting("", doc="free text, shown with the run")
    data: DataSpec = setting(SeedToyData(), doc="the table to learn")
    model: ModelSpec = setting(LinearModel(), doc="what is trained")
    loss: LossSpec = setting(L1Loss(), doc="the training loss")
    optimizer: OptimizerSpec = setting(SgdOptimizer(), doc="the torch optimizer")
    schedule: ScheduleSpec = setting(ConstantSchedule(), doc="learning-rate schedule, stepped every step")
    train: TrainSettings = setting(TrainSettings(), doc="length, batches, seed, device")
    eval: EvalSettings = setting(EvalSettings(), doc="full-data loss and convergence")
    log: LogSettings = setting(LogSettings(), doc="what is written for TensorBoard")


# --- the converter ----------------------------------------------------------------------------


class Invalid(Exception):
    """Problems found while converting data to a dataclass: (dotted key, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))


def suggest(word: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    same_but_case = [c for c in choices if c.lower() == word.lower()]
    close = same_but_case or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxlevel = 60, 60, 6, 4, 3


def show(value: Any) -> str:
    """A value as a message quotes it: YAML's null, true and false; long values cut short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _SHOW.repr(value)


def type_name(value: Any) -> str:
    """'a string', 'a list', ...: what a YAML value is, as a message says it."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a whole number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def got(value: Any) -> str:
    """'got 'fast' (a string)': the value and, where it is not plain from the value, its type."""
    return "got null" if value is None else f"got {show(value)} ({type_name(value)})"


def describe(tp: Any) -> str:
    """How a type reads in an error message."""
    origin = get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0]).removeprefix('a ')}s"
        return f"a list of {len(args)} {describe(args[0]).removeprefix('a ')}s"
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp))
    if is_dataclass(tp):
        return "a mapping"
    return str(tp)


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a schema class (cached: resolving them is slow)."""
    return get_type_hints(cls)


@functools.cache
def variants(tp: Any) -> dict[str, type] | None:
    """For a union of dataclasses told apart by 'kind', the classes by kind."""
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    classes = get_args(tp)
    if not all(is_dataclass(c) for c in classes):
        return None
    return {get_args(hints(c)["kind"])[0]: c for c in classes}


def convert(tp: Any, value: Any, path: str) -> Any:
    """Convert YAML data to the annotated type, or raise Invalid naming the key."""
    kinds = variants(tp)
    if kinds is not None:
        return _convert_variant(kinds, value, path)
    if is_dataclass(tp):
        return build(tp, value, path)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return convert(option, value, path)
            except Invalid:
                continue
        literals = [a for o in get_args(tp) if get_origin(o) is Literal for a in get_args(o)]
        hint = suggest(value, [str(a) for a in literals]) if isinstance(value, str) else ""
        raise Invalid([(path, f"must be {describe(tp)}, {f'got {show(value)}' if hint else got(value)}{hint}")])
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        hint = suggest(value, list(choices)) if isinstance(value, str) else ""
        raise Invalid([(path, f"must be {describe(tp)}, got {show(value)}{hint}")])
    if origin is tuple:
        return _convert_tuple(tp, value, path)
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise Invalid([(path, f"must be a finite number, got {show(value)}")])
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise Invalid([(path, f"must be {describe(tp)}, {got(value)}")])


def _convert_tuple(tp: Any, value: Any, path: str) -> tuple:
    args = get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise Invalid([(path, f"must be {describe(tp)}, {got(value)}")])
    if len(args) == 2 and args[1] is Ellipsis:
        item_types = [args[0]] * len(value)
    else:
        if len(value) != len(args):
            raise Invalid([(path, f"must be a list of {len(args)} values, got {len(value)}: {show(value)}")])
        item_types = list(args)
    return tuple(convert(t, v, f"{path}[{i}]") for i, (t, v) in enumerate(zip(item_types, value)))


def _convert_variant(kinds: dict[str, type], value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise Invalid([(path, f"must be a mapping, {got(value)}")])
    kind = value.get("kind", next(iter(kinds)))
    if kind not in kinds:
        hint = suggest(kind, list(kinds)) if isinstance(kind, str) else ""
        raise Invalid([(join(path, "kind"), f"must be one of {', '.join(map(repr, kinds))}, got {show(kind)}{hint}")])
    return build(kinds[kind], value, path)


def build(cls: type, raw: Any, path: str = "") -> Any:
    """Build a dataclass from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise Invalid([(path or "(top level)", f"must be a mapping, {got(raw)}")])
    types_ = hints(cls)
    known = {f.name: f for f in fields(cls)}
    problems: list[tuple[str, str]] = []
    for key in raw:
        if key not in known:
            problems.append((join(path, str(key)), _unknown_key(cls, str(key), list(known))))
    values: dict[str, Any] = {}
    for name, f in known.items():
        key = join(path, name)
        if name not in raw:
            if f.default is MISSING:
                problems.append((key, "is required"))
            continue
        try:
            values[name] = convert(types_[name], raw[name], key)
        except Invalid as invalid:
            problems.extend(invalid.problems)
            continue
        for check in f.metadata.get("checks", ()):
            problem = check(values[name]) if values[name] is not None else None
            if problem:
                problems.append((key, problem))
                break
    if problems:
        raise Invalid(problems)
    instance = cls(**values)
    cross = instance.problems() if hasattr(instance, "problems") else []
    if cross:
        raise Invalid([(join(path, k), m) for k, m in cross])
    return instance


def _unknown_key(cls: type, key: str, known: list[str]) -> str:
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str):
        return f"unknown key {key!r}{suggest(key, known)}"
    settings = [k for k in known if k != "kind"]
    listing = ", ".join(settings) if settings else "none"
    hint = suggest(key, known)
    if not hint:
        # A setting of a sibling kind (momentum under adam) is a wrong kind more than a misspelling.
        owners = [k for k, c in (_family(cls) or {}).items() if key in {f.name for f in fields(c)}]
        if owners:
            hint = f" (only kind {' and '.join(map(repr, owners))} {'has' if len(owners) == 1 else 'have'} it)"
    return f"unknown key {key!r} for kind {kind!r}{hint}; its settings: {listing}"


def _family(cls: type) -> dict[str, type] | None:
    """The kinds that share a config section with cls (the optimizers of 'optimizer', ...)."""
    for tp in hints(Config).values():
        kinds = variants(tp)
        if kinds and cls in kinds.values():
            return kinds
    return None


def check_key(cls: type, dotted: str) -> str | None:
    """Why a dotted key such as 'optimizer.lr' names no setting of cls, or None where it does.

    For a section with kinds, a key is accepted when any kind has it; which kind is used is only
    known once the spec is built.
    """
    parts = dotted.split(".")
    classes = [cls]
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth + 1])
        names = list(dict.fromkeys(f.name for c in classes for f in fields(c)))
        if part not in names:
            return f"unknown key {here!r}{suggest(part, names)}"
        found = [hints(c)[part] for c in classes if part in {f.name for f in fields(c)}]
        classes = []
        for tp in found:
            kinds = variants(tp)
            classes.extend(kinds.values() if kinds else [tp] if is_dataclass(tp) else [])
        if not classes and depth < len(parts) - 1:
            literals = tuple(dict.fromkeys(a for tp in found if get_origin(tp) is Literal for a in get_args(tp)))
            what = describe(Literal[literals]) if len(literals) > 1 else describe(found[0])
            return f"{here} is a setting ({what}), not a section, so it has no key {parts[depth + 1]!r}"
    return None


def as_data(instance: Any) -> Any:
    """A dataclass as plain YAML/JSON data (tuples become lists), keys in declaration order."""
    if is_dataclass(instance):
        return {f.name: as_data(getattr(instance, f.name)) for f in fields(instance)}
    if isinstance(instance, (tuple, list)):
        return [as_data(v) for v in instance]
    return instance
