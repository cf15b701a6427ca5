"""The strict converter: YAML data to frozen dataclasses, with checks, did-you-mean and messages that
name the key. It knows nothing of experiments; trainer.schema and the kind families build on it.

The module is over 400 lines because it is one converter: its checks, the conversion of each type,
the messages that describe what was expected and the dotted-key checks all read the same
dataclass fields and must agree on them."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import math
import reprlib
import types
from collections.abc import Callable, Iterator
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

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


# The seeds torch takes (torch.manual_seed and torch.Generator.manual_seed).
SEED = _bound(lambda v: -(2**63) <= v < 2**64, "from -2**63 to 2**64 - 1, the seeds torch takes")


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
    return {
        bool: "a boolean",
        int: "a whole number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


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
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


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
        inner = None  # a mapping's problems as the settings class among the options sees them
        for option in get_args(tp):
            try:
                return convert(option, value, path)
            except Invalid as invalid:
                if isinstance(value, dict) and is_dataclass(option):
                    inner = invalid
        if inner is not None:
            raise inner
        literals = [a for o in get_args(tp) if get_origin(o) is Literal for a in get_args(o)]
        hint = suggest(value, [str(a) for a in literals]) if isinstance(value, str) else ""
        raise Invalid(
            [(path, f"must be {describe(tp)}, {f'got {show(value)}' if hint else got(value)}{hint}")]
        )
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        hint = suggest(value, list(choices)) if isinstance(value, str) else ""
        raise Invalid([(path, f"must be {describe(tp)}, got {show(value)}{hint}")])
    if origin is tuple:
        return _convert_tuple(tp, value, path)
    if tp is Any:
        return _plain(value, path)
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


def _plain(value: Any, path: str) -> Any:
    """Any YAML value as frozen data (lists become tuples), for settings of user code without types."""
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid([(path, f"must be a finite number, got {show(value)}")])
    if isinstance(value, list):
        return tuple(_plain(v, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        return {k: _plain(v, join(path, str(k))) for k, v in value.items()}
    return value


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
    if is_import_path(kind) and hooks.user_kind is not None:
        return build(hooks.user_kind(kinds, kind, join(path, "kind")), value, path)
    if kind not in kinds:
        hint = suggest(kind, list(kinds)) if isinstance(kind, str) else ""
        raise Invalid(
            [(join(path, "kind"), f"must be one of {', '.join(map(repr, kinds))}, got {show(kind)}{hint}")]
        )
    return build(kinds[kind], value, path)


_built: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar("built", default=None)


@contextlib.contextmanager
def reusing() -> Iterator[None]:
    """While inside, a mapping built once more into the same dataclass at the same key gives the
    instance built before (instances are frozen): the runs of a sweep share most sections."""
    token = _built.set({})
    try:
        yield
    finally:
        _built.reset(token)


def build(cls: type, raw: Any, path: str = "") -> Any:
    """Build a dataclass from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise Invalid([(path or "(top level)", f"must be a mapping, {got(raw)}")])
    built = _built.get()
    if built is None:
        return _build(cls, raw, path)
    key = (cls, path, repr(raw))  # repr tells 1 from 1.0 and True
    instance = built.get(key)
    if instance is None:
        instance = built[key] = _build(cls, raw, path)
    return instance


def _build(cls: type, raw: dict[str, Any], path: str) -> Any:
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
            hint = (
                f" (only kind {' and '.join(map(repr, owners))} {'has' if len(owners) == 1 else 'have'} it)"
            )
    return f"unknown key {key!r} for kind {kind!r}{hint}; its settings: {listing}"


def _family(cls: type) -> dict[str, type] | None:
    """The kinds that share a config section with cls (the optimizers of 'optimizer', ...)."""
    return hooks.family_of(cls) if hooks.family_of else None


class Hooks:
    """How the converter reaches the kind registry without importing it (trainer.kinds sets these):
    `user_kind(kinds, text, path)` gives the config class of a 'module:attribute' kind of the
    section whose built-in kinds are `kinds`; `family_of(cls)` the built-in kinds beside cls."""

    user_kind: Callable[[dict[str, type], str, str], type] | None = None
    family_of: Callable[[type], dict[str, type] | None] | None = None


hooks = Hooks()


def is_import_path(kind: Any) -> bool:
    """Whether a kind names user code ('module:attribute') rather than a built-in."""
    return isinstance(kind, str) and ":" in kind


def check_key(cls: type, dotted: str, open_sections: frozenset[str] | set[str] = frozenset()) -> str | None:
    """Why a dotted key such as 'optimizer.lr' names no setting of cls, or None where it does.

    For a section with kinds, a key is accepted when any kind has it; which kind is used is only
    known once the spec is built. Below a section in `open_sections` (one whose kind is user code,
    whose settings are only known once it is imported) every key is accepted here.
    """
    parts = dotted.split(".")
    classes = [cls]
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        if depth and ".".join(parts[:depth]) in open_sections:
            return None
        names = list(dict.fromkeys(f.name for c in classes for f in fields(c)))
        if part not in names:
            return f"unknown key {here!r}{suggest(part, names)}"
        found = [hints(c)[part] for c in classes if part in {f.name for f in fields(c)}]
        classes = []
        for tp in found:
            kinds = variants(tp)
            classes.extend(kinds.values() if kinds else [tp] if is_dataclass(tp) else [])
        if not classes and depth < len(parts) - 1:
            literals = tuple(
                dict.fromkeys(a for tp in found if get_origin(tp) is Literal for a in get_args(tp))
            )
            what = describe(Literal[literals]) if len(literals) > 1 else describe(found[0])
            return f"{here} is a setting ({what}), not a section, so it has no key {parts[depth + 1]!r}"
    return None


def as_data(instance: Any) -> Any:
    """A dataclass as plain YAML/JSON data (tuples become lists), keys in declaration order."""
    if is_dataclass(instance):
        # 'kind' first, then the class's own settings, then those it shares with its family.
        inherited = {
            f.name for base in type(instance).__mro__[1:] if is_dataclass(base) for f in fields(base)
        }
        names = sorted(
            (f.name for f in fields(instance)), key=lambda name: (name != "kind", name in inherited)
        )
        return {name: as_data(getattr(instance, name)) for name in names}
    if isinstance(instance, (tuple, list)):
        return [as_data(v) for v in instance]
    if isinstance(instance, dict):
        return {k: as_data(v) for k, v in instance.items()}
    return instance
