"""Checkpoints during a run, and the state a run resumes from: everything it needs to go on as if
it had never stopped.

A checkpoint is taken at the end of a chunk of steps (trainer.training.loop), when everything the
run logged up to there is in its event file. It holds the model's, the optimizer's and the
schedule's state, every random generator in play (torch's on the CPU and on each GPU, NumPy's,
Python's), the next step, the evaluations so far, the watched metric's best (with its weights) and
the logging's own state. The batches are no state of their own: they are drawn from the run's
seed, and a resumed run draws them again and skips those it has done (trainer.training.batches).
So a resumed run computes, and logs, the same values as a run that was never stopped, bit for bit
on the CPU.

A checkpoint is read with torch.load(weights_only=True): tensors and plain values only, so that a
checkpoint in a log folder from elsewhere cannot run code.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.training.sink import Evaluation

# The layout of a checkpoint; one of another layout is not resumed from.
FORMAT = 1
# log.checkpoint_every: auto takes a checkpoint once this many seconds have passed since the last,
# and never more often than keeps checkpoints within COST_SHARE of the run's time (measured: the
# time the last checkpoint took, times 1 / COST_SHARE).
AUTO_SECONDS = 10.0
COST_SHARE = 0.02


@dataclass
class Resumed:
    """A run's state at a checkpoint: where the loop goes on from."""

    step: int  # the steps done; the next one to train
    model: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: dict[str, Any] | None
    rng: dict[str, Any]
    history: list[Evaluation]
    watch: dict[str, Any] | None
    sink: dict[str, Any]
    seconds: float  # the run's time up to the checkpoint


class Checkpoints:
    """When a run takes a checkpoint, and where it goes (`save` gets its bytes): every `every`
    steps, or by wall time ('auto', see AUTO_SECONDS); 0 takes none."""

    def __init__(
        self,
        every: int | str,
        save: Callable[[bytes], None],
        identity: dict[str, Any],
        seconds: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.every = every
        self.save = save
        self.identity = identity  # what the run is (its configuration's and code's digests)
        self.seconds = seconds  # the run's time so far, its earlier attempts' included
        self.clock = clock
        self.last = clock()
        self.cost = 0.0  # the last checkpoint's own time

    @property
    def on(self) -> bool:
        return self.every != 0

    def ends_chunk(self, steps_done: int) -> bool:
        """Whether a chunk of steps must end here, for a checkpoint every N steps."""
        return isinstance(self.every, int) and self.every > 0 and steps_done % self.every == 0

    def due(self, steps_done: int) -> bool:
        if isinstance(self.every, int):
            return self.ends_chunk(steps_done)
        return self.clock() - self.last >= max(AUTO_SECONDS, self.cost / COST_SHARE)

    def take(self, state: dict[str, Any]) -> None:
        began = self.clock()
        state["seconds"] = self.seconds()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.save(buffer.getvalue())
        self.last = self.clock()
        self.cost = self.last - began


def state(
    steps_done: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    history: list[Evaluation],
    watch: dict[str, Any] | None,
    sink: dict[str, Any],
    identity: dict[str, Any],
) -> dict[str, Any]:
    """What a checkpoint holds after `steps_done` steps (torch.save copies tensors to the CPU)."""
    return {
        "format": FORMAT,
        "identity": identity,
        "step": steps_done,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict() if schedule is not None else None,
        "rng": random_state(),
        "history": [[ev.step, [float(v) for v in ev.values]] for ev in history],
        "watch": watch,
        "sink": sink,
    }


def random_state() -> dict[str, Any]:
    """Every random generator's state that a run's code may draw from, as tensors and numbers."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }


def set_random_state(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])
    kind, keys, position, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = saved["python"]
    random.setstate((version, tuple(internal), gauss_next))


def read(data: bytes) -> dict[str, Any]:
    """A checkpoint's content; ValueError where the bytes are not a checkpoint of this layout."""
    try:
        found = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"it cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise ValueError("it is not a checkpoint of this version's layout")
    return found


def resumed(found: dict[str, Any]) -> Resumed:
    """The state to resume from, of a checkpoint's content (see read)."""
    return Resumed(
        found["step"],
        found["model"],
        found["optimizer"],
        found["schedule"],
        found["rng"],
        [Evaluation(step, values) for step, values in found["history"]],
        found["watch"],
        found["sink"],
        float(found["seconds"]),
    )
