"""Class labels are a property of all the data: counted over every training and validation row,
from tensors or from a Dataset's items, and checked against the model's outputs before any run."""

from __future__ import annotations

import pytest
from test_faults import trainer

pytestmark = pytest.mark.slow

CLASSIFIER = """\
import torch
from torch import nn


def by_class():
    # 30 rows written class by class: the first batch holds class 0 only
    labels = torch.arange(3).repeat_interleave(10)
    return torch.randn(30, 4, generator=torch.Generator().manual_seed(0)) + labels[:, None], labels


class Items(torch.utils.data.Dataset):
    def __init__(self):
        self.x, self.y = by_class()
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return self.x[i], self.y[i]  # int64 labels, no `classes` attribute


def items():
    return Items()


class Net(nn.Module):
    def __init__(self, outputs: int = 1):
        super().__init__()
        self.linear = nn.Linear(4, outputs)
    def forward(self, x):
        return self.linear(x)
"""

SPEC = """\
name: labels
data: {{kind: '{data}'{validation}}}
model: {{kind: 'classifier:Net', outputs: {outputs}}}
loss: {{kind: cross_entropy}}
optimizer: {{kind: sgd, lr: 0.1}}
train: {{steps: 20, batch_size: 4, sampling: sequential}}
eval: {{every: 10}}
log: {{every: 10, histograms_every: 0}}
"""


def write(tmp_path, data, outputs, validation=""):
    (tmp_path / "classifier.py").write_text(CLASSIFIER)
    (tmp_path / "labels.yaml").write_text(SPEC.format(data=data, outputs=outputs, validation=validation))


@pytest.mark.parametrize("data", ["classifier:by_class", "classifier:items"], ids=["tensors", "dataset"])
def test_a_model_with_fewer_outputs_than_the_labels_classes_is_refused_before_any_run(tmp_path, data):
    write(tmp_path, data, outputs=1, validation=", validation: 0.2")
    code, out, err = trainer(tmp_path, "sweep", "labels.yaml", "--logdir", "logs")
    assert code == 2, out + err
    assert err == (
        "error: labels.yaml:3: model.kind: outputs 1 value per row, but the labels run 0..2 "
        "(3 classes); give the model 3 outputs (run labels/base)\n"
    )
    assert not (tmp_path / "logs").exists()


def test_a_datasets_integer_labels_are_classes_through_a_validation_subset(tmp_path):
    write(tmp_path, "classifier:items", outputs=3, validation=", validation: 0.2")
    code, out, err = trainer(tmp_path, "sweep", "labels.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    assert "1 run: 1 complete" in out
