"""Datasets whose items cannot be stacked: data.collate makes their batches, and data.loader's
options reach torch's DataLoader, inside the sweep's worker processes too."""

from __future__ import annotations

import json

import pytest
from test_faults import trainer

pytestmark = pytest.mark.slow

SEQUENCES = """\
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence


class Sequences(torch.utils.data.Dataset):
    \"\"\"Sequences of 3 to 12 numbers; the target is their mean.\"\"\"
    def __init__(self):
        gen = torch.Generator().manual_seed(1)
        lengths = torch.randint(3, 13, (40,), generator=gen)
        self.items = [torch.randn(int(n), generator=gen) for n in lengths]
    def __len__(self):
        return len(self.items)
    def __getitem__(self, i):
        return self.items[i], self.items[i].mean()


def sequences():
    return Sequences()


def pad(items):
    xs, ys = zip(*items)
    return (pad_sequence(list(xs), batch_first=True), torch.tensor([len(x) for x in xs])), torch.stack(ys)


class MeanOf(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Linear(1, 1, bias=False)
    def forward(self, batch):
        padded, lengths = batch
        return self.scale((padded.sum(dim=1) / lengths)[:, None])
"""

SPEC = """\
name: sequences
data: {{kind: 'sequences:sequences', validation: 0.25{collate}{loader}}}
model: {{kind: 'sequences:MeanOf'}}
loss: {{kind: mse}}
optimizer: {{kind: sgd, lr: 0.1}}
train: {{steps: 60, batch_size: 4}}
eval: {{every: 20}}
log: {{every: 10, histograms_every: 0}}
"""


def write(tmp_path, collate=", collate: 'sequences:pad'", loader=""):
    (tmp_path / "sequences.py").write_text(SEQUENCES)
    (tmp_path / "sequences.yaml").write_text(SPEC.format(collate=collate, loader=loader))


def test_items_of_different_lengths_without_a_collate_function_are_one_message(tmp_path):
    write(tmp_path, collate="")
    code, out, err = trainer(tmp_path, "sweep", "sequences.yaml", "--logdir", "logs")
    assert code == 2, out + err
    assert err.startswith(
        "error: sequences.yaml:2: data.kind: a batch of 4 items of the Dataset cannot be formed"
    )
    assert err.count("\n") == 1 and not (tmp_path / "logs").exists()


def test_a_collate_function_and_loader_processes_inside_a_pool_worker_give_the_same_run(tmp_path):
    write(tmp_path)
    args = ["sweep", "sequences.yaml", "--workers", "1"]
    code, out, err = trainer(tmp_path, *args, "--logdir", "plain")
    assert code == 0, out + err
    loader = ", loader: {num_workers: 2, persistent_workers: true}"
    (tmp_path / "sequences.yaml").write_text(SPEC.format(collate=", collate: 'sequences:pad'", loader=loader))
    code, out, err = trainer(tmp_path, *args, "--logdir", "loaded")
    assert code == 0, out + err
    plain, loaded = (
        json.loads((tmp_path / f"{d}/sequences/base/record.json").read_text()) for d in ("plain", "loaded")
    )
    assert loaded["status"] == "complete"
    assert loaded["weights_sha256"] == plain["weights_sha256"]
    assert loaded["metrics"] == plain["metrics"]
    assert loaded["code"]["data.collate"]["kind"] == "sequences:pad"
    # Loader options change nothing a run computes: the same run, kept by a rerun with other options.
    code, out, err = trainer(tmp_path, *args, "--logdir", "plain", "--set", "data.loader.num_workers=1")
    assert code == 0 and "1 already done" in out, out + err
