"""What is logged for step k is each parameter's and gradient's value at step k, however the user's
code updates them: compared, value by value, with a hand-written loop, read back through
tensorboard's own reader."""

from __future__ import annotations

import textwrap

import pytest
import torch
from test_faults import trainer
from torch.nn import functional as F

from tests.conftest import scalars
from trainer.kinds import data
from trainer.tensorboard.sink import element_names

RESEARCH = '''
import torch
from torch import nn


class Fixed(nn.Module):
    """A linear model with set initial weights."""
    def __init__(self, features: int = 4):
        super().__init__()
        self.linear = nn.Linear(features, 1, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.linspace(-0.5, 0.5, features))
    def forward(self, x):
        return self.linear(x)


class Big(nn.Module):
    """Over 100k elements, its initial weights from a generator of its own."""
    def __init__(self, features: int = 4, width: int = 400):
        super().__init__()
        self.first = nn.Linear(features, width)
        self.second = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    def forward(self, x):
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


class Rebind(torch.optim.Optimizer):
    """Plain SGD that rebinds p.data, as research code and older tutorials do."""
    def __init__(self, params, lr: float = 0.05):
        super().__init__(params, {"lr": lr})
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data = p.data - group["lr"] * p.grad


def replace(writer, step, model, **context):
    if step == 0:  # a new Parameter object in the model; the optimizer keeps the old one
        model.linear.weight = nn.Parameter(model.linear.weight.detach() * 2.0)
'''

SPEC = """\
name: values
data: {{kind: seed_toy}}
model: {{kind: '{model}'}}
loss: {{kind: mse}}
optimizer: {optimizer}
train: {{steps: {steps}, batch_size: full{clip}}}
eval: {{every: 50}}
log: {{every: {every}, histograms_every: 0, max_elements: 500{hook}}}
"""


def reference(model, optimizer, x, y, steps, clip=None, hook=None):
    """The loop written out: (weights, gradients) of each step, as named_parameters orders them;
    on one thread, as a sweep's workers train (a matrix product sums in another order on more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference(model, optimizer, x, y, steps, clip, hook)
    finally:
        torch.set_num_threads(threads)


def _reference(model, optimizer, x, y, steps, clip, hook):
    seen = []
    for step in range(steps):
        for p in model.parameters():
            p.grad = None
        F.mse_loss(model(x).squeeze(-1), y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
        if hook is not None and step % 50 == 0:
            hook(None, step, model)
        named = list(model.named_parameters())
        seen.append(
            {
                name: (p.detach().clone(), p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                for name, p in named
            }
        )
        optimizer.step()
    return seen, {name: p.detach().clone() for name, p in model.named_parameters()}


def expected_curves(seen, final, every, steps, max_elements=500):
    curves: dict[str, dict[int, float]] = {}
    for step in range(0, steps, every):
        for name, (w, g) in seen[step].items():
            if w.numel() <= max_elements:
                for tag, a, b in zip(element_names(name, w.shape), w.reshape(-1), g.reshape(-1)):
                    curves.setdefault(f"w/{tag}", {})[step] = float(a)
                    curves.setdefault(f"g/{tag}", {})[step] = float(b)
            else:
                curves.setdefault(f"w/{name}.norm", {})[step] = float(torch.linalg.vector_norm(w))
                curves.setdefault(f"g/{name}.norm", {})[step] = float(torch.linalg.vector_norm(g))
    for name, w in final.items():
        if w.numel() <= max_elements:
            for tag, a in zip(element_names(name, w.shape), w.reshape(-1)):
                curves[f"w/{tag}"][steps] = float(a)
        else:
            curves[f"w/{name}.norm"][steps] = float(torch.linalg.vector_norm(w))
    return curves


def logged(tmp_path, model, optimizer, steps, every, clip="", hook=""):
    (tmp_path / "research.py").write_text(textwrap.dedent(RESEARCH))
    spec = tmp_path / "values.yaml"
    spec.write_text(
        SPEC.format(model=model, optimizer=optimizer, steps=steps, every=every, clip=clip, hook=hook)
    )
    code, out, err = trainer(tmp_path, "run", "values.yaml", "--logdir", "logs", "--quiet")
    assert code == 0, out + err
    dataset = data.load(data.SeedToyData(), tmp_path)  # the spec's data: the notebook's ten rows
    values = scalars(tmp_path / "logs" / "values" / "base")
    return {tag: v for tag, v in values.items() if tag[:2] in ("w/", "g/")}, dataset


def module(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("research_reference", tmp_path / "research.py")
    found = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(found)
    return found


def test_an_optimizer_that_rebinds_data_is_logged_step_by_step(tmp_path):
    got, dataset = logged(tmp_path, "research:Fixed", "{kind: 'research:Rebind', lr: 0.05}", 200, 10)
    research = module(tmp_path)
    model = research.Fixed()
    seen, final = reference(
        model, research.Rebind(model.parameters(), lr=0.05), dataset.train.x, dataset.train.y, 200
    )
    want = expected_curves(seen, final, 10, 200)
    assert set(got) == set(want)
    assert got == want  # bit for bit: float32 values, as the event file holds them
    assert len(set(got["w/linear.weight[0]"].values())) > 20  # the curve moves


def test_a_parameter_replaced_mid_run_and_clipped_gradients_are_logged_as_the_model_holds_them(tmp_path):
    got, dataset = logged(
        tmp_path,
        "research:Fixed",
        "{kind: sgd, lr: 0.05}",
        120,
        5,
        clip=", clip_grad_norm: 0.2",
        hook=", hook: 'research:replace'",
    )
    research = module(tmp_path)
    model = research.Fixed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen, final = reference(
        model, optimizer, dataset.train.x, dataset.train.y, 120, clip=0.2, hook=research.replace
    )
    assert got == expected_curves(seen, final, 5, 120)


def test_a_large_model_with_chunks_that_log_no_step_is_logged_right(tmp_path):
    got, dataset = logged(tmp_path, "research:Big", "{kind: 'research:Rebind', lr: 0.01}", 300, 150)
    research = module(tmp_path)
    model = research.Big()
    seen, final = reference(
        model, research.Rebind(model.parameters(), lr=0.01), dataset.train.x, dataset.train.y, 300
    )
    want = expected_curves(seen, final, 150, 300)
    assert set(got) == set(want)
    exact = [tag for tag in want if not tag.endswith(".norm")]
    assert {t: got[t] for t in exact} == {t: want[t] for t in exact}
    for tag in set(want) - set(exact):  # summed in another order than torch.linalg.vector_norm
        assert got[tag] == pytest.approx(want[tag], rel=1e-4), tag
