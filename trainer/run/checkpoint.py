"""Rebuilding a finished run's model: its configuration from record.json, its weights from model.pt.

    model = trainer.load_model("logs/seed-notebook/batch_size=1,weight_decay=0.0")
    model = trainer.load_model("logs/digits/lr=0.003,channels=16,seed=0", trust_code=True, code_dir="experiments")

A run folder may come from anyone (docs/threat-model.md), so loading one runs no code of its own
choosing. A built-in model (linear, mlp) is rebuilt from the record's settings, which must still be
the configuration the run's digest was made from. A model of user code is imported only when the
caller says so (`trust_code=True`) and only from where the caller says (`code_dir`, else the current
folder and installed modules), never from a path the record names; or the caller passes the model
itself (`model=`) and only the weights are read. Weights are read with `weights_only=True`, from a
plain file of the size the record wrote down.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.core import untrusted
from trainer.core.errors import UserError
from trainer.core.strict import convert, is_import_path
from trainer.kinds import registry as kinds
from trainer.kinds.models import Shape, build_model
from trainer.run import rundir, verify
from trainer.spec.schema import Invalid, ModelSpec

if TYPE_CHECKING:
    from torch import nn


class CheckpointError(UserError):
    """A run folder whose model cannot be rebuilt."""


def load_model(
    run_folder: str | Path,
    map_location: Any = "cpu",
    which: str = "final",
    *,
    trust_code: bool = False,
    code_dir: str | Path | None = None,
    model: nn.Module | None = None,
) -> nn.Module:
    """The trained model of a finished run, in eval mode, with its final weights, or with
    which="best" those of the best evaluation of its watched metric (log.checkpoint: best, both).

    A model of user code is rebuilt only with trust_code=True, importing its module from code_dir
    (default: the current folder, then installed modules); or pass `model`, a module of the run's
    architecture, to load the weights into."""
    import torch

    if which not in ("final", "best"):
        raise CheckpointError(f"which={which!r}: a run keeps its 'final' weights and its 'best'")
    folder = Path(run_folder)
    if folder.is_symlink():  # found in a teammate's folder, it could lead anywhere
        raise CheckpointError(
            f"{folder}: is a symlink to {os.readlink(folder)}; a run folder is not read through a "
            f"symlink: pass the folder it leads to, if that is the run you mean"
        )
    record, problem = rundir.load_record(folder)
    if record is None:
        raise CheckpointError(f"{folder}: {problem or 'no record.json, so not a finished run'}")
    name = record.get("checkpoint" if which == "final" else "best_checkpoint")
    if not name:
        raise CheckpointError(
            f"{folder}: the run kept no {which} checkpoint (status {record.get('status')!r}; "
            f"log.checkpoint: {_setting(record, 'log', 'checkpoint', 'final')})"
        )
    problem = verify.record_config_problem(record) or verify.config_problem(
        folder / rundir.CONFIG, record.get("config_digest")
    )
    if problem is not None:
        raise CheckpointError(f"{folder}: {problem}; its model is not rebuilt from it")
    if model is None:
        model = _rebuild(folder, record, trust_code, code_dir)
    elif not isinstance(model, torch.nn.Module):
        raise CheckpointError(
            f"model: expected a torch.nn.Module to load the weights into, got {type(model).__name__}"
        )
    state = _weights(folder, name, record, map_location)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{folder / name}: its weights do not fit the model: {first}")
    return model.to(map_location).eval()


def _setting(record: dict[str, Any], section: str, key: str, default: Any) -> Any:
    config = record.get("config")
    values = config.get(section) if isinstance(config, dict) else None
    return values.get(key, default) if isinstance(values, dict) else default


def _rebuild(
    folder: Path, record: dict[str, Any], trust_code: bool, code_dir: str | Path | None
) -> nn.Module:
    """The run's model with its initial weights, from the record's model settings."""
    if not isinstance(record.get("config"), dict):
        raise CheckpointError(f"{folder}: its record holds no configuration to rebuild the model from")
    settings = record["config"].get("model", {"kind": "linear"})
    kind = settings.get("kind", "linear") if isinstance(settings, dict) else None
    user_code = isinstance(kind, str) and is_import_path(kind)
    if user_code and not trust_code:
        raise CheckpointError(
            f"{folder}: its model is user code ({kind!r}); rebuilding it would import and run that "
            f"code. Pass trust_code=True to import it from code_dir (default: the current folder) if "
            f"you trust it, or model=YourModel(...) to load the weights into a model of yours"
        )
    where = Path(code_dir) if code_dir is not None else Path.cwd()
    if user_code and not where.is_dir():
        raise CheckpointError(f"code_dir: {where} is no folder")
    try:
        with kinds.searching(where if user_code else None):
            spec = convert(ModelSpec, settings, "model")
    except Invalid as invalid:
        hint = _hint(record) if user_code else ""
        raise CheckpointError(
            [
                f"{folder}: its model cannot be rebuilt here: {key}: {message}{hint}"
                for key, message in invalid.problems
            ]
        )
    if user_code:
        _check_code(folder, record, kind)
    resolved = record.get("resolved") if isinstance(record.get("resolved"), dict) else {}
    shape = tuple(resolved.get("input_shape") or ())
    features = shape[0] if len(shape) == 1 else 0
    try:
        return build_model(
            spec,
            Shape(features, resolved.get("outputs", 1), shape, resolved.get("classes")),
            _setting(record, "train", "seed", 0),
        )
    except Invalid as invalid:
        raise CheckpointError([f"{folder}: its model cannot be built: {k}: {m}" for k, m in invalid.problems])


def _hint(record: dict[str, Any]) -> str:
    spec = record.get("spec")
    if not isinstance(spec, str):
        return ""
    return (
        f" (the run's spec was {spec!r}, relative to where its sweep ran: pass code_dir with the "
        f"folder of its code)"
    )


def _weights(folder: Path, name: str, record: dict[str, Any], map_location: Any) -> dict[str, Any]:
    """The state dict a checkpoint holds: a plain file of the size the record gives, read as
    weights only; CheckpointError otherwise."""
    import pickle
    import zipfile

    import torch

    path = folder / name
    sizes = record.get("files")
    expected = sizes.get(name) if isinstance(sizes, dict) else None
    try:
        with untrusted.open_plain(path) as f:
            size = f.seek(0, 2)
            if isinstance(expected, int) and size != expected:
                raise CheckpointError(
                    f"{path}: is {size:,} bytes, the record says {expected:,} (cut short or rewritten)"
                )
            f.seek(0)
            state = torch.load(f, map_location=map_location, weights_only=True)
    except untrusted.Refused as refused:
        raise CheckpointError(f"{path}: {refused}")
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "weights_only" in str(exc) or isinstance(exc, pickle.UnpicklingError):
            first = "it holds more than weights (objects that only an unsafe load would rebuild)"
        raise CheckpointError(f"{path}: cannot be read as the run's weights: {first}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds {type(state).__name__}, not a state_dict of tensors")
    return state


def _check_code(folder: Path, record: dict[str, Any], kind: str) -> None:
    """Warn where the module just imported for the model is not the file the run had (its sha256
    differs from the record's). Only that module's own file is read, never a path from the record."""
    code = record.get("code")
    entry = code.get("model.kind") if isinstance(code, dict) else None
    module = sys.modules.get(kind.partition(":")[0])
    file = getattr(module, "__file__", None)
    if not isinstance(entry, dict) or not file or not Path(file).is_file():
        return
    if hashlib.sha256(Path(file).read_bytes()).hexdigest() != entry.get("sha256"):
        warnings.warn(
            f"{folder}: model.kind {kind}: {kinds.shown_path(file)} is not the file the run had "
            f"(its sha256 differs from the record's)",
            stacklevel=4,
        )
