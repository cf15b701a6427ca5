"""The training loop and what it logs, read back from the event files with tensorboard's reader."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import read_events, scalars
from trainer.cli.commands import main
from trainer.kinds.data import SEED_ROWS, SEED_WEIGHTS
from trainer.spec.sweep import plan
from trainer.tensorboard.sink import TensorBoardSink
from trainer.training.batches import batches
from trainer.training.loop import train
from trainer.training.sink import NullSink

NOTEBOOK_INIT = [0.2211, 0.1589, 0.3895, 0.8993]


def run_one(spec: str, logdir: Path, *overrides: str) -> Path:
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["run", spec, "--logdir", str(logdir), "--quiet", *sets]) == 0
    (run,) = plan([spec], list(overrides))
    return logdir / run.folder


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_one_step_moves_each_weight_by_lr_times_gradient_plus_decay(write_spec, tmp_path, weight_decay):
    """The notebook's single-step cell: w1 = w0 - lr * (grad + weight_decay * w0), exactly."""
    spec = write_spec(
        "one-step",
        f"""
        name: one-step
        data: {{kind: seed_toy}}
        model: {{kind: linear, bias: false, init: {NOTEBOOK_INIT}}}
        loss: {{kind: l1, reduction: sum}}
        optimizer: {{kind: sgd, lr: 0.1, weight_decay: {weight_decay}}}
        train: {{steps: 1, batch_size: 1, sampling: sequential}}
    """,
    )
    values = scalars(run_one(spec, tmp_path / "logs"))
    before = [values[f"w/{i}"][0] for i in range(4)]
    grads = [values[f"g/{i}"][0] for i in range(4)]
    after = [values[f"w/{i}"][1] for i in range(4)]
    assert before == [float(torch.tensor(v)) for v in NOTEBOOK_INIT]
    # The first row is x = [1, 0, 1, 1], y = 5; the prediction is below it, so the L1 gradient is -x.
    assert grads == [-1.0, 0.0, -1.0, -1.0]
    w0, g = torch.tensor(before), torch.tensor(grads)
    expected = w0 - 0.1 * (g + weight_decay * w0)
    assert after == pytest.approx(expected.tolist(), abs=1e-7)
    assert after == (w0.clone().add_(g.add(w0, alpha=weight_decay), alpha=-0.1)).tolist()


def test_run_logs_loss_weights_gradients_histograms_hparams_and_config(write_spec, tmp_path):
    spec = write_spec(
        "full",
        """
        name: full
        loss: {kind: l1, reduction: sum}
        train: {steps: 200, batch_size: 1}
        eval: {every: 20}
        log: {every: 1, histograms_every: 10}
    """,
    )
    folder = run_one(spec, tmp_path / "logs")
    acc = read_events(folder)
    tags = acc.Tags()
    record = json.loads((folder / "record.json").read_text())
    values = {t: {e.step: e.value for e in acc.Scalars(t)} for t in tags["scalars"]}
    assert sorted(values["loss"]) == list(range(200))
    for i in range(4):
        assert sorted(values[f"w/{i}"]) == list(range(201))  # before each step, and the final weights
        assert sorted(values[f"g/{i}"]) == list(range(200))
        assert values[f"w/{i}"][200] == pytest.approx(record["final_weights"]["weight"][i])
    assert sorted(values["train/loss"]) == list(range(0, 201, 20))
    assert values["train/loss"][200] == pytest.approx(record["metrics"]["final/train/loss"])
    assert values["best/train/loss"][200] == pytest.approx(min(values["train/loss"].values()))
    assert values["eval/distance"][200] == pytest.approx(record["metrics"]["final/weight_distance"])
    final_w = torch.tensor(record["final_weights"]["weight"])
    assert record["metrics"]["final/weight_distance"] == pytest.approx(
        float((final_w - torch.tensor(SEED_WEIGHTS)).norm())
    )
    assert values["final/diverged"] == {200: 0.0}
    assert values["lr"] == {0: pytest.approx(0.1)}  # written when it changes
    assert set(tags["histograms"]) == {"hist/w/weight", "hist/g/weight"}
    histograms = acc.Histograms("hist/w/weight")
    assert [h.step for h in histograms] == list(range(0, 200, 10))
    for h in histograms:
        assert h.histogram_value.num == 4 and sum(h.histogram_value.bucket) == 4
        assert h.histogram_value.min == min(values[f"w/{i}"][h.step] for i in range(4))
    assert {"_hparams_/session_start_info", "_hparams_/session_end_info", "config"} <= set(tags["tensors"])
    shown = acc.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "optimizer:" in shown and "kind: sgd" in shown
    assert "optimizer:" in (folder / "config.yaml").read_text()
    assert record["status"] == "complete" and record["resolved"]["device"] == "cpu"
    assert record["seed"] == 0 and record["versions"]["torch"] == torch.__version__


def test_full_batch_sum_takes_steps_ten_times_larger_than_mean(write_spec, tmp_path):
    """The notebook's confound: with reduction 'sum' the full-batch gradient is 10x the 'mean' one."""
    spec = write_spec(
        "confound",
        """
        name: confound
        loss: {kind: l1}
        model: {init: [0.2211, 0.1589, 0.3895, 0.8993]}
        train: {steps: 1, batch_size: full}
        sweep:
          loss.reduction: [sum, mean]
    """,
    )
    assert main(["sweep", spec, "--logdir", str(tmp_path / "logs"), "--workers", "1", "--quiet"]) == 0
    total = scalars(tmp_path / "logs/confound/reduction=sum")
    mean = scalars(tmp_path / "logs/confound/reduction=mean")
    for i in range(4):
        assert total[f"g/{i}"][0] == pytest.approx(10 * mean[f"g/{i}"][0])


def _final(run, sink) -> str:
    return train(run, sink).weights_sha256


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="seed-notebook"),
        pytest.param(
            {
                "model": {"kind": "mlp", "hidden": [8, 8]},
                "data": {"kind": "synthetic", "rows": 64},
                "optimizer": {"kind": "adam", "lr": 0.01},
                "schedule": {"kind": "cosine"},
                "train": {"batch_size": 8, "sampling": "shuffle", "steps": 150},
            },
            id="mlp-adam-cosine",
        ),
        pytest.param(
            {
                "optimizer": {"kind": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
                "train": {"batch_size": 3, "steps": 250},
                "log": {"every": 7, "histograms_every": 5},
            },
            id="sgd-nesterov-unaligned-logging",
        ),
    ],
)
def test_logging_never_changes_training(write_spec, tmp_path, settings):
    """The same seed gives bit-identical final weights with logging on and off."""
    import yaml

    spec = write_spec("same", yaml.safe_dump({"name": "same", **settings}))
    (run,) = plan([spec])
    torch.set_num_threads(1)
    silent = _final(run, NullSink())
    logged = _final(run, TensorBoardSink(tmp_path / "run", run.config.log, {}, ""))
    again = _final(run, NullSink())
    assert silent == logged == again


def test_large_parameters_get_norm_curves_instead_of_one_per_element(write_spec, tmp_path):
    spec = write_spec(
        "mlp",
        """
        name: mlp
        data: {kind: synthetic, rows: 32, features: 4}
        model: {kind: mlp, hidden: [8]}
        train: {steps: 20, batch_size: 4}
        log: {max_elements: 8}
    """,
    )
    tags = set(scalars(run_one(spec, tmp_path / "logs")))
    assert {"w/hidden1.weight.norm", "g/hidden1.weight.norm", "w/hidden1.bias[0]", "w/output.bias"} <= tags
    assert "w/output.weight[7]" in tags and not any(t.startswith("w/hidden1.weight[") for t in tags)
    assert "eval/distance" not in tags  # an MLP has no true weights to compare with


def test_divergence_stops_the_run_and_is_recorded(write_spec, tmp_path):
    spec = write_spec(
        "boom",
        """
        name: boom
        loss: {kind: mse}
        optimizer: {lr: 1.0e+30}
        train: {steps: 500}
    """,
    )
    folder = run_one(spec, tmp_path / "logs")
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "diverged" and record["metrics"]["final/diverged"] is True
    step = record["metrics"]["diverged_step"]
    assert 0 < step < 500 and record["steps_done"] == step + 1
    values = scalars(folder)
    assert max(values["loss"]) == step and not math.isfinite(values["loss"][step])
    assert values["final/diverged"] == {step: 1.0} and "final/train/loss" not in values


@pytest.mark.parametrize(
    "sampling, expected",
    [
        pytest.param("sequential", [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9], [0, 1, 2]], id="sequential"),
    ],
)
def test_sequential_batches_walk_the_rows_in_order(sampling, expected):
    x = torch.arange(10.0).view(10, 1)
    got = [xb.view(-1).long().tolist() for xb, _ in batches(x, x.view(-1), 3, 5, sampling, seed=0)]
    assert got == expected


def test_shuffle_visits_every_row_once_per_epoch_and_replacement_is_seeded():
    x = torch.arange(10.0).view(10, 1)
    rows = [int(xb) for xb, _ in batches(x, x.view(-1), 1, 30, "shuffle", seed=3)]
    for epoch in range(3):
        assert sorted(rows[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    first = [xb.tolist() for xb, _ in batches(x, x.view(-1), 4, 50, "with_replacement", seed=5)]
    second = [xb.tolist() for xb, _ in batches(x, x.view(-1), 4, 50, "with_replacement", seed=5)]
    other = [xb.tolist() for xb, _ in batches(x, x.view(-1), 4, 50, "with_replacement", seed=6)]
    assert first == second != other
    full = list(batches(x, x.view(-1), None, 3, "with_replacement", seed=0))
    assert all(xb is x for xb, _ in full)


def test_epochs_set_the_number_of_steps(write_spec):
    spec = write_spec(
        "epochs",
        """
        name: epochs
        train: {epochs: 3, batch_size: 4, sampling: shuffle}
    """,
    )
    (run,) = plan([spec])
    assert run.steps == 3 * 3  # ten rows in batches of four: three steps an epoch


def test_seed_toy_is_the_notebooks_table():
    x = torch.tensor(SEED_ROWS, dtype=torch.float32)
    assert (x @ torch.tensor(SEED_WEIGHTS)).tolist() == [5, 2, 3, 6, 6, 1, 4, 0, 0, 3]


@pytest.mark.slow
def test_same_numbers_with_any_number_of_workers(tmp_path):
    """A sweep's results do not depend on how many workers run it."""
    spec = str(Path(__file__).parents[1] / "experiments" / "seed-notebook.yaml")
    digests = []
    for workers in (1, 2):
        logdir = tmp_path / f"w{workers}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer",
                "sweep",
                spec,
                "--logdir",
                str(logdir),
                "--workers",
                str(workers),
                "--quiet",
                "--set",
                "train.steps=300",
            ],
            check=True,
            capture_output=True,
        )
        records = sorted(
            (json.loads(p.read_text()) for p in logdir.glob("*/*/record.json")), key=lambda r: r["run"]
        )
        digests.append([(r["run"], r["weights_sha256"], r["metrics"]) for r in records])
    assert len(digests[0]) == 4 and digests[0] == digests[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_logs_the_same_curves_as_the_cpu(write_spec, tmp_path):
    spec = write_spec(
        "gpu",
        """
        name: gpu
        data: {kind: synthetic, rows: 64, features: 4}
        model: {kind: mlp, hidden: [8]}
        train: {steps: 50, batch_size: 8}
        sweep:
          train.device: [cpu, cuda]
    """,
    )
    assert main(["sweep", spec, "--logdir", str(tmp_path / "logs"), "--workers", "1", "--quiet"]) == 0
    cpu, cuda = scalars(tmp_path / "logs/gpu/device=cpu"), scalars(tmp_path / "logs/gpu/device=cuda")
    assert set(cpu) == set(cuda)
    record = json.loads((tmp_path / "logs/gpu/device=cuda/record.json").read_text())
    assert record["resolved"]["device"].startswith("cuda") and record["status"] == "complete"
    assert cuda["loss"][0] == pytest.approx(cpu["loss"][0], rel=1e-4)


def test_a_run_that_fails_before_training_still_shows_in_tensorboard(write_spec, tmp_path, monkeypatch):
    import trainer.kinds.data

    def unreadable(*args, **kwargs):
        raise OSError("the data went away")

    monkeypatch.setattr(trainer.kinds.data, "load", unreadable)
    spec = write_spec("early", "name: early\n")
    logdir = tmp_path / "logs"
    assert main(["run", spec, "--logdir", str(logdir), "--quiet"]) == 1
    folder = logdir / "early/base"
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "failed" and "the data went away" in record["error"]
    assert "OSError: the data went away" in (folder / "traceback.txt").read_text()
    tensors = read_events(folder).Tags()["tensors"]
    assert {"_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(tensors)


def test_events_stay_in_step_order_when_logging_and_evaluation_do_not_align(write_spec, tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    spec = write_spec(
        "unaligned",
        """
        name: unaligned
        train: {steps: 230}
        schedule: {kind: step, step_size: 50, gamma: 0.5}
        eval: {every: 7}
        log: {every: 3, histograms_every: 20}
    """,
    )
    folder = run_one(spec, tmp_path / "logs")
    (event_file,) = folder.glob("events.out.tfevents.*")
    order = [e.step for e in EventFileLoader(str(event_file)).Load() if e.HasField("summary")]
    assert order == sorted(order)
    values = scalars(folder)
    assert sorted(values["loss"]) == list(range(0, 230, 3))
    assert sorted(values["train/loss"]) == list(range(0, 230, 7)) + [230]
    assert values["lr"] == {
        0: pytest.approx(0.1),
        51: pytest.approx(0.05),
        102: pytest.approx(0.025),
        150: pytest.approx(0.0125),
        201: pytest.approx(0.00625),
    }
