"""Minibatches: every step's rows drawn up front in chunks, so the training loop only indexes a list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

# Indices are drawn this many elements at a time; fixed, so the draws never depend on anything else.
CHUNK_ELEMENTS = 65_536


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int | None,
    steps: int,
    sampling: str,
    seed: int,
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) for each of `steps` steps from step `start` on (a resumed run: the rows of the
    steps before it are drawn, not taken); batch_size None means the whole table every step."""
    rows = x.shape[0]
    if batch_size is None or batch_size >= rows and sampling != "with_replacement":
        for _ in range(start, steps):
            yield x, y
        return
    # The sampler's generator lives on the CPU, so the same seed gives the same rows on any device.
    gen = torch.Generator().manual_seed(seed)
    for index, sizes in _skipped(_index_chunks(rows, batch_size, steps, sampling, gen), start):
        index = index.to(x.device)
        yield from zip(x[index].split(sizes), y[index].split(sizes))


def _skipped(
    chunks: Iterator[tuple[torch.Tensor, list[int]]], start: int
) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """The chunks of row indices without their first `start` steps (drawn all the same)."""
    for index, sizes in chunks:
        if start >= len(sizes):
            start -= len(sizes)
            continue
        if start:
            index, sizes, start = index[sum(sizes[:start]) :], sizes[start:], 0
        yield index, sizes


def step_indices(
    rows: int, batch_size: int | None, steps: int, sampling: str, seed: int
) -> torch.Tensor | None:
    """The rows `batches` draws at each step, as a [steps, batch_size] tensor (the same draws from
    the same seed); None where every step takes the whole table. Every batch must be full."""
    if batch_size is None or batch_size >= rows and sampling != "with_replacement":
        return None
    gen = torch.Generator().manual_seed(seed)
    index = torch.cat([i for i, _ in _index_chunks(rows, batch_size, steps, sampling, gen)])
    return index.view(steps, batch_size)


def _index_chunks(
    rows: int, batch_size: int, steps: int, sampling: str, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, list[int]]]:
    per_chunk = max(1, CHUNK_ELEMENTS // batch_size)
    if sampling == "with_replacement":
        done = 0
        while done < steps:
            count = min(per_chunk, steps - done)
            yield torch.randint(0, rows, (count * batch_size,), generator=gen), [batch_size] * count
            done += count
        return
    pending: list[torch.Tensor] = []
    chunk: list[torch.Tensor] = []
    for step in range(steps):
        if not pending:
            order = torch.randperm(rows, generator=gen) if sampling == "shuffle" else torch.arange(rows)
            pending = list(order.split(batch_size))[::-1]
        if step % per_chunk == 0:
            if step:
                yield torch.cat(chunk), [len(c) for c in chunk]
            chunk = []
        chunk.append(pending.pop())
    if steps:
        yield torch.cat(chunk), [len(c) for c in chunk]


def loader_batches(
    dataset: Any,
    batch_size: int | None,
    steps: int,
    sampling: str,
    seed: int,
    device: torch.device,
    collate: Any = None,
    loader: Any = None,
    start: int = 0,
) -> Iterator[tuple[Any, torch.Tensor]]:
    """Yield (x, y) for each of `steps` steps from step `start` on, from a map-style Dataset,
    through a DataLoader that loads the rows the tensor path would take (`batches`: with
    replacement, a permutation per epoch, or in order, from the same seed), with the spec's
    collate function and loader options (data.collate, data.loader). The loader draws its workers'
    seeds from a generator of the run's seed, never from torch's global one, so that the model's
    own random numbers are the same whatever the loader does; a resumed run skips the batches it
    did without loading them."""
    from torch.utils.data import DataLoader

    rows = len(dataset)
    options = {}
    if loader is not None and loader.num_workers:
        options = {"num_workers": loader.num_workers, "persistent_workers": loader.persistent_workers}
    batches_ = DataLoader(
        dataset,
        batch_sampler=_Indices(rows, batch_size, steps, sampling, seed, start),
        collate_fn=collate,
        pin_memory=bool(loader is not None and loader.pin_memory and device.type == "cuda"),
        generator=torch.Generator().manual_seed(seed),
        **options,
    )
    for x, y in batches_:
        yield to_device(x, device), y.to(device)


class _Indices:
    """The rows of each step from `start` on, as lists of indices: a DataLoader's batch sampler."""

    def __init__(self, rows: int, batch_size: int | None, steps: int, sampling: str, seed: int, start: int):
        self.args = rows, batch_size, steps, sampling, seed, start

    def __len__(self) -> int:
        _, _, steps, _, _, start = self.args
        return steps - start

    def __iter__(self) -> Iterator[list[int]]:
        rows, batch_size, steps, sampling, seed, start = self.args
        if batch_size is None or batch_size >= rows and sampling != "with_replacement":
            every = list(range(rows))
            for _ in range(start, steps):
                yield every
            return
        gen = torch.Generator().manual_seed(seed)
        for index, sizes in _skipped(_index_chunks(rows, batch_size, steps, sampling, gen), start):
            yield from (part.tolist() for part in index.split(sizes))


def to_device(value: Any, device: torch.device) -> Any:
    """A batch's inputs on a device: a tensor, or the tensors of a tuple, list or dict a collate
    function made (other values as they are)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
