"""Rebuilding a finished run's model: its configuration from record.json, its weights from model.pt.

    model = trainer.load_model("logs/digits/lr=0.003,channels=16,seed=0")

A user's model class is imported as the run imported it (the spec's folder first, then installed
packages); where its file no longer has the hash the record keeps, a warning says so.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.core.errors import UserError
from trainer.kinds import registry as kinds
from trainer.kinds.models import Shape, build_model
from trainer.run import rundir
from trainer.spec.schema import Config, Invalid, build

if TYPE_CHECKING:
    from torch import nn


class CheckpointError(UserError):
    """A run folder whose model cannot be rebuilt."""


def load_model(run_folder: str | Path, map_location: Any = "cpu", which: str = "final") -> nn.Module:
    """The trained model of a finished run, in eval mode, with its final weights, or with
    which="best" those of the best evaluation of its watched metric (log.checkpoint: best, both)."""
    import torch

    if which not in ("final", "best"):
        raise CheckpointError(f"which={which!r}: a run keeps its 'final' weights and its 'best'")
    folder = Path(run_folder)
    record, problem = rundir.load_record(folder)
    if record is None:
        raise CheckpointError(f"{folder}: {problem or 'no record.json, so not a finished run'}")
    name = record.get("checkpoint" if which == "final" else "best_checkpoint")
    if not name or not (folder / name).is_file():
        raise CheckpointError(
            f"{folder}: the run kept no {which} checkpoint (status {record.get('status')!r}; "
            f"log.checkpoint: {record.get('config', {}).get('log', {}).get('checkpoint', 'final')})"
        )
    _check_code(folder, record)
    try:
        with kinds.searching(_spec_folder(record, folder)):
            config: Config = build(Config, record["config"])
    except Invalid as invalid:
        raise CheckpointError(
            [
                f"{folder}: its configuration cannot be rebuilt here: {key}: {message}"
                for key, message in invalid.problems
            ]
        )
    resolved = record.get("resolved", {})
    shape = tuple(resolved.get("input_shape") or ())
    features = shape[0] if len(shape) == 1 else 0
    model = build_model(
        config.model,
        Shape(features, resolved.get("outputs", 1), shape, resolved.get("classes")),
        config.train.seed,
    )
    state = torch.load(folder / name, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.to(map_location).eval()


def _spec_folder(record: dict[str, Any], run_folder: Path) -> Path | None:
    """Where the run found its modules, if that folder is here too (else installed modules only).
    A spec path the sweep was given relative to its own folder is looked up from the current folder,
    then from the folder that holds the log folder (where `sweep SPEC --logdir logs` was typed)."""
    spec = record.get("spec")
    if not spec:
        return None
    path = Path(spec)
    candidates = [path]
    above = run_folder.resolve().parents
    if not path.is_absolute() and len(above) > 2:
        candidates.append(above[2] / path)
    found = next((c for c in candidates if c.is_file()), None)
    if found is not None:
        return found.parent
    return path.parent if path.parent.is_dir() else None


def _check_code(folder: Path, record: dict[str, Any]) -> None:
    for where, code in (record.get("code") or {}).items():
        file = code.get("file")
        if file and Path(file).is_file() and code.get("sha256"):
            if hashlib.sha256(Path(file).read_bytes()).hexdigest() != code["sha256"]:
                warnings.warn(
                    f"{folder}: {where} {code['kind']}: {file} has changed since the run "
                    f"(its sha256 differs from the record's)",
                    stacklevel=3,
                )
