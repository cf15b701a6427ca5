"""Users' own experiments: their model, data, loss, metric, optimizer and hook by import path,
classification, validation rows, checkpoints, and every error their code can cause."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import trainer
from tests.conftest import read_events, scalars
from trainer.cli.commands import main
from trainer.kinds import data
from trainer.spec.sweep import plan

MODULES = {
    "mydata.py": '''
        import torch

        def images(rows: int = 48, classes: int = 3, seed: int = 0):
            """Tiny 1x4x4 images whose class is the brightest quadrant row, and their labels."""
            gen = torch.Generator().manual_seed(seed)
            labels = torch.arange(rows) % classes
            x = torch.rand(rows, 1, 4, 4, generator=gen) * 0.2
            for c in range(classes):
                x[labels == c, 0, c, :] += 1.0
            return x, labels

        def numbered(rows: int = 20):
            """x is the row's own number, so a row can be told from every other."""
            x = torch.arange(rows, dtype=torch.float32).view(-1, 1)
            return x, 0.5 * x.view(-1)

        class Pairs(torch.utils.data.Dataset):
            def __init__(self, x, y):
                self.x, self.y = x, y
            def __len__(self):
                return len(self.x)
            def __getitem__(self, i):
                return self.x[i], self.y[i]

        def table(as_dataset: bool = False):
            gen = torch.Generator().manual_seed(3)
            x = torch.randn(40, 3, generator=gen)
            y = x @ torch.tensor([1.0, -2.0, 0.5])
            return Pairs(x, y) if as_dataset else (x, y)

        def broken():
            raise RuntimeError("cannot reach the data server")
    ''',
    "mymodel.py": '''
        from torch import nn

        CONSTANT = 3

        class Net(nn.Module):
            """A linear classifier of flattened images."""
            def __init__(self, width: int = 4, classes: int = 3):
                super().__init__()
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.ReLU(), nn.Linear(width, classes))
            def forward(self, x):
                return self.body(x)

        class Needs(nn.Module):
            def __init__(self, depth: int):
                super().__init__()

        def linear(features: int = 3):
            return nn.Linear(features, 1, bias=False)
    ''',
    "myloss.py": """
        from torch.nn import functional as F

        def smooth_ce(output, target, smoothing: float = 0.0):
            return F.cross_entropy(output, target, label_smoothing=smoothing)
    """,
    "mymetric.py": '''
        def top2(output, target):
            """Top-2 accuracy and the number of misses, as two values."""
            hit = (output.topk(2, dim=1).indices == target[:, None]).any(dim=1)
            return {"top2": hit.float().mean(), "misses": float((~hit).sum())}
        top2.greater_is_better = {"top2": True, "misses": False}

        def failing(output, target):
            return output.nonexistent()
    ''',
    "myhook.py": """
        from torch.utils.tensorboard import SummaryWriter

        def log_things(writer, step, model, inputs, targets, **context):
            assert isinstance(writer, SummaryWriter), type(writer)
            writer.add_image("sample", inputs[0], step)
            writer.add_text("note", f"{context['run']} at step {step}", step)
            writer.add_scalar("mine/mean_output", float(model(inputs).mean()), step)
    """,
    "myopt.py": '''
        import torch

        class ZeroingSGD(torch.optim.SGD):
            """SGD that clears the gradients in place after its update, as some optimizers do."""
            def step(self, closure=None):
                super().step(closure)
                for group in self.param_groups:
                    for p in group["params"]:
                        p.grad.zero_()
    ''',
    "broken.py": """
        raise ValueError("this module needs a GPU")
    """,
}

CLASSIFY = """
name: classify
data: {kind: "mydata:images", validation: 0.25}
model: {kind: "mymodel:Net", width: 8}
loss: {kind: "myloss:smooth_ce", smoothing: 0.05}
optimizer: {kind: adam, lr: 0.05}
train: {steps: 30, batch_size: 12}
eval: {every: 10, metrics: [accuracy, "mymetric:top2"]}
log: {hook: "myhook:log_things", histograms_every: 10}
sweep:
  model.width: [4, 8]
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A user's project: experiments/ with their modules; returns a function writing a spec there."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    for name, text in MODULES.items():
        (folder / name).write_text(textwrap.dedent(text))
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)

    def spec(name: str, text: str) -> str:
        (folder / f"{name}.yaml").write_text(textwrap.dedent(text))
        return f"experiments/{name}.yaml"

    yield spec
    for name in set(sys.modules) - before:  # each test imports the user's modules afresh
        if name.split(".")[0] in {Path(m).stem for m in MODULES}:
            del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p != str(folder.resolve())]


def sweep(spec: str, *args: str) -> int:
    return main(["sweep", spec, "--logdir", "logs", "--quiet", "--workers", "1", *args])


def record_of(folder: Path) -> dict:
    return json.loads((folder / "record.json").read_text())


def test_user_model_data_loss_metric_and_hook_by_import_path(project):
    assert sweep(project("classify", CLASSIFY)) == 0
    runs = sorted(p for p in Path("logs/classify").iterdir() if not p.name.startswith("."))
    assert [r.name for r in runs] == ["width=4", "width=8"]
    for folder in runs:
        record = record_of(folder)
        assert record["status"] == "complete"
        assert record["resolved"]["rows"] == 36 and record["resolved"]["validation_rows"] == 12
        assert record["resolved"]["input_shape"] == [1, 4, 4]
        values = scalars(folder)
        for split in ("train", "val"):
            for name in ("loss", "accuracy", "top2", "misses"):
                assert sorted(values[f"{split}/{name}"]) == [0, 10, 20, 30], f"{split}/{name}"
        metrics = record["metrics"]
        assert metrics["final/val/accuracy"] == pytest.approx(values["val/accuracy"][30])
        assert metrics["best/val/accuracy"] == pytest.approx(max(values["val/accuracy"].values()))
        assert metrics["best/val/loss"] == pytest.approx(min(values["val/loss"].values()))
        assert metrics["best/val/misses"] == pytest.approx(min(values["val/misses"].values()))
        assert "final/converged" not in metrics and "final/weight_distance" not in metrics  # classification
        # The hook's SummaryWriter wrote into the run's one event file, at every evaluation.
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        acc = read_events(folder)
        assert [e.step for e in acc.Images("sample")] == [0, 10, 20, 30]
        assert sorted(values["mine/mean_output"]) == [0, 10, 20, 30]
        notes = [e for e in acc.Tensors("note/text_summary")]
        assert notes[-1].tensor_proto.string_val[0].decode() == f"classify/{folder.name} at step 30"
        # Which code produced the run: import paths, files, hashes.
        code = record["code"]
        assert set(code) == {"data.kind", "model.kind", "loss.kind", "eval.metrics[1]", "log.hook"}
        assert code["model.kind"]["file"] == "experiments/mymodel.py"
        # Every piece, also the hook, which the worker imports only once training starts.
        for where, entry in code.items():
            assert entry["file"] and entry["file"].startswith("experiments/"), where
            assert len(entry["sha256"]) == 64, where
    index = Path("logs").glob("events.out.tfevents.*hparams-index")
    assert list(index)


def test_a_checkpoint_reloads_and_reproduces_the_recorded_validation_accuracy(project):
    spec = project("classify", CLASSIFY)
    assert sweep(spec) == 0
    folder = Path("logs/classify/width=8")
    record = record_of(folder)
    assert record["checkpoint"] == "model.pt"
    with pytest.raises(
        trainer.UserError, match=r"its model is user code \('mymodel:Net'\); rebuilding it would import"
    ):
        trainer.load_model(folder)
    model = trainer.load_model(folder, trust_code=True, code_dir="experiments")
    (run,) = [r for r in plan([spec]) if r.name == "width=8"]
    split = data.load(run.config.data, Path(run.data_folder)).validation
    with torch.no_grad():
        accuracy = (model(split.x).argmax(dim=1) == split.y).float().mean().item()
    assert accuracy == pytest.approx(record["metrics"]["final/val/accuracy"], abs=1e-6)
    assert type(model).__name__ == "Net" and not model.training


def test_no_checkpoint_when_asked(project):
    assert sweep(project("classify", CLASSIFY), "--set", "log.checkpoint=none") == 0
    (folder,) = Path("logs/classify").glob("width=4*")
    assert not (folder / "model.pt").exists() and "checkpoint" not in record_of(folder)
    with pytest.raises(trainer.run.checkpoint.CheckpointError, match="kept no final checkpoint"):
        trainer.load_model(folder)


def test_the_validation_split_is_the_same_for_every_run_and_disjoint_from_training(project):
    spec = project(
        "split",
        """
        name: split
        data: {kind: "mydata:numbered", rows: 20, validation: 0.3}
        model: {kind: linear}
        loss: {kind: mse}
        train: {steps: 5}
        sweep:
          train.seed: [0, 1]
          optimizer.lr: [0.1, 0.01]
    """,
    )
    runs = plan([spec])
    parts = []
    for run in runs:
        loaded = data.load(run.config.data, Path(run.data_folder))
        parts.append((loaded.train.x.view(-1).tolist(), loaded.validation.x.view(-1).tolist()))
    train_rows, val_rows = parts[0]
    assert all(p == parts[0] for p in parts)
    assert len(val_rows) == 6 and not set(train_rows) & set(val_rows)
    assert sorted(train_rows + val_rows) == list(range(20))
    other = plan([spec], ["data.split_seed=1"])[0]
    assert data.load(other.config.data, Path(other.data_folder)).validation.x.view(-1).tolist() != val_rows


def test_a_dataset_trains_exactly_as_the_same_tensors(project):
    common = """
        model: {kind: "mymodel:linear"}
        loss: {kind: mse}
        optimizer: {kind: sgd, lr: 0.05}
        train: {steps: 40, batch_size: 8, sampling: sequential}
    """
    tensors = project("tensors", "name: tensors\ndata: {kind: 'mydata:table'}\n" + textwrap.dedent(common))
    dataset = project(
        "dataset", "name: dataset\ndata: {kind: 'mydata:table', as_dataset: true}\n" + textwrap.dedent(common)
    )
    assert sweep(tensors) == 0 and sweep(dataset) == 0
    a, b = scalars(Path("logs/tensors/base")), scalars(Path("logs/dataset/base"))
    assert a["loss"] == b["loss"] and a["train/loss"] == b["train/loss"]
    assert (
        record_of(Path("logs/tensors/base"))["weights_sha256"]
        == record_of(Path("logs/dataset/base"))["weights_sha256"]
    )


def test_text_labels_from_csv_train_a_classifier(project, tmp_path):
    rows = ["width,length,species"]
    gen = torch.Generator().manual_seed(0)
    for i in range(60):
        species = ("setosa", "versicolor", "virginica")[i % 3]
        base = {"setosa": (1.0, 5.0), "versicolor": (3.0, 3.0), "virginica": (5.0, 1.0)}[species]
        w, h = (torch.tensor(base) + 0.3 * torch.randn(2, generator=gen)).tolist()
        rows.append(f"{w:.3f},{h:.3f},{species}")
    (tmp_path / "experiments" / "flowers.csv").write_text("\n".join(rows) + "\n")
    spec = project(
        "flowers",
        """
        name: flowers
        data: {kind: csv, path: flowers.csv, target: species, validation: 0.2, standardize: true}
        model: {kind: mlp, hidden: [8]}
        loss: {kind: cross_entropy, label_smoothing: 0.1}
        optimizer: {kind: adam, lr: 0.05}
        train: {steps: 100, batch_size: 16}
        eval: {every: 25, metrics: [accuracy]}
    """,
    )
    assert sweep(spec) == 0
    record = record_of(Path("logs/flowers/base"))
    assert record["resolved"]["classes"] == 3 and record["resolved"]["outputs"] == 3
    assert record["resolved"]["rows"] == 48 and record["resolved"]["validation_rows"] == 12
    assert record["metrics"]["final/val/accuracy"] >= 0.9


def test_gradients_changed_in_place_are_logged_as_the_update_used_them(project):
    """Clipping scales the gradients in place before the update; this optimizer zeroes them in place
    after it. The logged gradient must be the one of the update: w[t+1] = w[t] - lr * g[t]."""
    spec = project(
        "clip",
        """
        name: clip
        data: {kind: seed_toy}
        model: {kind: linear}
        loss: {kind: l1, reduction: sum}
        optimizer: {kind: "myopt:ZeroingSGD", lr: 0.1}
        train: {steps: 20, batch_size: full, clip_grad_norm: 0.5}
        log: {every: 1}
    """,
    )
    assert sweep(spec) == 0
    values = scalars(Path("logs/clip/base"))
    for step in range(20):
        grad = torch.tensor([values[f"g/{i}"][step] for i in range(4)])
        assert 0.49 < float(grad.norm()) <= 0.5 + 1e-6, step  # clipped (the raw norm is far larger)
        for i in range(4):
            moved = values[f"w/{i}"][step] - values[f"w/{i}"][step + 1]
            assert moved == pytest.approx(0.1 * values[f"g/{i}"][step], abs=1e-6), (step, i)


@pytest.mark.parametrize(
    "section, expected",
    [
        pytest.param(
            "model: {kind: 'mymodel:Net', widht: 8}",
            "{spec}:3: model.widht: unknown key 'widht' for kind 'mymodel:Net' (did you mean 'width'?); "
            "its settings: width, classes",
            id="unknown-key",
        ),
        pytest.param(
            "model: {kind: 'mymodel:Net', width: eight}",
            "{spec}:3: model.width: must be a whole number, got 'eight' (a string)",
            id="wrong-type",
        ),
        pytest.param(
            "model: {kind: 'mymodel:Needs'}", "{spec}:3: model.depth: is required", id="missing-argument"
        ),
        pytest.param(
            "model: {kind: 'mymodle:Net'}",
            "{spec}:3: model.kind: cannot import module 'mymodle': no mymodle.py in experiments/ and no "
            "installed module of that name (did you mean 'mymodel'?)",
            id="no-module",
        ),
        pytest.param(
            "model: {kind: 'mymodel:Nett'}",
            "{spec}:3: model.kind: mymodel has no attribute 'Nett' (did you mean 'Net'?) (module file "
            "experiments/mymodel.py)",
            id="no-attribute",
        ),
        pytest.param(
            "model: {kind: 'mymodel:CONSTANT'}",
            "{spec}:3: model.kind: mymodel:CONSTANT is int, not something that can be called; a model kind "
            "is an nn.Module class, or a function returning an nn.Module",
            id="not-callable",
        ),
        pytest.param(
            "model: {kind: 'broken:Net'}",
            "{spec}:3: model.kind: importing 'broken' (experiments/broken.py) raised ValueError: this module "
            "needs a GPU",
            id="module-raises",
        ),
        pytest.param(
            "model: {kind: 'mymodel:Net'}\ndata: {kind: 'mydata:broken'}",
            "{spec}:4: data.kind: mydata:broken raised RuntimeError: cannot reach the data server",
            id="data-raises",
        ),
        pytest.param(
            "model: {kind: 'mymodel:Net', classes: 2}",
            "{spec}:3: model.kind: outputs 2 values per row, but the labels run 0..2 (3 classes); give "
            "the model 3 outputs: a parameter num_classes (or outputs) of mymodel:Net is given the class "
            "count when the spec leaves it out (run metrics/base)",
            id="output-misfits-labels",
        ),
        pytest.param(
            "model: {kind: 'mymodel:Net'}\neval: {metrics: [accuracy, 'mymetric:failing']}",
            "{spec}:4: eval.metrics[1]: mymetric:failing raised AttributeError: 'Tensor' object has no "
            "attribute 'nonexistent' for outputs of shape [12, 3] and targets of shape [12] (run metrics/base)",
            id="metric-raises",
        ),
        pytest.param(
            "model: {kind: 'mymodel:Net'}\neval: {metrics: [accuracy, top5]}",
            "{spec}:4: eval.metrics[1]: unknown metric 'top5'; the built-in metrics are accuracy, mae, rmse, "
            "or name a function of yours as module:function",
            id="unknown-metric",
        ),
        pytest.param(
            "model: {kind: 'mymodel:Net'}\nlog: {hook: 'myhook:log_thing'}",
            "{spec}:4: log.hook: myhook has no attribute 'log_thing' (did you mean 'log_things'?) (module "
            "file experiments/myhook.py)",
            id="no-hook",
        ),
    ],
)
def test_user_code_errors_name_the_file_line_and_problem_and_write_nothing(
    project, capsys, section, expected
):
    spec = project(
        "metrics",
        "name: metrics\nloss: {kind: cross_entropy}\n"
        + section
        + "\ntrain: {steps: 3, batch_size: 12}\n"
        + ("" if "data:" in section else "data: {kind: 'mydata:images'}\n"),
    )
    capsys.readouterr()
    assert sweep(spec) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == ["error: " + expected.format(spec=spec)]
    assert out == "" and not Path("logs").exists()


def test_check_says_which_user_code_it_imported(project, capsys):
    spec = project("classify", CLASSIFY)
    assert main(["check", spec]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{spec}: ok, 2 runs",
        "imported and tried, to check the specs: mydata:images (experiments/mydata.py), mymodel:Net "
        "(experiments/mymodel.py), myloss:smooth_ce (experiments/myloss.py), mymetric:top2 "
        "(experiments/mymetric.py), myhook:log_things (experiments/myhook.py)",
    ]


@pytest.mark.parametrize(
    "settings, check",
    [
        pytest.param(
            "loss: {kind: huber, delta: 0.5}\noptimizer: {kind: adamw, lr: 0.05, weight_decay: 0.01}",
            "adamw",
            id="huber-adamw",
        ),
        pytest.param(
            "loss: {kind: mse}\nschedule: {kind: exponential, gamma: 0.9}", "exponential", id="exponential"
        ),
    ],
)
def test_builtin_kinds_against_a_hand_written_torch_loop(project, settings, check):
    spec = project(
        "kinds",
        "name: kinds\ndata: {kind: seed_toy}\nmodel: {kind: linear}\n"
        + settings
        + "\ntrain: {steps: 25, batch_size: full, device: auto}\nlog: {every: 1}\n",
    )
    assert sweep(spec) == 0
    folder = Path("logs/kinds/base")
    values, record = scalars(folder), record_of(folder)
    assert record["resolved"]["device"] == "cpu"  # tiny models stay on the CPU under 'auto'
    x = torch.tensor(data.SEED_ROWS, dtype=torch.float32)
    y = x @ torch.tensor(data.SEED_WEIGHTS)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    if check == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
        loss_fn = lambda out, target: torch.nn.functional.huber_loss(out, target, delta=0.5)  # noqa: E731
        schedule = None
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_fn = torch.nn.functional.mse_loss
        schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    for step in range(25):
        if check == "exponential":
            assert values["lr"].get(
                step, values["lr"][max(s for s in values["lr"] if s <= step)]
            ) == pytest.approx(0.1 * 0.9**step, rel=1e-6)
        loss = loss_fn(model(x).squeeze(-1), y)
        assert values["loss"][step] == pytest.approx(loss.item(), rel=1e-6)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    assert record["final_weights"]["weight"] == pytest.approx(model.weight.view(-1).tolist(), rel=1e-6)


def test_csv_regression_learns_the_true_weights(project, tmp_path):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 2, generator=gen)
    y = x @ torch.tensor([2.0, -1.0]) + 0.5
    lines = ["a,b,y"] + [f"{a:.6f},{b:.6f},{t:.6f}" for (a, b), t in zip(x.tolist(), y.tolist())]
    (tmp_path / "experiments" / "line.csv").write_text("\n".join(lines) + "\n")
    spec = project(
        "line",
        """
        name: line
        data: {kind: csv, path: line.csv, target: y, true_weights: [2.0, -1.0], validation: 0.2}
        model: {kind: linear, bias: true}
        loss: {kind: mse}
        optimizer: {kind: sgd, lr: 0.1}
        train: {steps: 300, batch_size: 10}
        eval: {metrics: [mae, rmse]}
    """,
    )
    assert sweep(spec) == 0
    record = record_of(Path("logs/line/base"))
    assert record["final_weights"]["weight"] == pytest.approx([2.0, -1.0], abs=1e-3)
    assert record["final_weights"]["bias"] == pytest.approx([0.5], abs=1e-3)
    assert record["metrics"]["final/val/rmse"] < 1e-3 and record["metrics"]["final/val/mae"] < 1e-3
    assert record["metrics"]["final/converged"] is True
