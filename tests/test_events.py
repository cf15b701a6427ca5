"""Our event encoding against protobuf's and tensorboard's own: same bytes, same checksums."""

from __future__ import annotations

import itertools
import math
import struct

import numpy as np
import pytest
import torch
from google_crc32c import value as crc32c
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_crc

from tests.conftest import read_events, scalars
from trainer.tensorboard import events


@pytest.mark.parametrize(
    "tags, values",
    [
        pytest.param(["loss"], [0.5], id="one"),
        pytest.param(["loss", "w/0", "w/1", "g/0", "g/1"], [1.0, -2.5, 3e-8, math.inf, 0.0], id="several"),
        pytest.param(["a" * 200], [float("nan")], id="long-tag-nan"),
        pytest.param(["ünïcode/tag"], [7.0], id="unicode"),
    ],
)
def test_scalar_encoding_matches_protobuf(tags, values):
    body = events.ScalarTags(tags).encode(values)
    expected = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, values)]
    )
    assert body == expected.SerializeToString()


@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**20, 2**40])
def test_event_encoding_matches_protobuf(step):
    body = events.ScalarTags(["loss"]).encode([1.5])
    encoded = events.summary_event(step, 1234.5, body)
    expected = event_pb2.Event(wall_time=1234.5, step=step, summary=summary_pb2.Summary.FromString(body))
    assert encoded == expected.SerializeToString()


def test_histogram_encoding_parses_to_the_same_histogram():
    value = events.histogram_value(
        "hist/w/weight",
        -1.0,
        3.0,
        4,
        2.0,
        14.0,
        struct.pack("<3d", 0.0, 1.0, 3.0),
        struct.pack("<3d", 1.0, 2.0, 1.0),
    )
    summary = summary_pb2.Summary.FromString(value)
    histo = summary.value[0].histo
    assert summary.value[0].tag == "hist/w/weight"
    assert (histo.min, histo.max, histo.num, histo.sum, histo.sum_squares) == (-1.0, 3.0, 4, 2.0, 14.0)
    assert list(histo.bucket_limit) == [0.0, 1.0, 3.0] and list(histo.bucket) == [1.0, 2.0, 1.0]


@pytest.mark.parametrize("bins", [[1], [3, 30], [30, 200, 2]], ids=["one-bucket", "two", "long-lists"])
def test_a_block_of_histogram_bodies_is_the_same_bytes_as_one_histogram_at_a_time(bins):
    import numpy as np

    tags = [f"hist/w/p{i}" for i in range(len(bins))]
    rng = np.random.default_rng(1)
    steps, n, total = 4, len(bins), sum(bins)
    numbers = np.hstack(
        [
            rng.standard_normal((steps, 5 * n)),
            rng.standard_normal((steps, total)),
            rng.integers(0, 9, (steps, total)).astype(float),
        ]
    )
    bodies = [row.tobytes() for row in events.HistogramBlock(tags, bins).rows(numbers)]
    starts = [sum(bins[:i]) for i in range(n)]
    for row, body in zip(numbers, bodies):
        head, limits, counts = row[: 5 * n].reshape(5, n), row[5 * n : 5 * n + total], row[5 * n + total :]
        expected = b"".join(
            events.histogram_value(
                tag,
                *head[:, i],
                limits[a : a + b].astype("<f8").tobytes(),
                counts[a : a + b].astype("<f8").tobytes(),
            )
            for i, (tag, a, b) in enumerate(zip(tags, starts, bins))
        )
        assert body == expected
        assert summary_pb2.Summary.FromString(body).value[n - 1].histo.bucket_limit == list(
            limits[starts[-1] :]
        )


@pytest.mark.parametrize("data", [b"", b"x", b"hello world" * 50, bytes(range(256))])
def test_checksum_matches_tensorboard(data):
    assert events.masked_crc32c(data) == tensorboard_crc(data)


def test_event_file_reads_back_with_tensorboard(tmp_path):
    file = events.EventFile(tmp_path)
    tags = events.ScalarTags(["loss", "w/0"])
    for step in range(5):
        file.write_raw(events.summary_event(step, 100.0 + step, tags.encode([step * 0.5, -step])))
    file.close()
    acc = read_events(tmp_path)
    assert [e.value for e in acc.Scalars("loss")] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert [e.step for e in acc.Scalars("w/0")] == [0, 1, 2, 3, 4]
    assert [e.wall_time for e in acc.Scalars("w/0")] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert file.path.name.startswith("events.out.tfevents.")


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([0, 1, 2, 3], id="from-zero"),
        pytest.param([120, 126, 127, 128, 129, 200], id="across-a-varint-size"),
        pytest.param([5, 16383, 16384, 2**21, 2**35], id="large"),
    ],
)
def test_a_block_of_step_events_is_the_same_bytes_as_one_event_at_a_time(steps):
    import numpy as np

    tags = ["loss", "w/0", "w/1", "g/0", "g/1"]
    walls = np.linspace(1000.0, 1010.0, len(steps))
    values = np.random.default_rng(0).standard_normal((len(steps), len(tags)))
    records, ends = events.ScalarBlock(tags).encode_runs(np.array(steps), walls, values[None])
    data = records[0].tobytes()
    one_by_one = [
        events.frame(events.summary_event(s, float(w), events.ScalarTags(tags).encode(v.tolist())))
        for s, w, v in zip(steps, walls, values)
    ]
    assert data == b"".join(one_by_one)
    assert ends.tolist() == list(itertools.accumulate(len(r) for r in one_by_one))


def test_hparams_records_match_what_tensorboards_own_metadata_module_makes():
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    from trainer.tensorboard import hparams

    assert (hparams.PLUGIN_NAME, hparams.PLUGIN_DATA_VERSION) == (
        metadata.PLUGIN_NAME,
        metadata.PLUGIN_DATA_VERSION,
    )
    assert (hparams.EXPERIMENT_TAG, hparams.SESSION_START_INFO_TAG, hparams.SESSION_END_INFO_TAG) == (
        metadata.EXPERIMENT_TAG,
        metadata.SESSION_START_INFO_TAG,
        metadata.SESSION_END_INFO_TAG,
    )
    assert hparams.NULL_TENSOR.SerializeToString() == metadata.NULL_TENSOR.SerializeToString()
    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=2, end_time_secs=12.5)
    )
    assert (
        hparams.summary_metadata(data).SerializeToString()
        == metadata.create_summary_metadata(data).SerializeToString()
    )


def test_table_checksums_equal_the_crc32c_of_each_message():
    rng = np.random.default_rng(0)
    template = rng.integers(0, 256, 200, dtype=np.uint8)
    places = (0, 3, 17, 18, 19, 150, 199)
    checksums = events._Checksums.of(template.tobytes(), places)
    found = rng.integers(0, 256, (50, len(places)), dtype=np.uint8)
    messages = np.tile(template, (50, 1))
    messages[:, list(places)] = found
    expected = [crc32c(m.tobytes()) for m in messages]
    assert checksums(found).tolist() == expected


def _group_sinks(tmp_path, runs):
    from trainer.spec.schema import LogSettings
    from trainer.tensorboard.sink import TensorBoardSink

    sinks = []
    for r in range(runs):
        sink = TensorBoardSink(
            tmp_path / f"run{r}", LogSettings(every=2, histograms_every=3), {"lr": 0.1}, ""
        )
        model = torch.nn.Linear(3, 1, bias=False)
        sink.begin(model, None, ["train/loss", "val/loss"], capturing=False)
        sinks.append(sink)
    return sinks


@pytest.mark.parametrize("sliced", [False, True], ids=["one-block", "a-run-per-block"])
def test_a_group_of_runs_writes_each_run_as_it_would_alone(tmp_path, monkeypatch, sliced):
    """Runs written together (trainer.training.batched) get the bytes each would get written alone: their
    own losses, rates, evaluations and histograms, each cut at its own last step, including a
    histogram of a tensor holding one value (laid out apart) and a rate that changes mid-chunk."""
    from trainer.tensorboard import sink as sink_module
    from trainer.tensorboard.sink import write_group
    from trainer.training.capture import Layout
    from trainer.training.sink import Captured

    if sliced:
        monkeypatch.setattr(sink_module, "BLOCK_BYTES", 1)

    runs, steps = 3, np.arange(0, 12)
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(runs, len(steps), 3)).astype(np.float32)
    grads = rng.normal(size=(runs, len(steps), 3)).astype(np.float32)
    grads[1, 3] = 0.5  # run 1's gradient holds one value at histogram step 3
    layout = Layout([3], [])
    rows = layout.rows(weights.reshape(-1, 3), grads.reshape(-1, 3)).reshape(runs, len(steps), -1)
    marked = steps % 3 == 0
    values = np.concatenate([weights, grads], axis=2)
    histograms = layout.histograms(values[:, marked].reshape(-1, 6))
    rates = np.array([[0.1] * 12, [0.2] * 6 + [0.1] * 6, [0.3] * 12])
    walls = 1000.0 + steps * 0.5
    losses = rng.normal(size=(runs, len(steps)))
    eval_steps = np.array([0, 5, 10])
    eval_values = rng.normal(size=(runs, 3, 2))
    last = np.array([11, 7, 11])  # run 1 diverged at step 7
    together = _group_sinks(tmp_path / "together", runs)
    begun = [sink.events.path.stat().st_size for sink in together]
    write_group(
        together, 0, losses, eval_steps, eval_values, last, Captured(steps, walls, rates, rows, histograms)
    )
    for r in range(runs):
        (alone,) = _group_sinks(tmp_path / f"alone{r}", 1)
        start = alone.events.path.stat().st_size
        per_run = histograms.part(r * marked.sum(), (r + 1) * marked.sum())
        captured = Captured(steps, walls, rates[r : r + 1], rows[r : r + 1], per_run)
        write_group(
            [alone], 0, losses[r : r + 1], eval_steps, eval_values[r : r + 1], last[r : r + 1], captured
        )
        alone.close()
        together[r].close()
        assert together[r].events.path.read_bytes()[begun[r] :] == alone.events.path.read_bytes()[start:]
    for r, sink in enumerate(together):
        found = scalars(sink.folder)
        assert sorted(found["loss"]) == [s for s in range(0, last[r] + 1, 2)]
        assert found["loss"] == {s: pytest.approx(losses[r, s], rel=1e-6) for s in range(0, last[r] + 1, 2)}
        assert sorted(found["val/loss"]) == [s for s in eval_steps if s <= last[r]]
        assert sorted(found["lr"]) == ([0, 6] if r == 1 else [0])
        acc = read_events(sink.folder)
        held = [e.step for e in acc.Histograms("hist/g/weight")]
        assert held == [s for s in steps[marked] if s <= last[r]]
    one_value = read_events(together[1].folder).Histograms("hist/g/weight")[1].histogram_value
    assert (one_value.min, one_value.max, list(one_value.bucket)) == (0.5, 0.5, [3.0])
