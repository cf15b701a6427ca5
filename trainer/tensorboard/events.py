"""TensorBoard event files: the TFRecord framing with a C CRC32C, a fast encoder for scalar events,
and the one reader of the framing.

The files are the ones `SummaryWriter` writes (same naming, same records); what differs is the cost.
tensorboard's writer checksums every record in pure Python and builds one protobuf object per value;
here a step's scalars become one event, encoded from precomputed bytes.

The module is over 400 lines because it is one file format: the framing, its checksums, the
encoders that write it and the reader that checks it back must agree byte for byte, and are kept
side by side so that a change to one is seen beside the others.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2

from trainer.core import untrusted

try:  # a maintained C implementation; tensorboard's pure-Python one is the fallback
    from google_crc32c import value as _crc32c
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as _crc32c

_file_numbers = itertools.count()
_pack_u64 = struct.Struct("<Q").pack
_pack_u32 = struct.Struct("<I").pack
_pack_f32 = struct.Struct("<f").pack


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C that TFRecord framing uses."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One TFRecord: length, its checksum, the bytes, their checksum."""
    return _framed_length(len(record)) + record + _pack_u32(masked_crc32c(record))


@functools.lru_cache(maxsize=4096)
def _framed_length(length: int) -> bytes:
    # Records of a run mostly share a handful of lengths, so their headers are computed once.
    header = _pack_u64(length)
    return header + _pack_u32(masked_crc32c(header))


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [bytes((n,)) for n in range(0x80)]


def _value_prefix(tag: str) -> bytes:
    """The bytes of a Summary.value entry holding a simple_value, up to the value's four bytes."""
    raw = tag.encode()
    value = b"\x0a" + _varint(len(raw)) + raw + b"\x15"  # tag, then simple_value's key
    return b"\x0a" + _varint(len(value) + 4) + value


class ScalarTags:
    """Precomputed wire bytes for a fixed list of scalar tags (Summary.Value with simple_value)."""

    def __init__(self, tags: Sequence[str]):
        self.tags = list(tags)
        prefixes = [_value_prefix(tag) for tag in self.tags]
        # One struct packs the fixed prefixes and the floats between them in a single call.
        self._struct = struct.Struct("<" + "".join(f"{len(p)}sf" for p in prefixes))
        self._args: list = [x for p in prefixes for x in (p, 0.0)]

    def encode(self, values: Sequence[float]) -> bytes:
        """The Summary body for these values, in tag order."""
        self._args[1::2] = values
        return self._struct.pack(*self._args)


class ScalarBlock:
    """The framed scalar events of many steps for one fixed list of tags, encoded at once, for one
    run or for many runs that log the same steps.

    Between the values, every record of a block is the same bytes; so a chunk of steps is a NumPy
    array of records, built from a template row, with the wall times, steps and values written
    column-wise (see frame_block), and so are their checksums: the records differ from the template
    only in the wall time, the step and the values (see _Checksums).
    """

    def __init__(self, tags: Sequence[str]):
        self.tags = list(tags)
        prefixes = [_value_prefix(tag) for tag in self.tags]
        self.body = np.frombuffer(b"".join(p + b"\0\0\0\0" for p in prefixes), dtype=np.uint8)
        offsets, at = [], 0
        for p in prefixes:
            at += len(p)
            offsets.append(at)
            at += 4
        self.value_offsets = offsets
        self.value_columns = (np.array(offsets)[:, None] + np.arange(4)).ravel()

    def encode_runs(
        self, steps: np.ndarray, walls: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Records of many runs at once, for steps[i] (increasing) with values [runs, steps, tags]
        (one column per tag); see frame_block."""
        raw = np.ascontiguousarray(values, dtype="<f4").view(np.uint8)  # [runs, steps, 4 * tags]

        def fill(bodies: np.ndarray, start: int, stop: int) -> None:
            bodies[:] = self.body
            for i, at in enumerate(self.value_offsets):
                bodies[:, :, at : at + 4] = raw[:, start:stop, 4 * i : 4 * i + 4]

        return frame_block(steps, walls, values.shape[0], len(self.body), fill, self.value_columns)


def frame_block(
    steps: np.ndarray,
    walls: np.ndarray,
    runs: int,
    length: int,
    fill: Callable[[np.ndarray, int, int], None],
    varying: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Framed events holding a Summary body of `length` bytes each, for many runs at once, at
    steps[i] and walls[i], the same for every run (steps increase). fill(bodies, start, stop)
    writes the bodies of events start .. stop - 1 into bodies [runs, stop - start, length].
    Returns the records as [runs, bytes], laid out alike for every run, and where each event ends
    in a run's bytes.

    Where only the bytes at `varying` differ between bodies (a block of scalars: the values), the
    checksums are computed for all records at once (see _Checksums); otherwise record by record."""
    steps = np.asarray(steps, dtype=np.int64)
    walls = np.asarray(walls, dtype="<f8")
    count = len(steps)
    # An event's length changes only with its step's varint: a handful of spans per block.
    sizes = (steps > 0).astype(np.int64) + sum((steps >= 1 << (7 * k)).astype(np.int64) for k in range(1, 10))
    cuts = [0, *(np.flatnonzero(np.diff(sizes)) + 1).tolist(), count]
    parts, ends, done = [], [], 0
    for start, stop in zip(cuts, cuts[1:]):
        if stop == start:
            continue
        step_bytes, n = int(sizes[start]), stop - start
        head = b"\x09" + bytes(8) + (b"\x10" + bytes(step_bytes) if step_bytes else b"")
        event_length = len(head) + 1 + len(_varint(length)) + length
        prefix = _framed_length(event_length) + head + b"\x2a" + _varint(length)
        width = len(prefix) + length + 4
        records = np.empty((runs, n, width), dtype=np.uint8)
        records[:, :, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
        records[:, :, 13:21] = walls[start:stop].view(np.uint8).reshape(n, 8)
        for i in range(step_bytes):  # the step as a varint
            byte = (steps[start:stop] >> (7 * i)) & 0x7F
            records[:, :, 22 + i] = byte | (0x80 if i < step_bytes - 1 else 0)
        fill(records[:, :, len(prefix) : width - 4], start, stop)
        if varying is None:
            flat = records.tobytes()
            crcs = np.array(
                [_crc32c(flat[i + 12 : i + 12 + event_length]) for i in range(0, runs * n * width, width)],
                dtype=np.uint64,
            ).reshape(runs, n)
        else:
            # Bytes 12 + (1 .. 8) are the wall time, 12 + 10 .. the step: they differ too.
            places = np.concatenate([np.arange(13, 21), 22 + np.arange(step_bytes), len(prefix) + varying])
            crcs = _Checksums.of(records[0, 0, 12 : 12 + event_length].tobytes(), tuple(places - 12))(
                records[:, :, places]
            ).astype(np.uint64)
        masked = (((crcs >> 15) | (crcs << 17)) + 0xA282EAD8) & 0xFFFFFFFF
        records[:, :, -4:] = masked.astype("<u4").view(np.uint8).reshape(runs, n, 4)
        parts.append(records.reshape(runs, n * width))
        ends.append(done + width * np.arange(1, n + 1))
        done += n * width
    if not parts:
        return np.zeros((runs, 0), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    return (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)), np.concatenate(ends)


class _Checksums:
    """CRC32C of many messages of one length that differ only at a few places, all at once.

    A CRC is affine in its message's bits: crc(a ^ b) = crc(a) ^ crc(b) ^ crc(zeros). So a message
    that equals a template except at some places has the template's CRC, XOR one table entry per
    place: the effect of that place's byte there. The tables are 8 CRCs per place (one per bit)."""

    def __init__(self, template: bytes, places: tuple[int, ...]):
        length = len(template)
        base = np.frombuffer(template, dtype=np.uint8).copy()
        base[list(places)] = 0
        self.start = _crc32c(base.tobytes())
        zeros = _crc32c(bytes(length))
        bits = np.zeros((len(places), 8), dtype=np.uint32)
        for p, place in enumerate(places):
            for bit in range(8):
                message = bytearray(length)
                message[place] = 1 << bit
                bits[p, bit] = _crc32c(bytes(message)) ^ zeros
        values = np.arange(256)
        self.tables = np.zeros((len(places), 256), dtype=np.uint32)
        for bit in range(8):
            self.tables ^= np.where((values >> bit) & 1, bits[:, bit : bit + 1], 0).astype(np.uint32)
        self.rows = np.arange(len(places))

    @classmethod
    @functools.lru_cache(maxsize=64)
    def of(cls, template: bytes, places: tuple[int, ...]) -> _Checksums:
        return cls(template, places)

    def __call__(self, found: np.ndarray) -> np.ndarray:
        """The CRC of each message whose bytes at the places are found[..., place]."""
        return np.bitwise_xor.reduce(self.tables[self.rows, found], axis=-1) ^ np.uint32(self.start)


def summary_event(step: int, wall_time: float, summary_body: bytes) -> bytes:
    """An Event holding a Summary, encoded as protobuf would (fields 1, 2, 5; a zero step is omitted)."""
    return b"".join(
        (
            _WALL_TIME.pack(0x09, wall_time),
            b"\x10" + _varint(step) if step else b"",
            b"\x2a",
            _varint(len(summary_body)),
            summary_body,
        )
    )


_WALL_TIME = struct.Struct("<Bd")  # wall_time's key, then its value


def histogram_value(
    tag: str, lo: float, hi: float, count: float, total: float, squares: float, limits: bytes, buckets: bytes
) -> bytes:
    """A Summary.value entry holding a HistogramProto, encoded as protobuf would; `limits` and
    `buckets` are packed little-endian doubles (as NumPy's '<f8' gives them)."""
    histo = b"".join(
        (
            _HISTOGRAM_HEAD.pack(0x09, lo, 0x11, hi, 0x19, count, 0x21, total, 0x29, squares),
            b"\x32",
            _varint(len(limits)),
            limits,
            b"\x3a",
            _varint(len(buckets)),
            buckets,
        )
    )
    raw = tag.encode()
    value = b"".join((b"\x0a", _varint(len(raw)), raw, b"\x2a", _varint(len(histo)), histo))
    return b"\x0a" + _varint(len(value)) + value


_HISTOGRAM_HEAD = struct.Struct("<BdBdBdBdBd")  # min, max, num, sum, sum_squares with their keys


class HistogramBlock:
    """Summary bodies with one histogram per tag, for many steps at once.

    While every tag keeps its number of buckets, the bodies are the same bytes between their
    numbers; so a chunk's bodies are rows of a NumPy array built from a template row, with all
    numbers written in one assignment (as ScalarBlock does for scalars).
    """

    def __init__(self, tags: Sequence[str], bins: Sequence[int]):
        self.tags, self.bins = list(tags), list(bins)
        parts, heads, limits, counts = [], [], [], []
        at = 0
        for tag, b in zip(self.tags, self.bins):
            value = histogram_value(tag, 0.0, 0.0, 0.0, 0.0, 0.0, bytes(8 * b), bytes(8 * b))
            listed = 1 + len(_varint(8 * b))  # a packed list's key and length
            histo = at + len(value) - (_HISTOGRAM_HEAD.size + 2 * (listed + 8 * b))
            heads.append([histo + 1 + 9 * k for k in range(5)])  # min, max, num, sum, sum_squares
            limits += [histo + _HISTOGRAM_HEAD.size + listed + 8 * k for k in range(b)]
            counts += [histo + _HISTOGRAM_HEAD.size + 2 * listed + 8 * (b + k) for k in range(b)]
            parts.append(value)
            at += len(value)
        self.template = np.frombuffer(b"".join(parts), dtype=np.uint8)
        offsets = np.array([h[k] for k in range(5) for h in heads] + limits + counts, dtype=np.int64)
        self.byte_columns = (offsets[:, None] + np.arange(8)).ravel()

    def rows(self, numbers: np.ndarray) -> np.ndarray:
        """A body per row of `numbers`, as the rows of a uint8 array: every tag's min, then every
        tag's max, count, sum and sum of squares, then all tags' bucket limits, then all their
        bucket counts."""
        count = len(numbers)
        rows = np.tile(self.template, (count, 1))
        rows[:, self.byte_columns] = (
            np.ascontiguousarray(numbers, dtype="<f8").view(np.uint8).reshape(count, -1)
        )
        return rows


def event_file_bytes(summaries: Sequence[tuple[summary_pb2.Summary, int]], wall_time: float) -> bytes:
    """A whole event file's content: the version record, then one event per (summary, step)."""
    records = [event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2")]
    records += [event_pb2.Event(summary=s, step=step, wall_time=wall_time) for s, step in summaries]
    return b"".join(frame(r.SerializeToString()) for r in records)


class EventFile:
    """An event file in a run folder, written synchronously through one buffer."""

    def __init__(self, folder: str | os.PathLike, suffix: str = ""):
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
            f"{next(_file_numbers)}{suffix}"
        )
        self.path = Path(folder) / name
        try:
            self._file = open(self.path, "wb")
        except FileNotFoundError:  # a run folder is made before its event file: seldom taken
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb")
        self._pending = bytearray()
        self.write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def write_raw(self, event: bytes) -> None:
        self._pending += frame(event)

    def write_records(self, records: bytes) -> None:
        """Append records that are framed already (see ScalarBlock)."""
        self._pending += records

    def write_event(self, event: event_pb2.Event) -> None:
        self.write_raw(event.SerializeToString())

    def write_summary(self, summary: summary_pb2.Summary, step: int, wall_time: float | None = None) -> None:
        self.write_event(
            event_pb2.Event(
                summary=summary, step=step, wall_time=time.time() if wall_time is None else wall_time
            )
        )

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


# --- reading ----------------------------------------------------------------------------------
# The one reader of the framing: verification, repair and the curve reader all walk records here.

EVENTS_PREFIX = "events.out.tfevents."
_RECORD_HEADER = struct.Struct("<QI")  # length, its masked CRC
_RECORD_CRC = struct.Struct("<I")


def event_files(folder: Path) -> list[str]:
    """The names of a run folder's event files, in order; none where the folder cannot be listed."""
    try:
        return sorted(e.name for e in os.scandir(folder) if e.name.startswith(EVENTS_PREFIX))
    except OSError:
        return []


class Records:
    """The whole records of an event file's bytes, as (start, end) of each event's bytes, in order.

    Iteration stops at a record cut short (a writer killed mid-write) and, with `verify`, at the
    first bad checksum. Afterwards `done` is how many leading bytes were whole records and `problem`
    says why the rest is not (None when the whole file was read)."""

    def __init__(self, data: bytes | memoryview, verify: bool = False):
        self.data, self.verify = data, verify
        self.done, self.problem = 0, None

    def __iter__(self) -> Iterator[tuple[int, int]]:
        data, size = self.data, len(self.data)
        while self.done < size:
            at = self.done
            if size - at < 12:
                self.problem = f"ends inside a record header at byte {at:,}"
                return
            length, length_crc = _RECORD_HEADER.unpack_from(data, at)
            if self.verify and masked_crc32c(bytes(data[at : at + 8])) != length_crc:
                self.problem = f"the record at byte {at:,} has a bad length checksum"
                return
            start, end = at + 12, at + 12 + length
            if end + 4 > size:
                self.problem = f"is cut short inside the record at byte {at:,}"
                return
            if self.verify and masked_crc32c(bytes(data[start:end])) != _RECORD_CRC.unpack_from(data, end)[0]:
                self.problem = f"the record at byte {at:,} has a bad checksum"
                return
            self.done = end + 4
            yield start, end


# Bytes read from an event file at a time: a reader holds a block and the event it is in, whatever
# the file's size. No event this tool or TensorBoard writes comes near MAX_EVENT (a histogram is a
# few kilobytes, an image a hook logs a few megabytes); a length past it is a damaged header.
BLOCK = 1 << 20
MAX_EVENT = 256 << 20


class FileRecords:
    """The whole records of an event file, read a block at a time, as (block, start, end): each
    event's bytes are block[start:end]. Like Records: iteration stops at a record cut short and,
    with `verify`, at a bad checksum; then `done` and `problem` say where and why.

    The file is opened as untrusted data (trainer.core.untrusted: a plain file, never through a
    symlink); a record whose header claims more bytes than the file holds is cut short, and nothing
    is read for it: memory stays within a block and one event, whatever a header claims."""

    def __init__(self, path: Path, verify: bool = False, block: int = BLOCK):
        self.path, self.verify, self.block = path, verify, block
        self.done, self.problem = 0, None

    def __iter__(self) -> Iterator[tuple[bytes, int, int]]:
        try:
            f = untrusted.open_plain(self.path)
        except untrusted.Refused as refused:
            self.problem = str(refused)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            buffer, base, at = b"", 0, 0  # base: the file offset of buffer[0]; at: the next record in buffer
            while True:
                if len(buffer) - at < 12:
                    buffer, base, at = buffer[at:] + f.read(self.block), base + at, 0
                    if len(buffer) == 0:
                        return
                    if len(buffer) < 12:
                        self.problem = f"ends inside a record header at byte {base:,}"
                        return
                length, length_crc = _RECORD_HEADER.unpack_from(buffer, at)
                if self.verify and masked_crc32c(buffer[at : at + 8]) != length_crc:
                    self.problem = f"the record at byte {base + at:,} has a bad length checksum"
                    return
                if length > MAX_EVENT or base + at + 16 + length > size:
                    self.problem = f"is cut short inside the record at byte {base + at:,}"
                    return
                need = at + 16 + length
                if len(buffer) < need:
                    more = f.read(max(self.block, need - len(buffer)))
                    buffer, base, at = buffer[at:] + more, base + at, 0
                    need = 16 + length
                    if len(buffer) < need:  # the file shrank while it was read
                        self.problem = f"is cut short inside the record at byte {base:,}"
                        return
                start, end = at + 12, at + 12 + length
                if (
                    self.verify
                    and masked_crc32c(buffer[start:end]) != _RECORD_CRC.unpack_from(buffer, end)[0]
                ):
                    self.problem = f"the record at byte {base + at:,} has a bad checksum"
                    return
                at = end + 4
                self.done = base + at
                yield buffer, start, end


def valid_length(path: Path) -> tuple[int, str | None]:
    """How many leading bytes of an event file are whole records with valid CRCs, and why the
    rest is not (None when the whole file is)."""
    records = FileRecords(path, verify=True)
    for _ in records:
        pass
    return records.done, records.problem
