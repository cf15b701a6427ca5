"""Capturing a step's weights and gradients cheaply, and bringing them to the host once per chunk.

Two ways, one result. For a small model on the CPU, a step copies the weights and the gradients
(a join of their raw memory each); norms and histograms are computed once per chunk, in bulk. On a GPU (or for a large model) the reductions run on the device each step as small
tensors, which cross to the host in a few transfers per chunk, never one `.item()` per value.

What a chunk yields, per captured step, is a row: the elements of small parameters' weights, the
norms of large ones, then the same for the gradients. For its histogram steps it yields a
HistogramBatch: for every parameter's weights and then every parameter's gradients, the min, max,
sum, sum of squares and equal-width bucket counts (no more buckets than elements).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

HISTOGRAM_BINS = 30

# The parameters a capture reads at a step, as the model holds them then (small ones first).
Source = Callable[[], list[torch.nn.Parameter]]


class ModelParameters:
    """The model's parameters (in `order`, indices into model.parameters()), looked up afresh at each
    call: what is logged and updated is the parameter the model holds then, however the user's code
    changed it (in place, by rebinding `.data`, or by putting a new Parameter in the model). Each is
    read from the module that holds it, in its `_parameters` table (where Module.__setattr__ puts
    a new Parameter): a twentieth of the cost of walking the model, a tenth of getattr's."""

    def __init__(self, model: torch.nn.Module, order: list[int] | None = None):
        owners = []
        for name, _ in model.named_parameters():
            path, _, attribute = name.rpartition(".")
            owners.append((model.get_submodule(path)._parameters, attribute))
        self.owners = owners if order is None else [owners[i] for i in order]

    def __call__(self) -> list[torch.nn.Parameter]:
        return [table[attribute] for table, attribute in self.owners]


def bucket_layout(sizes: list[int], bins: int = HISTOGRAM_BINS) -> tuple[list[int], list[int]]:
    """Buckets per tensor (at most one per element) and where each tensor's buckets start."""
    counts = [max(1, min(bins, size)) for size in sizes]
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return counts, starts


@dataclass
class HistogramBatch:
    """The histograms of a chunk's histogram steps: row h, column i is tensor i at step h; the
    bucket counts of tensor i are columns starts[i] : starts[i] + bins[i] of `counts`."""

    lo: np.ndarray
    hi: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    counts: np.ndarray
    bins: list[int]
    starts: list[int]

    def __len__(self) -> int:
        return self.lo.shape[0]

    def part(self, start: int, stop: int) -> HistogramBatch:
        """Histogram steps start .. stop - 1 (of one run, where many runs' steps are stacked)."""
        cut = slice(start, stop)
        return HistogramBatch(
            self.lo[cut],
            self.hi[cut],
            self.sums[cut],
            self.squares[cut],
            self.counts[cut],
            self.bins,
            self.starts,
        )


class HostCapture:
    """For small models on the CPU. A step copies the weights and the gradients (a bytes join each);
    norms and histograms are computed once per chunk, in bulk."""

    # Copies of this many elements a step, for a chunk of steps, stay well under 100 MB.
    MAX_ELEMENTS = 50_000

    def __init__(
        self, small: list[torch.nn.Parameter], large: list[torch.nn.Parameter], source: Source | None = None
    ):
        params = small + large
        self.source = source or (lambda: params)
        self.sizes = [p.numel() for p in params]
        self.layout = Layout([p.numel() for p in small], [p.numel() for p in large])
        self.bins, self.starts = self.layout.bins, self.layout.starts
        self.zeros = [bytes(4 * n) for n in self.sizes]  # the gradient of a parameter the loss missed
        self.held: list[int] = []  # the storage addresses `memory` views
        self.memory: list[memoryview] = []
        self.reset()

    def reset(self) -> None:
        self.weights: list[bytes] = []
        self.grads: list[bytes] = []
        self.histogram_flags: list[bool] = []

    def capture(self, histogram: bool) -> None:
        # Between two steps the training loop's own code fills the CPU's caches, so what counts
        # here is how much code runs, not how many bytes move: joining the tensors' raw memory
        # into one bytes object is a fraction of the cost of a NumPy or torch copy.
        params = self.source()
        self.weights.append(b"".join(self._memory(params)))
        # A copy of the gradients too, not a reference: clipping, accumulation or an optimizer
        # may change them in place after this step.
        self.grads.append(
            b"".join([_raw(p.grad) if p.grad is not None else zero for p, zero in zip(params, self.zeros)])
        )
        self.histogram_flags.append(histogram)

    def _memory(self, params: list[torch.nn.Parameter]) -> list[memoryview]:
        """Views of the parameters' memory, made again only when a parameter's storage is another
        than at the last step (the views hold the old storage, so its address cannot be reused)."""
        held = [p.data_ptr() for p in params]
        if held != self.held:
            check_sizes(params, self.sizes)
            self.memory = [_raw(p) for p in params]
            # A parameter that is not contiguous float32 memory was copied: looked up again each step.
            self.held = held if all(_live(p) for p in params) else []
        return self.memory

    def take(self) -> tuple[np.ndarray, HistogramBatch | None]:
        count = len(self.weights)
        if not count:
            return np.zeros((0, 0)), None
        total = self.layout.total
        weights = np.frombuffer(b"".join(self.weights), dtype=np.float32).reshape(count, total)
        grads = np.frombuffer(b"".join(self.grads), dtype=np.float32).reshape(count, total)
        flags = np.array(self.histogram_flags)
        histograms = (
            self.layout.histograms(np.hstack([weights[flags], grads[flags]])) if flags.any() else None
        )
        self.reset()
        return self.layout.rows(weights, grads), histograms


class Layout:
    """How captured steps become logged values: rows of weights and gradients (small parameters'
    elements, large ones' norms) and histograms, for any number of captured steps at once (of one
    run, or of many runs stacked)."""

    def __init__(self, small: list[int], large: list[int]):
        sizes = small + large
        self.total = sum(sizes)
        self.large_count = len(large)
        self.small_elements = sum(small)
        large_starts = np.cumsum([self.small_elements] + large).tolist()
        self.large_spans = list(zip(large_starts, large_starts[1:]))
        both = sizes * 2
        self.bins, self.starts = bucket_layout(both)
        self.segment_starts = np.cumsum([0] + both[:-1])
        self.segment_sizes = np.array(both)
        self.bin_counts = np.array(self.bins, dtype=np.float32)
        self.last_bucket = np.repeat(self.bin_counts - 1, both)
        self.bucket_base = np.repeat(np.array(self.starts, dtype=np.intp), both)

    def rows(self, weights: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """A logged row per captured step from its float32 weights and gradients ([steps, total] each)."""
        cut = self.small_elements
        parts = [weights[:, :cut].astype(np.float64)]
        if self.large_count:
            parts.append(self._norms(weights))
        parts.append(grads[:, :cut].astype(np.float64))
        if self.large_count:
            parts.append(self._norms(grads))
        return np.hstack(parts)

    def _norms(self, values: np.ndarray) -> np.ndarray:
        """Each large parameter's norm in each row (summed in float32: the curves are float32 anyway)."""
        return np.sqrt(
            np.column_stack(
                [np.einsum("ij,ij->i", values[:, a:b], values[:, a:b]) for a, b in self.large_spans]
            )
        ).astype(np.float64)

    def histograms(self, values: np.ndarray) -> HistogramBatch:
        """All histograms of many steps ([steps, weights and gradients]), in a handful of NumPy
        operations (in float32, as DeviceCapture computes them, so both put an element in the same bucket)."""
        steps, total = values.shape[0], sum(self.bins)
        with np.errstate(all="ignore"):
            lo = np.minimum.reduceat(values, self.segment_starts, axis=1)
            hi = np.maximum.reduceat(values, self.segment_starts, axis=1)
            sums = np.add.reduceat(values, self.segment_starts, axis=1, dtype=np.float64)
            squares = np.add.reduceat(np.square(values, dtype=np.float64), self.segment_starts, axis=1)
            width = (hi - lo) / self.bin_counts
            position = values - np.repeat(lo, self.segment_sizes, axis=1)
            position /= np.repeat(width, self.segment_sizes, axis=1)
            # NaN lands in the first bucket and infinities at the edges: logging never stops a run.
            np.fmax(position, 0, out=position)
            np.fmin(position, self.last_bucket, out=position)
        ids = position.astype(np.intp)
        ids += self.bucket_base
        ids += (np.arange(steps) * total)[:, None]
        counts = np.bincount(ids.ravel(), minlength=steps * total).reshape(steps, total).astype(np.float64)
        return HistogramBatch(
            lo.astype(np.float64), hi.astype(np.float64), sums, squares, counts, self.bins, self.starts
        )


class DeviceCapture:
    """For parameters on a GPU: small tensors on the device, a few transfers per chunk."""

    def __init__(
        self, small: list[torch.nn.Parameter], large: list[torch.nn.Parameter], source: Source | None = None
    ):
        params = small + large
        self.source = source or (lambda: params)
        self.small, self.large = len(small), len(large)
        self.params = params
        self.sizes = [p.numel() for p in params]
        sizes = self.sizes * 2
        self.bins, self.starts = bucket_layout(sizes)
        device = self.params[0].device
        self.segment = torch.repeat_interleave(
            torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device)
        )
        self.bins_per_element = torch.tensor(self.bins, device=device)[self.segment]
        self.bucket_base = torch.tensor(self.starts, device=device)[self.segment]
        self.reset()

    def reset(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []
        self.histogram_rows: list[torch.Tensor] = []

    def capture(self, histogram: bool) -> None:
        params = self.source()
        if params is not self.params:
            check_sizes(params, self.sizes)
        small, large = params[: self.small], params[self.small :]
        if small:  # copies, of the weights as of the gradients: see HostCapture
            self.weights.append(torch.cat([p.detach().reshape(-1) for p in small]))
            self.grads.append(torch.cat([_grad(p).reshape(-1) for p in small]))
        if large:
            self.norms.append(
                torch.stack(torch._foreach_norm([*(p.detach() for p in large), *(_grad(p) for p in large)]))
            )
        if histogram:
            self.histogram_rows.append(
                self._histogram([p.detach() for p in params] + [_grad(p) for p in params])
            )

    def _histogram(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        flat = torch.cat([t.reshape(-1) for t in tensors]).float()
        n, seg = len(tensors), self.segment
        lo = torch.full((n,), math.inf, device=flat.device).scatter_reduce_(0, seg, flat, "amin")
        hi = torch.full((n,), -math.inf, device=flat.device).scatter_reduce_(0, seg, flat, "amax")
        width = (hi - lo) / torch.tensor(self.bins, device=flat.device)
        # As on the host: NaN in the first bucket, infinities at the edges.
        position = ((flat - lo[seg]) / width[seg]).nan_to_num(0.0)
        bucket = torch.minimum(position.clamp_min(0), (self.bins_per_element - 1).float()).long()
        counts = torch.zeros(sum(self.bins), device=flat.device).index_add_(
            0, self.bucket_base + bucket, torch.ones_like(flat)
        )
        sums = torch.zeros(2 * n, device=flat.device).index_add_(
            0, torch.cat([seg, seg + n]), torch.cat([flat, flat * flat])
        )
        return torch.cat([lo, hi, sums, counts])

    def take(self) -> tuple[np.ndarray, HistogramBatch | None]:
        count = len(self.weights) or len(self.norms)
        if not count:  # a chunk in which no step was logged
            return np.zeros((0, 0)), None
        parts = []
        norms = torch.stack(self.norms) if self.large else None
        if self.small:
            parts.append(torch.stack(self.weights).view(count, -1))
        if norms is not None:
            parts.append(norms[:, : self.large])
        if self.small:
            parts.append(torch.stack(self.grads))
        if norms is not None:
            parts.append(norms[:, self.large :])
        rows = torch.cat(parts, dim=1).double().cpu().numpy()
        histograms = None
        n = 2 * len(self.params)
        if self.histogram_rows:
            table = torch.stack(self.histogram_rows).double().cpu().numpy()
            histograms = HistogramBatch(
                table[:, :n],
                table[:, n : 2 * n],
                table[:, 2 * n : 3 * n],
                table[:, 3 * n : 4 * n],
                table[:, 4 * n :],
                self.bins,
                self.starts,
            )
        self.reset()
        return rows, histograms


def _raw(tensor: torch.Tensor) -> memoryview:
    """A CPU tensor's float32 memory as bytes to copy (contiguous first, where it is not)."""
    array = tensor.detach().to("cpu", torch.float32).numpy()  # itself where it is float32 already
    return memoryview(array if array.flags.c_contiguous else np.ascontiguousarray(array)).cast("B")


def _live(tensor: torch.Tensor) -> bool:
    """Whether _raw views the tensor's own memory (and so sees its later in-place updates)."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32 and tensor.is_contiguous()


def check_sizes(params: list[torch.nn.Parameter], sizes: list[int]) -> None:
    """Refuse parameters that changed their number of elements mid-run: their curves would not line up."""
    now = [p.numel() for p in params]
    if now != sizes:
        raise RuntimeError(
            f"the model's parameters changed size during the run ({sizes} elements, now {now}); "
            f"logged curves need each parameter to keep its shape"
        )


def _grad(p: torch.nn.Parameter) -> torch.Tensor:
    return p.grad.detach() if p.grad is not None else torch.zeros_like(p)


def capture_for(
    small: list[torch.nn.Parameter], large: list[torch.nn.Parameter], source: Source | None = None
) -> HostCapture | DeviceCapture:
    """The cheaper way for where the parameters live; `source` gives them as they are at each step."""
    params = small + large
    if all(_live(p) for p in params) and sum(p.numel() for p in params) <= HostCapture.MAX_ELEMENTS:
        return HostCapture(small, large, source)
    return DeviceCapture(small, large, source)
