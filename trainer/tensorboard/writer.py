"""A real SummaryWriter for the user's own logging, writing into the run's own event file.

`RunWriter` is torch's `SummaryWriter` with one part swapped: its file writer keeps each event in a
list instead of a file of its own. The run's sink writes them into the run's one event file, in
step order with the trainer's own events, at its next flush. So everything a hook logs (images,
figures, text, histograms) is in the same TensorBoard run, survives resume and merge with it, and
costs nothing between evaluations.
"""

from __future__ import annotations

import time
from typing import Any

from tensorboard.compat.proto import event_pb2
from torch.utils.tensorboard import SummaryWriter


class _EventList:
    """FileWriter's interface, keeping (step, serialized event) pairs in `pending`."""

    def __init__(self, log_dir: str, pending: list[tuple[int, bytes]] | None):
        self.log_dir, self.pending = log_dir, pending

    def get_logdir(self) -> str:
        return self.log_dir

    def add_event(
        self, event: event_pb2.Event, step: int | None = None, walltime: float | None = None
    ) -> None:
        event.wall_time = time.time() if walltime is None else walltime
        if step is not None:
            event.step = int(step)
        if self.pending is not None:
            self.pending.append((event.step, event.SerializeToString()))

    def add_summary(
        self, summary: Any, global_step: int | None = None, walltime: float | None = None
    ) -> None:
        self.add_event(event_pb2.Event(summary=summary), global_step, walltime)

    def add_graph(self, graph_profile: Any, walltime: float | None = None) -> None:
        graph, stepstats = graph_profile
        self.add_event(event_pb2.Event(graph_def=graph.SerializeToString()), None, walltime)
        metadata = event_pb2.TaggedRunMetadata(tag="step1", run_metadata=stepstats.SerializeToString())
        self.add_event(event_pb2.Event(tagged_run_metadata=metadata), None, walltime)

    def add_onnx_graph(self, graph: Any, walltime: float | None = None) -> None:
        self.add_event(event_pb2.Event(graph_def=graph.SerializeToString()), None, walltime)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def reopen(self) -> None:
        pass


class RunWriter(SummaryWriter):
    """torch.utils.tensorboard.SummaryWriter writing into a run's own event file (see the module
    docstring). `pending` None discards what is written (a run with logging off)."""

    def __init__(self, log_dir: str, pending: list[tuple[int, bytes]] | None):
        self._pending = pending
        super().__init__(log_dir=log_dir)

    def _get_file_writer(self) -> _EventList:
        if self.file_writer is None:
            self.file_writer = _EventList(self.log_dir, self._pending)
            self.all_writers = {self.log_dir: self.file_writer}
        return self.file_writer
