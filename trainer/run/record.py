"""A run's record (record.json): every key it holds, and how the record of a run is begun.

The record is written in one place (rundir.commit_record, through trainer.run.job) and read in
one place (rundir.load_record, which checks it); it stays a mapping on disk and in memory, so that a
record written by an earlier version reads as it is and its key order is unchanged.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, TypedDict

import yaml

from trainer.core.status import Status
from trainer.core.version import PACKAGE, __version__
from trainer.kinds import registry as kinds
from trainer.kinds.models import context_values
from trainer.run import rundir
from trainer.spec.plan import RunPlan
from trainer.spec.schema import as_data, beside_identity
from trainer.tensorboard.hparams import hparams_of


class RunRecord(TypedDict, total=False):
    """record.json. Every record has the keys of base_record; a run that started has those of
    start_record; a trained run those its outcome sets; rundir adds the files' sizes last."""

    # what every record says of its run, whoever writes it
    format: int
    experiment: str
    run: str
    status: str  # a Status
    config_digest: str
    swept: dict[str, Any]
    hparams: dict[str, Any]
    metrics: dict[str, Any]  # final/<tag>, best/<tag>, ... ; null where not finite
    steps: int
    seed: int
    error: str | None
    config: dict[str, Any]
    spec: str
    code: dict[str, Any]  # where the spec names user code -> import path, module file, sha256
    report: dict[str, Any]
    true_weights: list[float] | None
    # a run that started
    steps_done: int
    resolved: dict[
        str, Any
    ]  # steps, batch_size, rows, validation_rows, input_shape, outputs, classes, device
    engine: dict[str, Any] | None
    started: str
    ended: str | None
    duration_s: float | None
    host: str
    pid: int
    versions: dict[str, str]
    commit: str | None
    # a trained run
    final_weights: dict[str, list[float | None]]
    weights_sha256: str
    curve: dict[str, Any]  # the main evaluation curve, thinned (trainer.tensorboard.curves)
    checkpoint: str
    # written with the record
    files: dict[str, int]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def resolved_values(run: RunPlan) -> dict[str, float]:
    """Numbers the spec left open, as the run used them: its steps and batch size, and what the
    data gave a user's model (trainer.kinds.models.CONTEXT)."""
    given = context_values(run.config.model, run.shape)
    return {
        "train.batch_size": run.batch_size,
        "train.steps": run.steps,
        **{f"model.{name}": value for name, value in given.items() if isinstance(value, int)},
    }


def config_text(run: RunPlan, data: dict[str, Any] | None = None) -> str:
    """The resolved configuration as YAML, with what the spec left open spelled out in comments."""
    header = [f"# {run.folder}", f"# from {Path(run.spec_path).name}"]
    if run.swept:
        header.append("# swept: " + ", ".join(f"{k}={v!r}" for k, v in run.swept))
    given = "".join(f", model.{k}={v!r}" for k, v in context_values(run.config.model, run.shape).items())
    header.append(f"# resolved: steps={run.steps}, batch_size={run.batch_size} of {run.rows} rows{given}")
    data = run.config_data if data is None else data
    return "\n".join(header) + "\n" + "".join(_yaml_entry(key, value) for key, value in data.items())


_YAML_ENTRIES: dict[str, str] = {}


def _yaml_entry(key: str, value: Any) -> str:
    """The YAML of one top-level key of a configuration, as a dump of the whole would write it.

    The runs of a sweep share most sections, so each distinct one is dumped once; libyaml's dumper
    where it is built. (A run's config.yaml took 10 ms with the pure-Python dumper, 0.6 with libyaml
    and about 0.1 with the sections cached.)"""
    seen = repr((key, value))  # repr, not JSON: tells 1 from 1.0, True and '1'
    text = _YAML_ENTRIES.get(seen)
    if text is None:
        if len(_YAML_ENTRIES) > 4096:
            _YAML_ENTRIES.clear()
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        # The top level of a configuration is a block mapping; a mapping of one scalar would be
        # written in flow style unless told otherwise.
        flow = None if isinstance(value, (dict, list)) else False
        text = yaml.dump({key: value}, Dumper=dumper, sort_keys=False, default_flow_style=flow, width=100)
        _YAML_ENTRIES[seen] = text
    return text


@functools.lru_cache(maxsize=1)
def project_commit() -> str | None:
    """The git commit of the project's own code, where it is a git checkout."""
    here = PACKAGE
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    import tensorboard
    import torch

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that would take torch along when pickled
        "tensorboard": tensorboard.__version__,
        "trainer": __version__,
    }


def _prefixes() -> list[tuple[str, str]]:
    places = {
        sysconfig.get_paths()["purelib"]: "",
        sysconfig.get_paths()["platlib"]: "",
        str(PACKAGE.parent): "",  # the project's own folder
        os.getcwd(): "",
        sys.prefix: "",
        str(Path.home()): "~",
    }
    return sorted(
        ((base + os.sep, name + os.sep if name else "") for base, name in places.items() if base),
        key=lambda pair: -len(pair[0]),
    )


def portable(text: str) -> str:
    """Text with this machine's folders taken out, so that a log folder holds no absolute paths."""
    for base, name in _prefixes():
        text = text.replace(base, name)
    return text


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def base_record(run: RunPlan, status: str, error: str | None) -> RunRecord:
    """What every record says of its run, whoever writes it (needs no torch: the sweep's parent
    writes it for a run whose worker died)."""
    config = run.config_data
    return {
        "format": rundir.RECORD_FORMAT,
        "experiment": run.experiment,
        "run": run.name,
        "status": status,
        "config_digest": rundir.data_digest(config),
        "swept": dict(run.swept),
        "hparams": {
            **hparams_of(run.config, run.experiment, resolved_values(run)),
            **({"trial": run.trial.number} if run.trial is not None else {}),
        },
        "metrics": {},
        "steps": run.steps,
        "seed": run.config.train.seed,
        "error": error,
        "config": config,
        "spec": kinds.shown_path(run.spec_path),
        "code": code_record(run),
        "report": as_data(run.report),
        "true_weights": list(run.true_weights) if run.true_weights is not None else None,
        **({"trial": trial_record(run)} if run.trial is not None else {}),
    }


def trial_record(run: RunPlan) -> dict[str, Any]:
    """A search's run: its trial's number and drawn values, and the searched ranges."""
    trial = run.trial
    return {
        "number": trial.number,
        "params": dict(trial.params),
        "space": {k: {"low": low, "high": high, "log": log} for k, (low, high, log) in trial.space},
        "method": trial.method,
        "pruner": trial.pruner,
        "metric": trial.metric,
        "direction": trial.direction,
        "replicates": list(trial.replicates),
        **({"search": json.loads(trial.search)} if trial.search else {}),
    }


def code_record(run: RunPlan) -> dict[str, Any]:
    """Which user code the run called, by where the spec names it: import path, module file, sha256."""
    for where, path in run.code:  # a worker may not have imported all of it yet (a hook, a metric)
        try:
            kinds.import_attribute(path, run.data_folder, where)
        except Exception:  # the plan imported it; should that fail here, the record says no file
            pass
    return {where: kinds.code_of(path) for where, path in run.code}


def code_changes(recorded: Any, current: dict[str, Any]) -> list[str]:
    """'code of WHERE (FILE): sha256 OLD -> NEW' for each piece of user code whose module a record
    names with another digest than the current code's (`code_record` of the same run)."""
    return [
        f"code of {where} ({current[where].get('file')}): sha256 {old} -> {new}"
        for where, old, new in changed_code(recorded, current)
    ]


def changed_code(old: Any, new: Any) -> list[tuple[str, str, str]]:
    """(where, old digest, new digest), digests cut to 8 digits, for each piece of user code that two
    records' (or plans') `code` both name, with different module digests."""
    before, after = code_digests(old), code_digests(new)
    return [
        (where, before[where][:8], after[where][:8])
        for where in before
        if where in after and before[where] != after[where]
    ]


def setting_changes(old: Any, new: Any) -> list[str]:
    """'key: old -> new' for every setting two configurations (as plain data) have otherwise."""
    return [
        f"{k}: {_short(a)} -> {_short(b)}"
        for k, a, b in _diff(old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}, "")
        if k != "description" and not beside_identity(k)
    ]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _diff(old: Any, new: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def code_digests(code: Any) -> dict[str, str]:
    """where -> sha256 of each piece of user code a record's `code` names."""
    if not isinstance(code, dict):
        return {}
    return {
        where: entry["sha256"]
        for where, entry in code.items()
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
    }


def code_id(code: Any) -> str:
    """A short digest of all the user code a record's `code` names ('' for none): runs of one
    configuration and different code are different runs (never pooled as seeds)."""
    digests = code_digests(code)
    if not digests:
        return ""
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:8]


def start_record(run: RunPlan, engine: dict[str, Any]) -> RunRecord:
    """A run's record as it starts: failed until its outcome says otherwise."""
    record = base_record(run, Status.FAILED, None)
    record.update(
        {
            "steps_done": 0,
            "resolved": {
                "steps": run.steps,
                "batch_size": run.batch_size,
                "rows": run.rows,
                "validation_rows": run.validation_rows,
                "input_shape": list(run.input_shape),
                "outputs": run.outputs,
                "classes": run.classes,
                "device": None,
            },
            "engine": engine,
            "started": now(),
            "ended": None,
            "duration_s": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "versions": versions(),
            "commit": project_commit(),
        }
    )
    return record
