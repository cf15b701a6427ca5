"""The two ways of capturing weights and gradients agree, and their histograms match torch.histc."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import read_events
from trainer.spec.schema import LogSettings
from trainer.tensorboard.sink import TensorBoardSink
from trainer.training.capture import DeviceCapture, HostCapture


def stats(batch, h: int, i: int) -> list[float]:
    """Tensor i's histogram at histogram step h: min, max, sum, sum of squares, counts."""
    a, b = batch.starts[i], batch.starts[i] + batch.bins[i]
    return [batch.lo[h, i], batch.hi[h, i], batch.sums[h, i], batch.squares[h, i], *batch.counts[h, a:b]]


def _model_with_grads(seed: int) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    model(torch.randn(7, 6)).pow(2).sum().backward()
    return list(model.parameters())


def _steps(capture, params, histogram_every=2, steps=5):
    for step in range(steps):
        capture.capture(step % histogram_every == 0)
        with torch.no_grad():
            for p in params:
                p.add_(0.1 * p.grad)
                p.grad = p.grad * 0.5  # a new gradient tensor each step, as backward() makes
    return capture.take()


def test_host_and_device_capture_agree():
    params = _model_with_grads(0)
    small, large = [p for p in params if p.numel() <= 5], [p for p in params if p.numel() > 5]
    host_rows, host_hist = _steps(HostCapture(small, large), params)
    params2 = _model_with_grads(0)
    small2, large2 = [p for p in params2 if p.numel() <= 5], [p for p in params2 if p.numel() > 5]
    device_rows, device_hist = _steps(DeviceCapture(small2, large2), params2)
    assert len(host_rows) == 5 and len(host_hist) == 3
    for a, b in zip(host_rows, device_rows):
        assert a == pytest.approx(b, rel=1e-5)
    for h in range(3):
        for i in range(2 * len(params)):
            assert stats(host_hist, h, i) == pytest.approx(stats(device_hist, h, i), rel=1e-4, abs=1e-6)


def test_rows_hold_small_elements_and_large_norms_before_the_update():
    params = _model_with_grads(1)
    small, large = [p for p in params if p.numel() <= 5], [p for p in params if p.numel() > 5]
    weights = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    capture = HostCapture(small, large)
    capture.capture(False)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)  # the optimizer's in-place update after the capture
    (row,), _ = capture.take()
    by_param = dict(zip(map(id, params), zip(weights, grads)))
    expected = [float(v) for p in small for v in by_param[id(p)][0].view(-1)]
    expected += [float(by_param[id(p)][0].norm()) for p in large]
    expected += [float(v) for p in small for v in by_param[id(p)][1].view(-1)]
    expected += [float(by_param[id(p)][1].norm()) for p in large]
    assert row == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("capture_kind", [HostCapture, DeviceCapture])
def test_histogram_counts_match_torch_histc(capture_kind):
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.randn(200))
    p.grad = torch.randn(200)
    capture = capture_kind([], [p])
    capture.capture(True)
    _, batch = capture.take()
    for i, values in ((0, p.detach()), (1, p.grad)):
        lo, hi, total, squares, *counts = stats(batch, 0, i)
        assert (lo, hi) == (pytest.approx(float(values.min())), pytest.approx(float(values.max())))
        assert total == pytest.approx(float(values.sum()), abs=1e-4)
        assert squares == pytest.approx(float((values * values).sum()), rel=1e-5)
        assert len(counts) == 30 and sum(counts) == 200
        assert counts == pytest.approx(torch.histc(values, bins=30, min=lo, max=hi).tolist(), abs=1)


@pytest.mark.parametrize("capture_kind", [HostCapture, DeviceCapture])
def test_non_finite_values_do_not_stop_logging(capture_kind):
    p = torch.nn.Parameter(torch.tensor([1.0, math.nan, math.inf, -2.0]))
    p.grad = torch.tensor([0.0, 0.0, 0.0, 0.0])
    capture = capture_kind([p], [])
    capture.capture(True)
    rows, batch = capture.take()
    assert math.isnan(rows[0][1]) and sum(stats(batch, 0, 0)[4:]) == 4 and sum(stats(batch, 0, 1)[4:]) == 4


def test_histograms_of_constant_and_varied_tensors_read_back_from_the_event_file(tmp_path):
    """Most histogram steps are encoded as one block; a step where a tensor holds a single value
    gives that tensor one bucket instead, and both read back as TensorBoard shows them."""
    torch.manual_seed(3)
    model = torch.nn.Linear(40, 1)
    with torch.no_grad():
        model.weight.fill_(0.5)  # one value until the first update
    sink = TensorBoardSink(tmp_path, LogSettings(every=1, histograms_every=1), {"lr": 0.1}, "text")
    sink.begin(model, torch.optim.SGD(model.parameters(), lr=0.1), ["train/loss"])
    grads = [torch.randn(1, 40), torch.zeros(1, 40), torch.randn(1, 40)]
    for step, grad in enumerate(grads):
        model.weight.grad, model.bias.grad = grad, torch.randn(1)
        sink.capture(step)
        with torch.no_grad():
            model.weight.add_(torch.randn(1, 40))
    sink.write(0, [1.0, 2.0, 3.0], [], 2)
    sink.close()
    acc = read_events(tmp_path)
    weights = {h.step: h.histogram_value for h in acc.Histograms("hist/w/weight")}
    gradients = {h.step: h.histogram_value for h in acc.Histograms("hist/g/weight")}
    assert (list(weights[0].bucket_limit), list(weights[0].bucket)) == ([0.5], [40.0])
    assert (list(gradients[1].bucket_limit), list(gradients[1].bucket)) == ([0.0], [40.0])
    for histogram, values in (
        (weights[1], None),
        (weights[2], None),
        (gradients[0], grads[0]),
        (gradients[2], grads[2]),
    ):
        assert len(histogram.bucket) == 30 and sum(histogram.bucket) == 40 and histogram.num == 40
        assert list(histogram.bucket_limit) == sorted(histogram.bucket_limit)
        assert histogram.bucket_limit[-1] == histogram.max
        if values is not None:
            assert (histogram.min, histogram.max) == (
                pytest.approx(float(values.min())),
                pytest.approx(float(values.max())),
            )
            assert list(histogram.bucket) == pytest.approx(
                torch.histc(values, bins=30, min=histogram.min, max=histogram.max).tolist(), abs=1
            )
    for step in range(3):
        bias = [h.histogram_value for h in acc.Histograms("hist/g/bias") if h.step == step][0]
        assert list(bias.bucket) == [1.0] and bias.bucket_limit[0] == pytest.approx(float(bias.max))
