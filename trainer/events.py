"""TensorBoard event files: the TFRecord framing with a C CRC32C, and a fast encoder for scalar events.

The files are the ones `SummaryWriter` writes (same naming, same records); what differs is the cost.
tensorboard's writer checksums every record in pure Python and builds one protobuf object per value;
here a step's scalars become one event, encoded from precomputed bytes.
"""
from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path
from typing import Sequence

from tensorboard.compat.proto import event_pb2, summary_pb2

try:  # a maintained C implementation; tensorboard's pure-Python one is the fallback
    from google_crc32c import value as _crc32c
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as _crc32c

_file_numbers = itertools.count()
_pack_u64 = struct.Struct("<Q").pack
_pack_u32 = struct.Struct("<I").pack
_pack_f32 = struct.Struct("<f").pack
_pack_f64 = struct.Struct("<d").pack


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C that TFRecord framing uses."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One TFRecord: length, its checksum, the bytes, their checksum."""
    header = _pack_u64(len(record))
    return header + _pack_u32(masked_crc32c(header)) + record + _pack_u32(masked_crc32c(record))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class ScalarTags:
    """Precomputed wire bytes for a fixed list of scalar tags (Summary.Value with simple_value)."""

    def __init__(self, tags: Sequence[str]):
        self.tags = list(tags)
        self._prefixes = []
        for tag in self.tags:
            raw = tag.encode()
            value = b"\x0a" + _varint(len(raw)) + raw + b"\x15"          # tag, then simple_value's key
            self._prefixes.append(b"\x0a" + _varint(len(value) + 4) + value)  # Summary.value entry

    def encode(self, values: Sequence[float]) -> bytes:
        """The Summary body for these values, in tag order."""
        return b"".join([p + _pack_f32(v) for p, v in zip(self._prefixes, values)])


def scalar_event(step: int, wall_time: float, summary_body: bytes) -> bytes:
    """An Event holding a Summary, encoded as protobuf would (fields 1, 2, 5)."""
    return (b"\x09" + _pack_f64(wall_time) + b"\x10" + _varint(step & 0xFFFFFFFFFFFFFFFF)
            + b"\x2a" + _varint(len(summary_body)) + summary_body)


class EventFile:
    """An event file in a run folder, written synchronously through one buffer."""

    def __init__(self, folder: str | os.PathLike, suffix: str = ""):
        name = "events.out.tfevents.%010d.%s.%s.%s%s" % (
            time.time(), socket.gethostname(), os.getpid(), next(_file_numbers), suffix)
        self.path = Path(folder) / name
        self._file = open(self.path, "wb")
        self._pending = bytearray()
        self.write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def write_raw(self, event: bytes) -> None:
        self._pending += frame(event)

    def write_event(self, event: event_pb2.Event) -> None:
        self.write_raw(event.SerializeToString())

    def write_summary(self, summary: summary_pb2.Summary, step: int, wall_time: float | None = None) -> None:
        self.write_event(event_pb2.Event(summary=summary, step=step,
                                         wall_time=time.time() if wall_time is None else wall_time))

    def flush(self) -> None:
        if self._pending:
            self._file.write(self._pending)
            self._pending.clear()
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            try:
                self.flush()
            finally:
                self._file.close()
