"""Class labels are a property of all the data: counted over every training and validation row,
from tensors or from a Dataset's items, and checked against the model's outputs before any run."""

from __future__ import annotations

import json

import pytest
from test_faults import trainer

from trainer import load_model

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


class Fixed(nn.Module):
    def __init__(self, width: int = 1):  # a width of its own name: not filled from the data
        super().__init__()
        self.linear = nn.Linear(4, width)
    def forward(self, x):
        return self.linear(x)


class Offered(nn.Module):
    def __init__(self, num_classes: int, in_features: int, input_shape: list, hidden: int = 8):
        super().__init__()
        assert input_shape == [in_features]
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    def forward(self, x):
        return self.net(x)


def real():
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    return x, x.sum(1)
"""

SPEC = """\
name: labels
data: {{kind: '{data}'{validation}}}
model: {{kind: '{model}'{outputs}}}
loss: {{kind: {loss}}}
optimizer: {{kind: sgd, lr: 0.1}}
train: {{steps: 20, batch_size: 4, sampling: sequential}}
eval: {{every: 10}}
log: {{every: 10, histograms_every: 0}}
"""


def write(tmp_path, data, outputs=None, validation="", model="classifier:Net", loss="cross_entropy"):
    (tmp_path / "classifier.py").write_text(CLASSIFIER)
    given = f", outputs: {outputs}" if outputs is not None else ""
    (tmp_path / "labels.yaml").write_text(
        SPEC.format(data=data, outputs=given, validation=validation, model=model, loss=loss)
    )


@pytest.mark.parametrize("data", ["classifier:by_class", "classifier:items"], ids=["tensors", "dataset"])
def test_a_model_with_fewer_outputs_than_the_labels_classes_is_refused_before_any_run(tmp_path, data):
    write(tmp_path, data, model="classifier:Fixed", validation=", validation: 0.2")
    code, out, err = trainer(tmp_path, "sweep", "labels.yaml", "--logdir", "logs")
    assert code == 2, out + err
    assert err == (
        "error: labels.yaml:3: model.kind: outputs 1 value per row, but the labels run 0..2 "
        "(3 classes); give the model 3 outputs: a parameter num_classes (or outputs) of "
        "classifier:Fixed is given the class count when the spec leaves it out (run labels/base)\n"
    )
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("model", ["classifier:Net", "mlp"])
def test_an_output_count_the_spec_sets_below_the_classes_is_refused_naming_that_setting(tmp_path, model):
    write(tmp_path, "classifier:by_class", outputs=2, model=model)
    code, out, err = trainer(tmp_path, "check", "labels.yaml")
    assert code == 2, out + err
    assert (
        "labels.yaml:3: model.outputs: is 2, but the labels run 0..2 (3 classes); set it to 3, "
        "or leave it out to have it filled from the data"
    ) in err


def read_record(tmp_path):
    return json.loads((tmp_path / "logs/labels/base/record.json").read_text())


def test_a_user_model_is_given_the_class_count_and_the_input_by_its_parameters_names(tmp_path):
    write(tmp_path, "classifier:items", model="classifier:Offered", validation=", validation: 0.2")
    code, out, err = trainer(tmp_path, "sweep", "labels.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0 and "1 run: 1 complete" in out, out + err
    record = read_record(tmp_path)
    assert record["config"]["model"]["num_classes"] == "auto"
    assert len(record["final_weights"]["net.2.bias"]) == 3  # one output per class
    assert record["hparams"]["model.num_classes"] == 3.0 and record["hparams"]["model.in_features"] == 4.0
    config = (tmp_path / "logs/labels/base/config.yaml").read_text()
    assert "model.num_classes=3, model.in_features=4, model.input_shape=[4]" in config.splitlines()[2]
    model = load_model(tmp_path / "logs/labels/base", trust_code=True, code_dir=tmp_path)
    assert model.net[2].out_features == 3


def test_data_classes_states_classes_the_data_has_no_rows_of(tmp_path):
    write(tmp_path, "classifier:by_class", validation=", classes: 5", model="classifier:Offered")
    code, out, err = trainer(tmp_path, "sweep", "labels.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0 and "1 run: 1 complete" in out, out + err
    record = read_record(tmp_path)
    assert record["resolved"]["classes"] == 5 and len(record["final_weights"]["net.2.bias"]) == 5
    assert record["hparams"]["data.classes"] == 5.0


@pytest.mark.parametrize(
    "data, loss, message",
    [
        (
            ("classifier:by_class", ", classes: 2"),
            "cross_entropy",
            "labels.yaml:2: data.classes: is 2, but the labels run 0..2 (3 classes); set it to at least "
            "that, or leave it out",
        ),
        (
            ("classifier:real", ", classes: 2"),
            "mse",
            "labels.yaml:2: data.classes: is 2, but the targets are not class labels (one integer per row)",
        ),
        (
            ("classifier:real", ""),
            "mse",
            "labels.yaml:3: model.num_classes: classifier:Offered takes num_classes, but the targets are "
            "real numbers, not class labels; set model.num_classes",
        ),
    ],
    ids=["too-few", "real-targets", "no-class-count"],
)
def test_a_class_count_the_data_contradicts_or_cannot_give_is_refused(tmp_path, data, loss, message):
    write(tmp_path, data[0], validation=data[1], model="classifier:Offered", loss=loss)
    code, out, err = trainer(tmp_path, "check", "labels.yaml")
    assert code == 2, out + err
    assert message in err, err


def test_a_datasets_integer_labels_are_classes_through_a_validation_subset(tmp_path):
    write(tmp_path, "classifier:items", outputs=3, validation=", validation: 0.2")
    code, out, err = trainer(tmp_path, "sweep", "labels.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    assert "1 run: 1 complete" in out
