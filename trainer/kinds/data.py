"""Data kinds: the notebook's rows, a synthetic linear generator, CSV tables, and the user's own.

A data kind gives training rows, and optionally validation rows: tensors `(x, y)` of any shape
(images N x C x H x W, integer class labels, ...) or a map-style torch Dataset. `data.validation`
holds out a seeded fraction, the same for every run of a spec. What a kind produces is built once
per process and cached; each run takes its split and moves it to its device.

Built-in kinds are inspected without torch (the sweep's parent process needs none); a user's data
function is called to find its shape.

The module is over 400 lines because the data family is one job: its settings, its kinds, what a
user's data may be, and how every kind is inspected, loaded, held out and standardized must agree
on one Dataset; CSV parsing, which stands alone, is in trainer.kinds.tables.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trainer.core.strict import SEED, Invalid, as_data, at_least, below, setting
from trainer.kinds import registry as kinds
from trainer.kinds.tables import read_csv

if TYPE_CHECKING:
    import torch

# The notebook's toy table: y = 0*x0 + 1*x1 + 2*x2 + 3*x3.
SEED_ROWS = (
    (1, 0, 1, 1),
    (0, 0, 1, 0),
    (1, 0, 0, 1),
    (0, 1, 1, 1),
    (1, 1, 1, 1),
    (0, 1, 0, 0),
    (0, 1, 0, 1),
    (1, 0, 0, 0),
    (0, 0, 0, 0),
    (0, 0, 0, 1),
)
SEED_WEIGHTS = (0.0, 1.0, 2.0, 3.0)


@dataclass(frozen=True, kw_only=True)
class LoaderSettings:
    """How a Dataset's batches are loaded (torch's DataLoader); what a run computes stays the same."""

    num_workers: int = setting(0, at_least(0), doc="loader processes beside the run's own; 0 loads in it")
    pin_memory: bool = setting(False, doc="page-locked batches, for faster copies to a GPU")
    persistent_workers: bool = setting(False, doc="keep the loader processes from one epoch to the next")


@dataclass(frozen=True, kw_only=True)
class DataCommon:
    """Settings every data kind has, the user's included."""

    validation: float = setting(
        0.0,
        at_least(0),
        below(1),
        doc="fraction of rows held out for validation (seeded by split_seed; the same "
        "rows for every run of the spec); 0 for none",
    )
    split_seed: int = setting(0, SEED, doc="seed of the validation split (independent of train.seed)")
    collate: str | None = setting(
        None,
        doc="module:function making a batch of a Dataset's items, as DataLoader's collate_fn (items of "
        "different lengths); it returns (inputs, targets)",
    )
    loader: LoaderSettings = setting(LoaderSettings(), doc="DataLoader options for a Dataset")
    classes: int | None = setting(
        None,
        at_least(1),
        doc="how many classes the labels have (where some class has no rows in this data); "
        "checked against the labels; by default the data's class names, else the largest label + 1",
    )


@dataclass(frozen=True, kw_only=True)
class SeedToyData(DataCommon):
    """The notebook's ten rows of four binary features; true weights [0, 1, 2, 3]."""

    kind: Literal["seed_toy"] = "seed_toy"


@dataclass(frozen=True, kw_only=True)
class SyntheticData(DataCommon):
    """Rows drawn at random, targets from a linear model plus Gaussian noise."""

    kind: Literal["synthetic"] = "synthetic"
    rows: int = setting(100, at_least(1), doc="number of rows")
    features: int = setting(4, at_least(1), doc="number of input columns")
    weights: tuple[float, ...] | None = setting(
        None, doc="true weights (one per feature); drawn from a standard normal when omitted"
    )
    bias: float = setting(0.0, doc="true intercept added to every target")
    noise: float = setting(0.0, at_least(0), doc="standard deviation of the Gaussian noise on y")
    inputs: Literal["normal", "binary", "uniform"] = setting(
        "normal", doc="distribution of x: standard normal, 0/1 coin flips, or uniform on [0, 1)"
    )
    seed: int = setting(0, SEED, doc="seed of the data generator (independent of train.seed)")


@dataclass(frozen=True, kw_only=True)
class CsvData(DataCommon):
    """A table with a header row; one column is the target: numbers, or text labels for classification."""

    kind: Literal["csv"] = "csv"
    path: str = setting(doc="CSV file, relative to the spec file's folder")
    target: str = setting(doc="name of the target column; every other column is a numeric feature")
    standardize: bool = setting(
        False, doc="scale each feature to mean 0 and standard deviation 1 (measured on the training rows)"
    )
    true_weights: tuple[float, ...] | None = setting(
        None, doc="known true weights, one per feature, if the data has them"
    )


@dataclass(frozen=True)
class DataInfo:
    """What planning needs to know about a dataset."""

    rows: int  # training rows
    validation_rows: int
    input_shape: tuple[int, ...]  # of one row
    classes: int | None  # integer or text labels: how many classes; None for real targets
    target_shape: tuple[int, ...] = ()  # of one row's target
    true_weights: tuple[float, ...] | None = None
    true_bias: float | None = None
    digest: str | None = None  # sha256 of a CSV file's bytes
    dataset: bool = False  # a map-style Dataset, not tensors
    labels: tuple[int, int] | None = None  # the smallest and largest class label over all rows

    @property
    def features(self) -> int:
        return self.input_shape[0] if len(self.input_shape) == 1 else 0


@dataclass
class Split:
    """Rows of one split: tensors x and y, or a map-style Dataset."""

    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    dataset: Any = None

    def __len__(self) -> int:
        return len(self.dataset) if self.dataset is not None else int(self.x.shape[0])

    def to(self, device: torch.device | str, memo: dict[int, Any] | None = None) -> Split:
        """The rows on a device, as a copy of their own: a run (or its hook) that changes them in
        place changes nothing for the runs after it, which share the cache. A map-style Dataset is
        deep-copied (`memo` shared by the splits of one dataset, so a Subset's source is copied
        once); one that cannot be copied (an open file, a connection) is handed on as it is."""
        if self.dataset is not None:
            try:
                return Split(dataset=copy.deepcopy(self.dataset, memo if memo is not None else {}))
            except Exception:
                return self
        return Split(self.x.to(device, copy=True), self.y.to(device, copy=True))


@dataclass
class Dataset:
    """A run's data: training rows, validation rows where held out, and the truth where known."""

    train: Split
    validation: Split | None
    true_weights: torch.Tensor | None = None
    true_bias: float | None = None
    classes: tuple[str, ...] | None = None  # the names of text labels, in class order


# --- built-in kinds -----------------------------------------------------------------------------


def csv_path(spec: CsvData, folder: Path) -> Path:
    path = Path(spec.path)
    return path if path.is_absolute() else folder / path


def _seed_toy(kind: kinds.Kind, spec: SeedToyData, folder: Path) -> Dataset:
    import torch

    x = torch.tensor(SEED_ROWS, dtype=torch.float32)
    w = torch.tensor(SEED_WEIGHTS)
    return Dataset(Split(x, x @ w), None, w, 0.0)


def _synthetic(kind: kinds.Kind, spec: SyntheticData, folder: Path) -> Dataset:
    import torch

    gen = torch.Generator().manual_seed(spec.seed)
    shape = (spec.rows, spec.features)
    if spec.inputs == "normal":
        x = torch.randn(shape, generator=gen)
    elif spec.inputs == "binary":
        x = torch.randint(0, 2, shape, generator=gen).float()
    else:
        x = torch.rand(shape, generator=gen)
    w = (
        torch.tensor(spec.weights, dtype=torch.float32)
        if spec.weights is not None
        else torch.randn(spec.features, generator=gen)
    )
    y = x @ w + spec.bias + spec.noise * torch.randn(spec.rows, generator=gen)
    return Dataset(Split(x, y), None, w, spec.bias)


def _csv(kind: kinds.Kind, spec: CsvData, folder: Path) -> Dataset:
    import torch

    table = read_csv(csv_path(spec, folder), spec.path, spec.target)
    x = torch.tensor(table.features, dtype=torch.float32)
    if table.classes is not None:
        y = torch.tensor(table.targets, dtype=torch.int64)
    else:
        y = torch.tensor(table.targets, dtype=torch.float32)
    truth = torch.tensor(spec.true_weights, dtype=torch.float32) if spec.true_weights else None
    return Dataset(Split(x, y), None, truth, None, table.classes)


def _user_data(kind: kinds.Kind, spec: Any, folder: Path) -> Dataset:
    try:
        result = kind.target(**kinds.settings(spec))
    except Exception as exc:  # the user's code raised: its message, at the spec's line
        lines = str(exc).strip().splitlines()
        raise Invalid(
            [("data.kind", f"{kind.name} raised {type(exc).__name__}{': ' + lines[0] if lines else ''}")]
        ) from None
    return from_user(result, kind.name)


def from_user(result: Any, name: str) -> Dataset:
    """A user data function's result as a Dataset: (x, y), a map-style Dataset, or a mapping
    {'train': ..., 'validation': ...} of either."""
    if isinstance(result, Mapping):
        unknown = [k for k in result if k not in ("train", "validation")]
        if "train" not in result or unknown:
            raise Invalid(
                [
                    (
                        "data.kind",
                        f"{name} returned a mapping with the keys {sorted(map(str, result))}; "
                        f"it needs 'train' and may have 'validation'",
                    )
                ]
            )
        validation = result.get("validation")
        return Dataset(
            _split(result["train"], name, "'train'"),
            _split(validation, name, "'validation'") if validation is not None else None,
        )
    return Dataset(_split(result, name, "its result"), None)


def _split(value: Any, name: str, what: str) -> Split:
    import torch

    if isinstance(value, (tuple, list)) and len(value) == 2:
        x, y = (torch.as_tensor(v) for v in value)
        if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
            raise Invalid(
                [
                    (
                        "data.kind",
                        f"{name}: {what} is (x, y) with x of shape {list(x.shape)} and y of "
                        f"shape {list(y.shape)}; they need the same number of rows",
                    )
                ]
            )
        if x.shape[0] == 0:
            raise Invalid([("data.kind", f"{name}: {what} has no rows")])
        if x.is_floating_point() and x.dtype != torch.float32:
            x = x.float()
        if y.is_floating_point() and y.dtype != torch.float32:
            y = y.float()
        return Split(x, y)
    if hasattr(value, "__getitem__") and hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
        if len(value) == 0:
            raise Invalid([("data.kind", f"{name}: {what} is a Dataset with no rows")])
        return Split(dataset=value)
    raise Invalid(
        [
            (
                "data.kind",
                f"{name}: {what} is {type(value).__name__}; a data function returns (x, y) "
                f"tensors, a map-style torch Dataset, or {{'train': ..., 'validation': ...}} "
                f"of either",
            )
        ]
    )


DATA = kinds.define_family(
    "data",
    "a function returning (x, y) tensors, a map-style torch Dataset, or {'train': ..., 'validation': ...}",
    _user_data,
    common=DataCommon,
)
kinds.register("data", SeedToyData, _seed_toy, batched=True)
kinds.register("data", SyntheticData, _synthetic, batched=True)
kinds.register("data", CsvData, _csv, batched=True)


# --- inspecting and loading ---------------------------------------------------------------------


def split_sizes(rows: int, fraction: float) -> tuple[int, int]:
    """(training rows, validation rows) for a held-out fraction: at least one of each when held out."""
    if fraction <= 0:
        return rows, 0
    held = min(rows - 1, max(1, round(rows * fraction)))
    return rows - held, held


def inspect(spec: Any, folder: Path) -> DataInfo:
    """Size, shape and known truth of a dataset, with the class count data.classes states; raises
    Invalid naming the data.* key at fault."""
    info = _inspected(spec, folder)
    return info if spec.classes is None else _stated_classes(spec.classes, info)


def _stated_classes(stated: int, info: DataInfo) -> DataInfo:
    """The data's information with data.classes as its class count, where the labels agree."""
    if info.classes is None:
        raise Invalid(
            [("data.classes", f"is {stated}, but the targets are not class labels (one integer per row)")]
        )
    problem = None
    if info.labels is not None and info.labels[1] >= stated:
        low, high = info.labels
        problem = f"the labels run {low}..{high} ({high + 1} classes)"
    elif info.classes > stated:
        problem = f"the data names {info.classes} classes"
    if problem is not None:
        raise Invalid(
            [("data.classes", f"is {stated}, but {problem}; set it to at least that, or leave it out")]
        )
    return dataclasses.replace(info, classes=stated)


def _inspected(spec: Any, folder: Path) -> DataInfo:
    if isinstance(spec, SeedToyData):
        return _builtin_info(spec, len(SEED_ROWS), (len(SEED_ROWS[0]),), None, SEED_WEIGHTS, 0.0)
    if isinstance(spec, SyntheticData):
        if spec.weights is not None and len(spec.weights) != spec.features:
            raise Invalid(
                [
                    (
                        "data.weights",
                        f"has {len(spec.weights)} values but data.features is "
                        f"{spec.features}; give one true weight per feature",
                    )
                ]
            )
        return _builtin_info(spec, spec.rows, (spec.features,), None, spec.weights, spec.bias)
    if isinstance(spec, CsvData):
        table = read_csv(csv_path(spec, folder), spec.path, spec.target)
        features = len(table.header) - 1
        if spec.true_weights is not None and len(spec.true_weights) != features:
            raise Invalid(
                [
                    (
                        "data.true_weights",
                        f"has {len(spec.true_weights)} values but {spec.path} has {features} feature columns",
                    )
                ]
            )
        if table.classes is not None and spec.true_weights is not None:
            raise Invalid(
                [
                    (
                        "data.true_weights",
                        f"the target column {spec.target!r} holds text labels, so there "
                        f"are no true weights of a linear model",
                    )
                ]
            )
        return _builtin_info(
            spec,
            len(table.features),
            (features,),
            len(table.classes) if table.classes else None,
            spec.true_weights,
            None,
            table.digest,
        )
    return _loaded_info(spec, folder)


def _builtin_info(
    spec: Any,
    rows: int,
    shape: tuple[int, ...],
    classes: int | None,
    weights: Any,
    bias: Any,
    digest: str | None = None,
) -> DataInfo:
    if spec.validation and rows < 2:
        raise Invalid([("data.validation", f"the data has {rows} row; holding out rows needs at least two")])
    train, held = split_sizes(rows, spec.validation)
    return DataInfo(
        train,
        held,
        shape,
        classes,
        (),
        tuple(weights) if weights is not None else None,
        bias,
        digest,
        labels=(0, classes - 1) if classes else None,  # every class of a table's text labels is in it
    )


def _loaded_info(spec: Any, folder: Path) -> DataInfo:
    dataset = load(spec, folder)
    x, y = first_row(dataset.train)
    labels = label_range(dataset)  # every label read once, here
    return DataInfo(
        len(dataset.train),
        len(dataset.validation) if dataset.validation else 0,
        tuple(x.shape),
        _class_count(dataset, labels),
        tuple(y.shape),
        dataset=dataset.train.dataset is not None,
        labels=labels,
    )


def first_row(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's input and target, as tensors."""
    import torch

    if split.dataset is None:
        return split.x[0], split.y[0]
    item = split.dataset[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise Invalid(
            [
                (
                    "data.kind",
                    f"a Dataset's items must be (input, target) pairs; item 0 is {type(item).__name__}",
                )
            ]
        )
    return torch.as_tensor(item[0]), torch.as_tensor(item[1])


def _class_count(dataset: Dataset, labels: tuple[int, int] | None) -> int | None:
    """How many classes the labels have: the names a Dataset gives (`classes`, as torchvision's do,
    seen through a Subset), else the largest integer label (of `labels`, their range over all the
    rows) + 1; None for real targets."""
    if dataset.classes is not None:
        return len(dataset.classes)
    for split in (dataset.train, dataset.validation):
        named = getattr(_unwrapped(split.dataset)[0], "classes", None) if split and split.dataset else None
        if named is not None:
            return len(named)
    return labels[1] + 1 if labels is not None else None


def label_range(dataset: Dataset) -> tuple[int, int] | None:
    """The smallest and the largest class label over all training and validation rows, or None
    where the targets are no integer labels (one per row). A Dataset's labels are read from its
    `targets` where it has them (through Subsets), else from every item once."""
    import torch

    lows, highs = [], []
    for split in (dataset.train, dataset.validation):
        if split is None:
            continue
        y = split.y if split.dataset is None else _dataset_targets(split.dataset)
        if y is None or y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype is torch.bool:
            return None
        if len(y):
            lows.append(int(y.min()))
            highs.append(int(y.max()))
    return (min(lows), max(highs)) if lows else None


def _unwrapped(dataset: Any) -> tuple[Any, list[int] | None]:
    """The Dataset under any Subsets, and which of its items they hold (None for all)."""
    from torch.utils.data import Subset

    indices = None
    while isinstance(dataset, Subset):
        mine = list(dataset.indices)
        indices = mine if indices is None else [mine[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def _dataset_targets(dataset: Any) -> torch.Tensor | None:
    import torch

    inner, indices = _unwrapped(dataset)
    targets = getattr(inner, "targets", None)
    try:
        if targets is not None:
            found = torch.as_tensor(targets)
            return found[indices] if indices is not None else found
        return torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))])
    except Exception:  # targets of no one shape or type: no class labels to count
        return None


# What data kinds built in this process, by their settings: every run of a sweep shares one build.
_BUILT: dict[tuple[str, str], Dataset] = {}
MAX_BUILT = 8


def _built(spec: Any, folder: Path) -> Dataset:
    settings = {k: v for k, v in as_data(spec).items() if k not in ("validation", "split_seed")}
    key = (json.dumps(settings, sort_keys=True), str(folder))
    if key not in _BUILT:
        if len(_BUILT) >= MAX_BUILT:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = kinds.build(spec, folder)
    return _BUILT[key]


def collate_of(spec: Any, folder: Path) -> Any:
    """The spec's data.collate function, or None for torch's default."""
    if spec.collate is None:
        return None
    return kinds.import_attribute(spec.collate, str(Path(folder).resolve()), "data.collate")


def load(spec: Any, folder: Path, device: torch.device | str = "cpu") -> Dataset:
    """The run's data on its device: built once per process, split by data.validation."""
    built = _built(spec, folder)
    train, validation = built.train, built.validation
    if spec.validation:
        if validation is not None:
            raise Invalid(
                [
                    (
                        "data.validation",
                        f"{spec.kind} already returns validation rows; remove "
                        f"data.validation, or return only training rows",
                    )
                ]
            )
        train, validation = _hold_out(train, spec.validation, spec.split_seed)
    if isinstance(spec, CsvData) and spec.standardize:
        train, validation = _standardized(train, validation)
    memo: dict[int, Any] = {}
    return Dataset(
        train.to(device, memo),
        validation.to(device, memo) if validation is not None else None,
        built.true_weights.to(device, copy=True) if built.true_weights is not None else None,
        built.true_bias,
        built.classes,
    )


def _hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded random fraction of the rows for validation, the rest for training."""
    import torch

    rows = len(split)
    train_rows, held = split_sizes(rows, fraction)
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    # Sorted, so that the rows keep their order within each part.
    val_index, train_index = order[:held].sort().values, order[held:].sort().values
    if split.dataset is not None:
        from torch.utils.data import Subset

        return Split(dataset=Subset(split.dataset, train_index.tolist())), Split(
            dataset=Subset(split.dataset, val_index.tolist())
        )
    return Split(split.x[train_index], split.y[train_index]), Split(split.x[val_index], split.y[val_index])


def _standardized(train: Split, validation: Split | None) -> tuple[Split, Split | None]:
    mean = train.x.mean(dim=0)
    std = train.x.std(dim=0, unbiased=False).clamp_min(1e-12)
    scale = lambda s: Split((s.x - mean) / std, s.y)  # noqa: E731
    return scale(train), scale(validation) if validation is not None else None
