"""The sinks a run writes through, by the names log.sinks gives (trainer.spec.schema.SINK_KINDS):
TensorBoard's event file, and metrics.jsonl beside it. A new sink is one module here, one line in
SINKS and its name in SINK_KINDS; several run side by side through a FanOut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.sinks.fanout import FanOut
from trainer.sinks.jsonl import JsonLinesSink
from trainer.spec.schema import LogSettings
from trainer.tensorboard.sink import TensorBoardSink
from trainer.training.sink import Sink

# name -> the sink's class, built as cls(run folder, log settings, hparams, config.yaml's text)
SINKS: dict[str, Any] = {"tensorboard": TensorBoardSink, "jsonl": JsonLinesSink}
# Where log.sinks is left unset.
DEFAULT = ("tensorboard",)


def build_sink(settings: LogSettings, folder: Path, hparams: dict[str, Any], config_text: str) -> Sink:
    """The sink of a run writing into `folder`: log.sinks' own, or a FanOut of several."""
    made = [SINKS[name](folder, settings, hparams, config_text) for name in settings.sinks or DEFAULT]
    return made[0] if len(made) == 1 else FanOut(made)
