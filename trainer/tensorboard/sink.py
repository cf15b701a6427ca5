"""The TensorBoard sink: the training loop hands it values, it decides what reaches disk and when.

Captured values reach the host once per chunk of steps (see trainer.capture), and a step's
scalars become one event. Logging only reads: it never draws random numbers or touches the
model's state.

The module is over 400 lines because it is one class with one job, the TensorBoard sink, with
the few pure helpers that lay out its histograms and event blocks; the event encoding itself is
in trainer.tensorboard.events.
"""

from __future__ import annotations

import itertools
import math
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.text import metadata as text_metadata

from trainer.core.status import Status
from trainer.spec.schema import LogSettings
from trainer.tensorboard import events
from trainer.tensorboard.endings import end_session
from trainer.tensorboard.events import EventFile, HistogramBlock, ScalarBlock, ScalarTags, summary_event
from trainer.tensorboard.hparams import session_end_pb, session_start_pb
from trainer.training.capture import HistogramBatch, ModelParameters, bucket_layout, capture_for
from trainer.training.sink import Captured, Evaluation, split_parameters

START = event_pb2.SessionLog.START

# Tags. They are short on purpose: a step's event repeats every tag, so tag length is most of a
# run's disk size. w/... are weights, g/... their gradients, one curve per element.
LOSS = "loss"  # the minibatch loss, with the spec's reduction
LR = "lr"  # written when it changes
# Evaluations are train/<name> and val/<name> (see trainer.evaluate); a run's final metrics are
# final/<tag> and best/<tag>, the HParams columns.


def element_names(name: str, shape: torch.Size, linear: bool = False) -> list[str]:
    """Curve names for a parameter's elements: '0'.. for a linear model's weights, 'b' for its
    bias, 'name[i,j]' elsewhere (leading size-1 dimensions dropped)."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    if linear and name == "weight":
        return [str(i) for i in range(dims[-1])]
    if linear and name == "bias":
        return ["b"]
    if not dims or dims == [1]:
        return [name]
    return [f"{name}[{','.join(map(str, index))}]" for index in itertools.product(*(range(d) for d in dims))]


def histogram_numbers(batch: HistogramBatch, sizes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The numbers of each histogram's Summary body, as HistogramBlock lays them out (one histogram
    per tensor, equal-width buckets between its min and max), the bucket limits, and whether the
    block's layout holds for the row: it does not where a tensor of more than one bucket holds a
    single value (or none finite), which gets one bucket (see _histogram_body)."""
    bins, starts = np.array(batch.bins), np.array(batch.starts)
    owner = np.repeat(np.arange(len(bins)), bins)  # which tensor each bucket is of
    rank = np.arange(owner.size) - starts[owner] + 1  # 1 .. bins within its tensor
    with np.errstate(all="ignore"):
        width = (batch.hi - batch.lo) / bins
        limits = batch.lo[:, owner] + width[:, owner] * rank
        spread = ((batch.hi > batch.lo) | (bins == 1)).all(axis=1)
    limits[:, starts + bins - 1] = batch.hi  # the last edge exactly at the max
    numbers = np.hstack(
        [
            batch.lo,
            batch.hi,
            np.broadcast_to(np.array(sizes, dtype=np.float64), batch.lo.shape),
            batch.sums,
            batch.squares,
            limits,
            batch.counts,
        ]
    )
    return numbers, limits, spread


def _histogram_body(
    tags: list[str], sizes: list[int], batch: HistogramBatch, limits: np.ndarray, h: int
) -> bytes:
    """Histogram step h's body, tensor by tensor: a tensor holding a single value gets one bucket."""
    parts = []
    for i, (tag, size) in enumerate(zip(tags, sizes)):
        lo, hi = float(batch.lo[h, i]), float(batch.hi[h, i])
        if hi > lo:
            a, b = batch.starts[i], batch.starts[i] + batch.bins[i]
            edges = limits[h, a:b].astype("<f8").tobytes()
            counts = batch.counts[h, a:b].astype("<f8").tobytes()
        else:
            edges, counts = struct.pack("<d", hi), struct.pack("<d", size)
        parts.append(
            events.histogram_value(tag, lo, hi, size, batch.sums[h, i], batch.squares[h, i], edges, counts)
        )
    return b"".join(parts)


def text_summary(tag: str, text: str) -> summary_pb2.Summary:
    """A Summary that TensorBoard's Text tab shows as markdown."""
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        string_val=[text.encode("utf-8")],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]),
    )
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=text_metadata.create_summary_metadata(tag, ""), tensor=tensor)
    return summary


class TensorBoardSink:
    """Writes a run's curves, histograms, configuration and hparams into one event file.

    A logged step holds the minibatch loss, then the weights of small parameters (one curve per
    element) and the norms of large ones, then the same for the gradients.
    """

    # Known once begin() has the model:
    optimizer: torch.optim.Optimizer | None
    params: list[torch.nn.Parameter]  # small ones first, then large
    small_count: int
    capturing: Any  # a HostCapture or DeviceCapture (trainer.training.capture)
    step_block: ScalarBlock  # a step's loss, weights and gradients
    lr_tags: ScalarTags
    last_lr: float | None
    final_tags: ScalarTags
    eval_tags: ScalarTags
    eval_block: ScalarBlock
    histogram_tags: list[str]
    histogram_sizes: list[int]
    histogram_block: HistogramBlock
    info: list[tuple[int, float, float]]  # captured steps: (step, wall time, learning rate)

    def __init__(self, folder: str | Path, settings: LogSettings, hparams: dict[str, Any], config_text: str):
        self.folder = Path(folder)
        self.every = settings.every
        self.histograms_every = settings.histograms_every
        self.max_elements = settings.max_elements
        self.hparams = hparams
        self.config_text = config_text
        self.events: EventFile | None = None
        self.pending: list[tuple[int, bytes]] = []  # events of the user's SummaryWriter, not yet written
        self._writer: Any = None

    def writer(self) -> Any:
        """A torch SummaryWriter whose events go into this run's event file (see trainer.tensorboard.writer)."""
        if self._writer is None:
            from trainer.tensorboard.writer import RunWriter

            self._writer = RunWriter(str(self.folder), self.pending)
        return self._writer

    def begin(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        eval_tags: list[str],
        capturing: bool = True,
        resume: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        """Start the event file; without `capturing`, the caller hands captured values to write_group.
        A run resumed after `resume[0]` steps gets an event file of its own, which begins by purging
        every event of that step and later from the files before it (TensorBoard's restart
        mechanism, a SessionLog START at that step, as SummaryWriter(purge_step=...) writes): what
        the stopped run logged past its checkpoint is logged again, once."""
        self.events = EventFile(self.folder)
        self.optimizer = optimizer
        small, large = split_parameters(model, self.max_elements)
        self.params = [p for _, p in small + large]
        index = {id(p): i for i, p in enumerate(model.parameters())}
        # What is logged at each step, and at the end, is the parameters as the model holds them then.
        self.current = ModelParameters(model, [index[id(p)] for p in self.params])
        self.small_count = len(small)
        if capturing:
            self.capturing = capture_for([p for _, p in small], [p for _, p in large], self.current)
        linear = isinstance(model, torch.nn.Linear)
        curves = [e for n, p in small for e in element_names(n, p.shape, linear)]
        curves += [f"{n}.norm" for n, _ in large]
        self.step_block = ScalarBlock([LOSS, *(f"w/{c}" for c in curves), *(f"g/{c}" for c in curves)])
        self.lr_tags = ScalarTags([LR])
        self.last_lr: float | None = None
        self.final_tags = ScalarTags([f"w/{c}" for c in curves])
        self.eval_tags = ScalarTags(eval_tags)
        self.eval_block = ScalarBlock(eval_tags)
        names = [n for n, _ in small + large]
        self.histogram_tags = [f"hist/w/{n}" for n in names] + [f"hist/g/{n}" for n in names]
        self.histogram_sizes = [p.numel() for p in self.params] * 2
        self.histogram_block = HistogramBlock(self.histogram_tags, bucket_layout(self.histogram_sizes)[0])
        self.info: list[tuple[int, float, float]] = []  # captured steps: (step, wall time, learning rate)
        start = time.time()
        if resume is not None:
            step, state = resume
            self.last_lr = state.get("last_lr")
            self.events.write_event(
                event_pb2.Event(step=step, wall_time=start, session_log=event_pb2.SessionLog(status=START))
            )
        else:
            self.events.write_summary(session_start_pb(self.hparams, start), 0, start)
            indented = "\n".join("    " + line for line in self.config_text.splitlines())
            self.events.write_summary(text_summary("config", indented), 0, start)
        self.events.flush()

    def state(self) -> dict[str, Any]:
        """What a resumed run's sink needs: the learning rate last logged (it is logged on change)."""
        return {"last_lr": self.last_lr}

    def capture(self, step: int) -> None:
        """Keep this step's weights and gradients (before the update)."""
        histogram = self.histograms_every and step % self.histograms_every == 0
        if step % self.every and not histogram:
            return
        self.info.append((step, time.time(), self.optimizer.param_groups[0]["lr"]))
        self.capturing.capture(bool(histogram))

    def write(
        self, first_step: int, losses: list[float], evaluations: list[Evaluation], last_step: int
    ) -> None:
        """Write the captured steps up to last_step, with the losses of steps first_step onward."""
        rows, histograms = self.capturing.take()
        info = np.array(self.info, dtype=np.float64).reshape(-1, 3)
        self.info = []
        captured = Captured(info[:, 0].astype(np.int64), info[:, 1], info[:, 2][None], rows[None], histograms)
        eval_values = np.array([ev.values for ev in evaluations], dtype=np.float64)
        write_group(
            [self],
            first_step,
            np.asarray(losses, dtype=np.float64)[None],
            np.array([ev.step for ev in evaluations], dtype=np.int64),
            eval_values.reshape(1, len(evaluations), len(self.eval_block.tags)),
            np.array([last_step]),
            captured,
        )

    def _take_pending(self) -> list[tuple[int, bytes]]:
        taken = list(self.pending)
        self.pending.clear()
        return taken

    def finish(self, status: Status, steps: int, metrics: dict[str, Any], final: Evaluation | None) -> None:
        """The final weights and evaluation, the HParams metrics and the session's end."""
        now = time.time()
        for _, event in self._take_pending():  # what a hook logged at the final evaluation
            self.events.write_raw(event)
        body = []
        if status == Status.COMPLETE:
            params = self.current()
            small, large = params[: self.small_count], params[self.small_count :]
            weights = [p.detach().reshape(-1) for p in small]
            weights += [torch.linalg.vector_norm(p.detach()).view(1) for p in large]
            body.append(self.final_tags.encode(torch.cat(weights).tolist()))
            if final is not None:
                body.append(self.eval_tags.encode(final.values))
        present = [
            (tag, float(v)) for tag, v in metrics.items() if "/" in tag and v is not None and math.isfinite(v)
        ]
        body.append(ScalarTags([t for t, _ in present]).encode([v for _, v in present]))
        self.events.write_raw(summary_event(steps, now, b"".join(body)))
        self.events.write_summary(session_end_pb(status, now), steps, now)
        self.events.flush()

    def fail(self, status: Status) -> None:
        """The session's end after a fault: in the event file, or in one of its own where none began."""
        if self.events is not None:
            self.finish(status, 0, {}, None)
        elif self.folder.is_dir():  # it failed before its event file began
            end_session(self.folder, self.hparams, status)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()

    @staticmethod
    def write_group(
        sinks: list[TensorBoardSink],
        first_step: int,
        losses: np.ndarray,
        eval_steps: np.ndarray,
        eval_values: np.ndarray,
        last_steps: np.ndarray,
        captured: Captured,
    ) -> None:
        """Write a chunk of captured steps into the event file of each run, for every run at once (one
        run, or the runs of one program, whose sinks log the same tags): sinks[r] gets run r's steps up
        to last_steps[r] (its divergence, or the chunk's end). losses [runs, steps] from first_step on;
        the evaluations at eval_steps, values [runs, evaluations, tags].

        Every kind of event is encoded for many runs in one block (trainer.tensorboard.events.frame_block); only the
        order of a run's events in its file is put together run by run. Runs go a slice at a time, so
        that the blocks of a chunk stay within about BLOCK_BYTES."""
        lead = sinks[0]
        per_run = 2 * max(1, len(captured.steps)) * (len(lead.step_block.body) + 32)
        size = max(1, BLOCK_BYTES // per_run)
        if len(sinks) > size:
            for a in range(0, len(sinks), size):
                b = a + size
                write_group(
                    sinks[a:b],
                    first_step,
                    losses[a:b],
                    eval_steps,
                    eval_values[a:b],
                    last_steps[a:b],
                    captured.part(a, b),
                )
            return
        steps, walls = captured.steps, captured.walls
        logged = np.flatnonzero(steps % lead.every == 0)
        logged_steps = steps[logged]
        block, ends = lead.step_block.encode_runs(
            logged_steps,
            walls[logged],
            np.concatenate([losses[:, logged_steps - first_step, None], captured.rows[:, logged]], axis=2),
        )
        # The evaluations: at the wall time of their step where it was captured.
        at = np.minimum(np.searchsorted(steps, eval_steps), max(len(steps) - 1, 0))
        matched = (steps[at] == eval_steps) if len(steps) else np.zeros(len(eval_steps), bool)
        eval_walls = np.where(matched, walls[at] if len(steps) else 0.0, time.time())
        eval_block, eval_ends = lead.eval_block.encode_runs(eval_steps, eval_walls, eval_values)
        hist_steps, hist_block, hist_ends, odd = _histogram_events(lead, captured)
        # The learning rate, where it changed since the last event that logged it.
        rates = captured.rates[:, logged]
        last_lr = np.array([np.nan if s.last_lr is None else s.last_lr for s in sinks])
        changed = rates != np.concatenate([last_lr[:, None], rates[:, :-1]], axis=1)
        for r, sink in enumerate(sinks):
            last = int(last_steps[r])
            mine = int(np.searchsorted(logged_steps, last, side="right"))
            own = block[r, : ends[mine - 1] if mine else 0].tobytes()
            extra: list[tuple[int, bytes]] = []  # (step, framed event) besides the steps' own
            for i in np.flatnonzero(changed[r, :mine]).tolist():
                step = int(logged_steps[i])
                event = summary_event(step, float(walls[logged[i]]), sink.lr_tags.encode([rates[r, i]]))
                extra.append((step, events.frame(event)))
            if mine:
                sink.last_lr = float(rates[r, mine - 1])
            extra += _slices(eval_steps, eval_block[r].tobytes(), eval_ends, last)
            histograms = _slices(hist_steps, hist_block[r].tobytes(), hist_ends, last)
            extra += [(step, odd.get((r, j), event)) for j, (step, event) in enumerate(histograms)]
            extra += [(step, events.frame(event)) for step, event in sink._take_pending()]
            sink.events.write_records(_in_step_order(own, ends[:mine], logged_steps[:mine], extra))
            sink.events.flush()


# The most bytes of events one write_group block holds at once (its transient memory is a few times this).
BLOCK_BYTES = 32 * 2**20


# The Sink protocol's group write, by the name the engines and tests call it.
write_group = TensorBoardSink.write_group


def _slices(steps: np.ndarray, data: bytes, ends: np.ndarray, last: int) -> list[tuple[int, bytes]]:
    """(step, event) of a run's block of events, up to step `last`."""
    starts = [0, *ends[:-1].tolist()]
    return [(s, data[a:b]) for s, a, b in zip(steps.tolist(), starts, ends.tolist()) if s <= last]


def _histogram_events(
    sink: TensorBoardSink, captured: Captured
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[tuple[int, int], bytes]]:
    """Every run's framed histogram events: their steps, the block [runs, bytes], where each event
    ends, and the events laid out otherwise (a tensor holding one value), by (run, histogram)."""
    runs, batch = captured.rates.shape[0], captured.histograms
    if batch is None or not sink.histograms_every:
        return np.zeros(0, np.int64), np.zeros((runs, 0), np.uint8), np.zeros(0, np.int64), {}
    marked = np.flatnonzero(captured.steps % sink.histograms_every == 0)
    steps, walls = captured.steps[marked], captured.walls[marked]
    numbers, limits, spread = histogram_numbers(batch, sink.histogram_sizes)
    bodies = sink.histogram_block.rows(numbers).reshape(runs, len(marked), -1)

    def fill(view: np.ndarray, start: int, stop: int) -> None:
        view[:] = bodies[:, start:stop]

    block, ends = events.frame_block(steps, walls, runs, bodies.shape[2], fill)
    odd = {}
    for h in np.flatnonzero(~spread).tolist():
        r, j = divmod(h, len(marked))
        body = _histogram_body(sink.histogram_block.tags, sink.histogram_sizes, batch, limits, h)
        odd[(r, j)] = events.frame(summary_event(int(steps[j]), float(walls[j]), body))
    return steps, block, ends, odd


def _in_step_order(
    block: bytes, ends: np.ndarray, steps: np.ndarray, extra: list[tuple[int, bytes]]
) -> bytes:
    """A run's events in step order: the steps' own block, with each other event after its step's
    own event."""
    extra.sort(key=lambda e: e[0])
    upto = np.zeros(len(extra), dtype=np.int64)
    if len(steps) and extra:
        cut = np.searchsorted(steps, [step for step, _ in extra], side="right")
        upto = np.where(cut > 0, ends[np.maximum(cut - 1, 0)], 0)
    parts, done = [], 0
    for (_, event), end in zip(extra, upto.tolist()):
        if end > done:
            parts.append(block[done:end])
            done = end
        parts.append(event)
    parts.append(block[done:])
    return b"".join(parts)
