"""HParams records, built as pure protobuf values: a run's session start and end, and the
experiment record that declares the columns of TensorBoard's HParams table.

A run's hparams are its resolved settings, flattened to dotted keys, each with a fixed type:
booleans stay booleans, numbers are numbers, everything else (lists, choices, missing values)
is a string spelled the same way in every run, so no column mixes types.

The module is over 400 lines because it is one record format, TensorBoard's HParams plugin data:
the runs' session records and the experiment record that declares their columns must agree on
every key, type and metric tag, so they are built in one place.
"""

from __future__ import annotations

import functools
import json
import math
import time
import types
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from google.protobuf import struct_pb2
from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from trainer.core.status import Status
from trainer.spec.schema import UNSET_NOT_IDENTITY

HParamValue = bool | float | str

# What tensorboard.plugins.hparams.metadata defines for writers, without importing it: that module
# brings in tensorboard's TensorFlow stub, a fifth of a second that the sweep and every worker
# would pay before their first run. tests/test_events.py checks these against it.
PLUGIN_NAME, PLUGIN_DATA_VERSION = "hparams", 0
EXPERIMENT_TAG = "_hparams_/experiment"
SESSION_START_INFO_TAG = "_hparams_/session_start_info"
SESSION_END_INFO_TAG = "_hparams_/session_end_info"
NULL_TENSOR = tensor_pb2.TensorProto(
    dtype=types_pb2.DT_FLOAT,
    tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=0)]),
)

# Metrics with a fixed meaning: tag, display name, description. Every other final/<split>/<name>
# and best/<split>/<name> of a run's record is a column too, described by metric_text. Which
# metrics become columns depends on the runs (declared_metrics).
METRICS = (
    ("final/weight_distance", "distance to truth", "Euclidean distance from the weights to the true weights"),
    ("final/converged", "converged", "1 if the training loss stayed within eval.tolerance to the end"),
    (
        "final/converged_step",
        "converged at step",
        "first evaluation step from which the loss stayed within tolerance",
    ),
    ("final/diverged", "diverged", "1 if the loss became NaN or infinite"),
    ("final/pruned", "pruned", "1 if its search's pruner stopped the run (its trial was behind)"),
    ("final/steps_trained", "steps trained", "steps the run trained: fewer than planned if it was pruned"),
)
SPLITS = {"train": "training rows", "val": "validation rows"}


def metric_text(tag: str) -> tuple[str, str]:
    """A metric column's display name and description: 'final val/accuracy' for final/val/accuracy."""
    for known, display, text in METRICS:
        if tag == known:
            return display, text
    when, _, value = tag.partition("/")
    split, _, name = value.partition("/")
    where = SPLITS.get(split, split)
    if when == "best":
        return f"best {value}", f"best {name} on the {where} over the run's evaluations"
    return f"{when} {value}", f"{name} on the {where} at the end of training" + (
        " (mean per row)" if name == "loss" else ""
    )


# Values a record keeps with its metrics that are no HParams metric.
NOT_METRICS = ("diverged_step",)


def metric_tags(runs: Iterable[dict[str, Any]]) -> list[str]:
    """The metric tags the runs' records hold: the validation rows' first, then the training rows';
    final before best; the loss before the other metrics (in first-seen order); the fixed ones last.
    TensorBoard shows the first five at first, and sorting by the first ranks runs by held-out loss."""
    found: dict[str, None] = {}
    for run in runs:
        for key in run.get("metrics") or {}:
            if key not in NOT_METRICS:
                found[metric_tag(key)] = None
    fixed = [tag for tag, _, _ in METRICS]
    return sorted((t for t in found if t not in fixed), key=_metric_rank) + [t for t in fixed if t in found]


def _metric_rank(tag: str) -> tuple[int, int, bool]:
    when, _, value = tag.partition("/")
    split, _, name = value.partition("/")
    return {"val": 0, "train": 1}.get(split, 2), {"final": 0, "best": 1}.get(when, 2), name != "loss"


STATUS = {
    Status.COMPLETE: api_pb2.STATUS_SUCCESS,
    Status.DIVERGED: api_pb2.STATUS_FAILURE,
    Status.PRUNED: api_pb2.STATUS_SUCCESS,  # ended as its search asked; the final/pruned column tells
    Status.FAILED: api_pb2.STATUS_FAILURE,
    Status.INTERRUPTED: api_pb2.STATUS_FAILURE,
}

# Settings that change what is logged, not what is learned.
NOT_HPARAMS = ("name", "description", "log")
# Settings that change nothing a run computes: no HParams column of their own.
NOT_HPARAM_KEYS = ("train.timeout", "data.loader")
# Settings added later: a column only where set (so older runs and newer ones share their columns).
UNSET_NOT_HPARAMS = UNSET_NOT_IDENTITY


def hparams_of(config: Any, experiment: str, resolved: dict[str, float]) -> dict[str, HParamValue]:
    """Every setting of a run as a typed hparam; `resolved` supplies numbers the spec left open."""
    values: dict[str, HParamValue] = {"experiment": experiment}
    _flatten(config, "", values)
    for key, number in resolved.items():
        values[key] = float(number)
    return values


@functools.cache
def _columns(cls: type) -> dict[str, str]:
    """The column type of each annotated setting of a config class (resolving hints is slow)."""
    return {name: column_type(hint) for name, hint in get_type_hints(cls).items()}


def _flatten(node: Any, prefix: str, out: dict[str, HParamValue]) -> None:
    columns = _columns(type(node))
    for f in fields(node):
        key = f"{prefix}{f.name}"
        if (not prefix and f.name in NOT_HPARAMS) or key in NOT_HPARAM_KEYS:
            continue
        value = getattr(node, f.name)
        if value is None and key in UNSET_NOT_HPARAMS:
            continue
        if is_dataclass(value):
            _flatten(value, f"{key}.", out)
            continue
        kind = columns[f.name]
        if kind == "number":
            if isinstance(value, (int, float)):  # a choice such as 'full' comes resolved
                out[key] = float(value)
        elif kind == "bool":
            out[key] = bool(value)
        else:
            out[key] = as_text(value)


def column_type(annotation: Any) -> str:
    """'bool', 'number' or 'string': the one type an annotated setting always has as an hparam."""
    options = [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
    if options == [bool]:
        return "bool"
    if all(o in (int, float) for o in options):
        return "number"
    if any(o in (int, float) for o in options) and all(
        o in (int, float) or get_origin(o) is Literal for o in options
    ):
        return "number"  # e.g. batch_size: int | 'full', recorded as the resolved number of rows
    return "string"


def as_text(value: Any) -> str:
    """The single spelling of a non-numeric setting: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def _value_pb(value: HParamValue) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=value)
    return struct_pb2.Value(string_value=str(value))


def summary_metadata(data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.SummaryMetadata:
    """The hparams plugin's metadata holding `data` (as its create_summary_metadata makes it)."""
    content = plugin_data_pb2.HParamsPluginData()
    content.CopyFrom(data)
    content.version = PLUGIN_DATA_VERSION
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=content.SerializeToString()
        )
    )


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=summary_metadata(data), tensor=NULL_TENSOR)
    return summary


def session_start_pb(hparams: dict[str, HParamValue], start_time: float | None = None) -> summary_pb2.Summary:
    """The run's session-start record. An empty group name keeps every run in a row of its own."""
    info = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time or time.time(), group_name="")
    for key, value in hparams.items():
        info.hparams[key].CopyFrom(_value_pb(value))
    return _summary(SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=info))


def session_hparams(summary: summary_pb2.Summary) -> dict[str, HParamValue] | None:
    """The hparams a session-start record (session_start_pb's) holds, or None if it holds none."""
    for value in summary.value:
        if value.tag == SESSION_START_INFO_TAG:
            data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
            return {key: _plain(v) for key, v in data.session_start_info.hparams.items()}
    return None


def _plain(value: struct_pb2.Value) -> HParamValue:
    kind = value.WhichOneof("kind")
    return (
        value.bool_value
        if kind == "bool_value"
        else value.number_value
        if kind == "number_value"
        else value.string_value
    )


def session_end_pb(status: str, end_time: float | None = None) -> summary_pb2.Summary:
    """The run's session-end record with its real status."""
    info = plugin_data_pb2.SessionEndInfo(status=STATUS[status], end_time_secs=end_time or time.time())
    return _summary(SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info))


def is_hparam_value(value: Any) -> bool:
    """Whether a value can be an hparam: a boolean, a finite number or a string."""
    if isinstance(value, (bool, str)):
        return True
    return isinstance(value, (int, float)) and math.isfinite(value)


def _kind(value: HParamValue) -> int:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


# TensorBoard's HParams table shows this many hparam columns at first: the first ones marked as
# `differs`, by name (its backend sorts by differs, then name, whatever the record's order).
SHOWN_COLUMNS = 5


def swept_keys(runs: Iterable[dict[str, Any]]) -> list[str]:
    """The hparams the experiments varied on purpose, most widely swept first.

    A swept key counts in an experiment when its runs hold more than one value of it; a swept
    section (`optimizer: [{...}, {...}]`) counts through its settings that differ between the runs
    holding them. Keys swept by more experiments come first, then those swept in more runs, then
    in the order the runs name them.
    """
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_experiment.setdefault(str(run.get("experiment", run["hparams"].get("experiment"))), []).append(run)
    score: dict[str, list[int]] = {}
    for group in by_experiment.values():
        values: dict[str, set[str]] = {}
        for run in group:
            for key, value in run["hparams"].items():
                if is_hparam_value(value):
                    values.setdefault(key, set()).add(_identity(value))
        swept = dict.fromkeys(key for run in group for key in run.get("swept", {}))
        varied = [
            k for s in swept for k in values if (k == s or k.startswith(s + ".")) and len(values[k]) > 1
        ]
        for key in dict.fromkeys(varied):
            counts = score.setdefault(key, [0, 0, len(score)])
            counts[0] += 1
            counts[1] += len(group)
    return sorted(score, key=lambda k: (-score[k][0], -score[k][1], score[k][2]))


def _identity(value: Any) -> Any:
    """What tells values apart as their JSON would (1, 1.0, True and '1' are four), cheaply."""
    if isinstance(value, (str, int, float)) or value is None:
        return type(value), value
    return json.dumps(value)


def declared_keys(runs: Iterable[dict[str, Any]]) -> list[str]:
    """The hparams worth a column, in this order: what the experiments swept (most widely swept
    first), the experiment, then every other key whose value varies or that some runs lack."""
    runs = list(runs)
    seen_values: dict[str, set[str]] = {}
    present: dict[str, int] = {}
    for run in runs:
        for key, value in run["hparams"].items():
            if not is_hparam_value(value):
                continue
            seen_values.setdefault(key, set()).add(_identity(value))
            present[key] = present.get(key, 0) + 1
    keys = [*swept_keys(runs), "experiment"]
    for key, values in seen_values.items():
        if key not in keys and (len(values) > 1 or present[key] != len(runs)):
            keys.append(key)
    return [k for k in dict.fromkeys(keys) if k in seen_values]


def shown_first(runs: list[dict[str, Any]], keys: list[str]) -> set[str]:
    """The columns TensorBoard should show at first: the first SHOWN_COLUMNS of `keys` whose
    values differ between runs."""
    differing = [k for k in keys if len({_identity(r["hparams"][k]) for r in runs if k in r["hparams"]}) > 1]
    return set(differing[:SHOWN_COLUMNS])


def metric_tag(key: str) -> str:
    """A record's metric as an HParams tag: 'eval_loss' is logged as 'final/eval_loss'; a key that
    names its own tag ('best/val/accuracy') is that tag."""
    return key if "/" in key else f"final/{key}"


def declared_metrics(runs: Iterable[dict[str, Any]]) -> list[str]:
    """The metric tags worth a column: those every complete run has a finite value for.

    TensorBoard's parallel coordinates and scatter plots leave out every session that lacks one
    of the declared metrics, so a metric that only some runs have (the step a run converged at,
    the distance to true weights that only some data knows) would hide the others. Where no run
    is complete, the diverged runs decide. Known tags come in METRICS's order, others by name.
    """
    runs = list(runs)
    deciding = [r for r in runs if r.get("status") == Status.COMPLETE] or [
        r for r in runs if r.get("status") == Status.DIVERGED
    ]
    if not deciding:
        return []
    tags: set[str] | None = None
    for run in deciding:
        held = {
            metric_tag(k)
            for k, v in (run.get("metrics") or {}).items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and math.isfinite(v)
        }
        tags = held if tags is None else tags & held
    return [tag for tag in metric_tags(runs) if tag in (tags or ())]


def hparam_info_pb(
    key: str, values: Iterable[Any], differs: bool | None = None, interval: list[float] | None = None
) -> api_pb2.HParamInfo:
    """A column: its type and the discrete domain of the runs' values, or for a setting a search
    draws from a distribution, the `interval` [low, high] it is drawn from (TensorBoard then filters
    it by a range, not value by value). `differs` (by default, whether the values differ) is what
    TensorBoard sorts columns by and shows the first five of."""
    # One version of the project writes one type per key; should teammates' versions disagree,
    # the column becomes text, so TensorBoard never gets a domain of mixed types.
    distinct = {_identity(v): v for v in values if is_hparam_value(v)}
    kinds = {_kind(v) for v in distinct.values()}
    if len(kinds) > 1:
        distinct = {text: as_text(v) for text, v in distinct.items()}
        kinds = {api_pb2.DATA_TYPE_STRING}
    ordered = sorted(distinct.values())
    differs = len(ordered) > 1 if differs is None else differs
    kind = kinds.pop()
    if interval is not None and kind == api_pb2.DATA_TYPE_FLOAT64:
        low = min([float(interval[0]), *ordered])
        high = max([float(interval[1]), *ordered])
        return api_pb2.HParamInfo(
            name=key,
            type=kind,
            domain_interval=api_pb2.Interval(min_value=low, max_value=high),
            differs=differs,
        )
    domain = struct_pb2.ListValue(values=[_value_pb(v) for v in ordered])
    return api_pb2.HParamInfo(name=key, type=kind, domain_discrete=domain, differs=differs)


def searched_intervals(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The ranges of the settings searches drew from distributions, by hparam key."""
    found: dict[str, list[float]] = {}
    for run in runs:
        space = (run.get("trial") or {}).get("space") or {}
        for key, bounds in space.items():
            if isinstance(bounds, dict) and {"low", "high"} <= set(bounds):
                low, high = found.get(key, [bounds["low"], bounds["high"]])
                found[key] = [min(low, bounds["low"]), max(high, bounds["high"])]
    return found


def experiment_pb(
    runs: Iterable[dict[str, Any]],
    description: str = "",
    time_created: float = 0.0,
    keys: list[str] | None = None,
) -> summary_pb2.Summary:
    """The experiment record: the declared hparams (declared_keys, unless given) with their
    discrete domains, and the metrics."""
    runs = list(runs)
    keys = declared_keys(runs) if keys is None else keys
    first = shown_first(runs, keys)
    intervals = searched_intervals(runs)
    infos = [
        hparam_info_pb(
            key, [r["hparams"][key] for r in runs if key in r["hparams"]], key in first, intervals.get(key)
        )
        for key in keys
    ]
    metrics = [
        api_pb2.MetricInfo(
            name=api_pb2.MetricName(tag=tag),
            display_name=metric_text(tag)[0],
            description=metric_text(tag)[1],
            dataset_type=api_pb2.DATASET_VALIDATION if "/val/" in tag else api_pb2.DATASET_TRAINING,
        )
        for tag in declared_metrics(runs)
    ]
    experiment = api_pb2.Experiment(
        description=description, hparam_infos=infos, metric_infos=metrics, time_created_secs=time_created
    )
    return _summary(EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))
