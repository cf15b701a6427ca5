"""The kind registry: every data, model, loss, optimizer and schedule kind in one place.

A kind is a frozen dataclass of its settings and a builder. Built-in kinds register themselves in
their family's module (trainer.data, trainer.models, trainer.losses, trainer.optim); a user's kind
is named by its import path, `module:attribute`, and goes through the same door: its settings
dataclass is made from the callable's signature, so an unknown key, a missing argument or a value
of the wrong type is found when the spec is read, with the same messages as for a built-in.

Modules are looked up in the spec file's own folder first, then among installed packages.
Nothing here imports torch. It is one module over 400 lines because it is one door: a built-in
kind and a user's import path go through the same lookup, settings and checks, and splitting them
would make two.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, fields, make_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from trainer.core import strict
from trainer.core.strict import Invalid, setting, suggest

FAMILIES = ("data", "model", "loss", "optimizer", "schedule")
IMPORT_PATH = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
)


@dataclass(frozen=True)
class Kind:
    """One kind: its family, its name (a built-in name or 'module:attribute'), its settings
    dataclass, and how it is built (see each family's module for the builder's arguments)."""

    family: str
    name: str
    config: type
    build: Callable[..., Any]
    target: Any = None  # the user's callable, for a user kind
    batched: bool = False  # the batched engine trains it (trainer.training.batched)
    rule: Any = None  # an optimizer kind's batched update rule (trainer.kinds.optim.BatchedRule)

    @property
    def is_user_code(self) -> bool:
        return self.target is not None


@dataclass(frozen=True)
class Family:
    """What a family's user kinds look like: the arguments the trainer passes first (an
    optimizer's parameters), settings every kind of the family shares, how user code is built."""

    name: str
    what: str  # 'a function returning ...', for messages
    build_user: Callable[..., Any]  # (kind, spec, *family arguments) -> built object
    passed: int | Callable[[Any], int] = 0  # leading positional parameters the trainer fills in
    common: type | None = None  # a dataclass of settings every kind of the family has
    # Parameters the trainer fills from the data when a user's kind declares them: name -> (type, doc).
    context: Mapping[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)
    kinds: dict[str, Kind] = dataclasses.field(default_factory=dict)


_families: dict[str, Family] = {}


def define_family(
    name: str,
    what: str,
    build_user: Callable[..., Any],
    passed: int | Callable[[Any], int] = 0,
    common: type | None = None,
    context: Mapping[str, tuple[Any, str]] | None = None,
) -> Family:
    """Declare a family (each family's module does this once); `context`: parameters the trainer
    fills from the data, where a user's kind declares them and the spec leaves them 'auto'."""
    family = _families[name] = Family(name, what, build_user, passed, common, dict(context or {}))
    return family


def register(family: str, config: type, build: Callable[..., Any], **entry: Any) -> Kind:
    """Add a built-in kind: its settings dataclass (whose `kind` field names it), its builder, and
    the rest of its entry (`batched`: whether the batched engine trains it; an optimizer's `rule`)."""
    name = get_args(strict.hints(config)["kind"])[0]
    kind = _families[family].kinds[name] = Kind(family, name, config, build, **entry)
    return kind


def builtin(family: str) -> dict[str, type]:
    """A family's built-in kinds: name -> settings class, the default first."""
    return {name: kind.config for name, kind in _families[family].kinds.items()}


def union(family: str) -> Any:
    """The type of a family's config section: any of its built-in kinds (user kinds are resolved
    by the converter when a spec names one)."""
    return Union[tuple(builtin(family).values())]  # noqa: UP007  (a union built at run time)


def family(name: str) -> Family:
    return _families[name]


def kind_of(spec: Any) -> Kind:
    """The registry entry of a section's settings, built-in or user code."""
    for fam in _families.values():
        kind = fam.kinds.get(spec.kind)
        if kind is not None and type(spec) is kind.config:
            return kind
    return _user_kind(spec.__family__, spec.kind, spec.__folder__)


def build(spec: Any, *args: Any) -> Any:
    """Build what a section describes, with the family's arguments (see each family)."""
    kind = kind_of(spec)
    if not kind.is_user_code:
        return kind.build(kind, spec, *args)
    with _same_folder():
        return kind.build(kind, spec, *args)


@contextlib.contextmanager
def _same_folder() -> Iterator[None]:
    """User code that changes the working folder (os.chdir in a data function) moves none of the
    sweep's relative paths, its --logdir first: the folder is set back when the code returns."""
    try:
        here = os.getcwd()
    except OSError:  # the working folder is gone: nothing to keep
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.chdir(here)


def settings(spec: Any) -> dict[str, Any]:
    """A user kind's own keyword arguments: its settings without 'kind' and the family's common ones."""
    common = (
        {f.name for f in fields(_families[spec.__family__].common)}
        if _families[spec.__family__].common
        else set()
    )
    return {
        f.name: _plain_value(getattr(spec, f.name))
        for f in fields(spec)
        if f.name != "kind" and f.name not in common
    }


def _plain_value(value: Any) -> Any:
    # Lists arrive as tuples (specs are frozen); user code expects what YAML wrote.
    if isinstance(value, tuple):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


# --- user code ---------------------------------------------------------------------------------

_folder: contextvars.ContextVar[Path | None] = contextvars.ContextVar("spec_folder", default=None)


@contextlib.contextmanager
def searching(folder: Path | str | None) -> Iterator[None]:
    """Resolve user kinds named while inside against modules in this folder first."""
    token = _folder.set(Path(folder).resolve() if folder is not None else None)
    try:
        yield
    finally:
        _folder.reset(token)


def resolve(family_name: str, text: str, folder: Path | str | None = None) -> Kind:
    """The user kind `module:attribute` of a family; Invalid names what is wrong."""
    folder = Path(folder).resolve() if folder is not None else _folder.get()
    return _user_kind(family_name, text, str(folder) if folder else None)


def import_attribute(text: str, folder: str | None, key: str) -> Any:
    """The object named by 'module:attribute', the module looked up in `folder` first."""
    if not IMPORT_PATH.match(text):
        raise Invalid(
            [
                (
                    key,
                    f"{text!r} is not an import path; write module:attribute, such as "
                    f"'my_models:SmallCNN' for SmallCNN in my_models.py beside the spec",
                )
            ]
        )
    module_name, _, attribute = text.partition(":")
    module = _import(module_name, folder, key)
    value: Any = module
    for depth, part in enumerate(attribute.split(".")):
        if not hasattr(value, part):
            owner = module_name + "".join("." + p for p in attribute.split(".")[:depth])
            names = [n for n in dir(value) if not n.startswith("_")]
            raise Invalid(
                [(key, f"{owner} has no attribute {part!r}{suggest(part, names)} ({_where(module)})")]
            )
        value = getattr(value, part)
    return value


def _where(module: types.ModuleType) -> str:
    file = getattr(module, "__file__", None)
    return f"module file {shown_path(file)}" if file else "a built-in module"


def shown_path(file: str | Path) -> str:
    """A path as records and messages show it: relative to the working folder, else its name alone
    (a log folder holds no absolute paths)."""
    path = Path(file)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


def _import(name: str, folder: str | None, key: str) -> types.ModuleType:
    top = name.split(".")[0]
    local = folder is not None and (
        Path(folder, top + ".py").is_file() or Path(folder, top, "__init__.py").is_file()
    )
    if local and folder not in sys.path:
        sys.path.insert(0, folder)
    loaded = sys.modules.get(top)
    if local and loaded is not None and getattr(loaded, "__file__", None):
        home = Path(loaded.__file__).resolve().parent
        if home != Path(folder) and home.parent != Path(folder):
            raise Invalid(
                [
                    (
                        key,
                        f"a module named {top!r} is already imported from {shown_path(loaded.__file__)}, "
                        f"so {top}.py beside the spec cannot be; rename one of them",
                    )
                ]
            )
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        here = sorted(p.stem for p in Path(folder).glob("*.py")) if folder else []
        place = (
            f"no {top}.py in {shown_path(folder)}/ and no installed module of that name"
            if folder
            else "no installed module of that name"
        )
        raise Invalid([(key, f"cannot import module {name!r}: {place}{suggest(top, here)}")])
    try:
        return importlib.import_module(name)
    except Invalid:
        raise
    except BaseException as exc:  # the user's module raised while importing: its message, not our traceback
        if isinstance(exc, KeyboardInterrupt):
            raise
        where = f" ({shown_path(found.origin)})" if found.origin else ""
        raise Invalid([(key, f"importing {name!r}{where} raised {type(exc).__name__}: {exc}")]) from None


@functools.cache
def _user_kind(family_name: str, text: str, folder: str | None) -> Kind:
    fam = _families[family_name]
    key = f"{family_name}.kind"
    target = import_attribute(text, folder, key)
    if not callable(target):
        raise Invalid(
            [
                (
                    key,
                    f"{text} is {type(target).__name__}, not something that can be called; "
                    f"a {family_name} kind is {fam.what}",
                )
            ]
        )
    config = _settings_class(fam, text, folder, target, key)
    return Kind(family_name, text, config, fam.build_user, target)


def _settings_class(fam: Family, text: str, folder: str | None, target: Any, key: str) -> type:
    try:
        signature = inspect.signature(target, eval_str=True)
    except (TypeError, ValueError, NameError):
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            raise Invalid(
                [(key, f"the parameters of {text} cannot be read; a {fam.name} kind is {fam.what}")]
            )
    params = list(signature.parameters.values())
    passed = fam.passed(target) if callable(fam.passed) else fam.passed
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < passed and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise Invalid(
            [
                (
                    key,
                    f"{text} takes {len(positional)} positional argument"
                    f"{'' if len(positional) == 1 else 's'}; a {fam.name} kind is {fam.what}",
                )
            ]
        )
    common = {f.name for f in fields(fam.common)} if fam.common else set()
    specs: list[tuple[str, Any, Any]] = [("kind", str, setting(text, doc="import path of the user's code"))]
    for p in params[passed:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in common:
            continue
        if p.name in fam.context:
            tp, doc = fam.context[p.name]
            specs.append(
                (
                    p.name,
                    tp | Literal["auto"],
                    setting("auto", doc=f"argument {p.name} of {text}; 'auto': {doc}"),
                )
            )
            continue
        default = MISSING if p.default is p.empty else _frozen(p.default)
        specs.append((p.name, _setting_type(p), setting(default, doc=f"argument {p.name} of {text}")))
    attribute = text.partition(":")[2].replace(".", "_")
    cls = make_dataclass(
        f"{attribute}Settings", specs, bases=(fam.common,) if fam.common else (), frozen=True, kw_only=True
    )
    cls.__doc__ = (inspect.getdoc(target) or f"{text}").splitlines()[0]
    cls.__family__, cls.__folder__ = fam.name, folder
    cls.__reduce__ = lambda self: (
        _rebuild,
        (fam.name, text, folder, {f.name: getattr(self, f.name) for f in fields(self)}),
    )
    return cls


def _rebuild(family_name: str, text: str, folder: str | None, values: dict[str, Any]) -> Any:
    """Unpickle a user kind's settings in another process (a worker imports the module anew)."""
    return _user_kind(family_name, text, _moved.get(folder, folder)).config(**values)


# Spec folders as the sweep's own machine named them -> their copies on this one (a cluster node).
_moved: dict[str | None, str] = {}


def relocate(folder: str, copy: str) -> None:
    """Import the user code of a spec folder from a copy of it, in this process from now on."""
    _moved[folder] = copy


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


SETTING_TYPES = (bool, int, float, str)


def _setting_type(p: inspect.Parameter) -> Any:
    """The type a user's parameter is checked against: its annotation where the converter knows
    it, else the type of its default (bool, int, float, str), else any plain value."""
    annotation = p.annotation
    if annotation is not p.empty and _supported(annotation):
        return _normalized(annotation)
    if type(p.default) in SETTING_TYPES and (annotation is p.empty or not _supported(annotation)):
        return (
            type(p.default)
            if type(p.default) is not int
            else (int | float if annotation is not p.empty else int)
        )
    if p.default is None and annotation is not p.empty and _supported(annotation):
        return _normalized(annotation) | None
    return Any


def _supported(tp: Any) -> bool:
    if tp in SETTING_TYPES or tp is type(None) or tp is Any:
        return True
    origin = get_origin(tp)
    if origin is Literal:
        return all(isinstance(a, (str, int, bool)) for a in get_args(tp))
    if origin in (Union, types.UnionType, tuple, list):
        return all(a is Ellipsis or _supported(a) for a in get_args(tp)) and bool(get_args(tp))
    return False


def _normalized(tp: Any) -> Any:
    """list[int] -> tuple[int, ...] (specs are frozen)."""
    origin = get_origin(tp)
    if origin is list:
        return tuple[get_args(tp)[0], ...]
    if origin in (Union, types.UnionType):
        return Union[tuple(_normalized(a) for a in get_args(tp))]  # noqa: UP007  (built at run time)
    return tp


def code_of(text: str) -> dict[str, Any]:
    """Which code an (already imported) import path names: the path, its module's file and the
    file's sha256, so a record says which code produced a run."""
    module = sys.modules.get(text.partition(":")[0])
    file = getattr(module, "__file__", None)
    return {
        "kind": text,
        "file": shown_path(file) if file else None,
        "sha256": _file_digest(file) if file else None,
    }


@functools.cache
def _file_digest(file: str) -> str:
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()


def _user_config(kinds: dict[str, type], text: str, key: str) -> type:
    for fam in _families.values():
        if builtin(fam.name) == kinds:
            try:
                return resolve(fam.name, text).config
            except Invalid as invalid:
                raise Invalid([(key, message) for _, message in invalid.problems]) from None
    raise Invalid([(key, "user code cannot be named here")])


def _family_of(cls: type) -> dict[str, type] | None:
    for fam in _families.values():
        if any(kind.config is cls for kind in fam.kinds.values()):
            return builtin(fam.name)
    return None


strict.hooks.user_kind = _user_config
strict.hooks.family_of = _family_of
