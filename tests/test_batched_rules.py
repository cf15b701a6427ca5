"""The batched engine reads an optimizer kind from its registry entry: a new kind's update rule is
all it takes to train it batched, with the same bits as the loop engine; the state a rule declares
is sliced and stacked alike for every kind; a per-run key the engine cannot make per run is refused
in one sentence. The built-in metrics and activations are one code for both engines."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
import torch

from trainer.core.strict import at_least, below, greater_than, setting
from trainer.kinds import metrics
from trainer.kinds import registry as kinds
from trainer.kinds.layers import ACTIVATIONS
from trainer.kinds.models import MlpModel, Shape, build_model
from trainer.kinds.optim import AdamWOptimizer, BatchedRule, RuleStep, SgdOptimizer, register_optimizer
from trainer.spec.sweep import plan
from trainer.spec.units import group_key, units_of
from trainer.training.batched import forward, train_group
from trainer.training.batched_optim import Optimizer
from trainer.training.loop import train


@dataclass(frozen=True, kw_only=True)
class HeavyBallOptimizer:
    """Heavy-ball momentum, a kind of this test's own."""

    kind: Literal["heavy_ball"] = "heavy_ball"
    lr: float = setting(0.05, greater_than(0), doc="learning rate")
    beta: float = setting(0.5, at_least(0), below(1), doc="momentum factor")
    flag: bool = setting(False, doc="a setting of the whole program (the numbers are the same either way)")


class HeavyBall(torch.optim.Optimizer):
    """The loop engine's optimizer of the kind: velocity = beta * velocity + grad; param -= lr * velocity."""

    def __init__(self, params: Any, lr: float, beta: float):
        super().__init__(params, {"lr": lr, "beta": beta})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = p.grad.clone()
                else:
                    state["velocity"].mul_(group["beta"]).add_(p.grad)
                p.add_(state["velocity"], alpha=-group["lr"])


def _heavy_ball(step: RuleStep, params: list[Any], grads: list[Any]) -> list[Any]:
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        shape = (-1,) + (1,) * (p.dim() - 1)
        velocity = step.state["velocity"][i]
        velocity = g.clone() if velocity is None else velocity * step.columns["beta"].view(shape) + g
        step.state["velocity"][i] = velocity
        out.append(p.addcmul(velocity, -step.lr.view(shape)))
    return out


HEAVY_BALL_RULE = BatchedRule(
    per_run=("lr", "beta"),
    state=lambda spec: ("velocity",),
    columns=lambda settings, column: {"beta": column([s.beta for s in settings])},
    update=_heavy_ball,
    exact=True,
)


@pytest.fixture
def heavy_ball():
    """The kind registered for one test, with its update rule as its whole batched engine."""
    kind = register_optimizer(
        HeavyBallOptimizer, lambda kind, spec, params: HeavyBall(params, spec.lr, spec.beta), HEAVY_BALL_RULE
    )
    yield kind
    del kinds.family("optimizer").kinds["heavy_ball"]


SPEC = """\
name: heavy
data: {kind: synthetic, rows: 40, features: 3, validation: 0.25}
model: {kind: MODEL}
loss: {kind: mse}
eval: {every: 7, metrics: [mae, rmse]}
train: {steps: 80, batch_size: 5}
log: {every: 3, histograms_every: 10}
sweep:
  optimizer.lr: LRS
  train.seed: [0, 1]
"""


def heavy_runs(tmp_path: Path, model: str = "linear", lrs: str = "[0.01, 0.02]", betas=(0.5, 0.8)) -> list:
    """The spec's runs (planned with SGD), each with the heavy-ball kind in its place, one per beta."""
    path = tmp_path / "heavy.yaml"
    path.write_text(SPEC.replace("MODEL", model).replace("LRS", lrs))
    runs = []
    for beta in betas:
        for run in plan([str(path)]):
            spec = HeavyBallOptimizer(lr=run.config.optimizer.lr, beta=beta)
            runs.append(dataclasses.replace(run, config=dataclasses.replace(run.config, optimizer=spec)))
    return runs


@pytest.mark.parametrize("model", ["linear", "mlp, hidden: [4]"])
def test_a_new_optimizer_kind_trains_batched_from_its_rule_alone_with_the_loop_engines_bits(
    tmp_path, heavy_ball, model
):
    runs = heavy_runs(tmp_path, model)
    units = units_of(runs)
    assert [(u.engine, len(u.runs)) for u in units] == [("batched", 8)]  # exact: 'auto' batches it
    together = train_group(runs)
    alone = [train(run) for run in runs]
    assert [o.status for o in together] == ["complete"] * 8
    assert [o.weights_sha256 for o in together] == [o.weights_sha256 for o in alone]
    assert [o.metrics for o in together] == [o.metrics for o in alone]


def test_a_run_leaving_the_program_takes_nothing_of_a_new_kinds_state_from_the_others(tmp_path, heavy_ball):
    # The second rate diverges: its run leaves the program, the others' velocities are sliced out.
    runs = heavy_runs(tmp_path, lrs="[0.01, 3.0, 0.05]", betas=(0.9,))
    together = train_group(runs)
    alone = [train(run) for run in runs]
    assert [o.status for o in together] == [o.status for o in alone]
    assert {o.status for o in together} == {"complete", "diverged"}
    assert [o.weights_sha256 for o in together] == [o.weights_sha256 for o in alone]
    assert [o.metrics for o in together] == [o.metrics for o in alone]


def test_the_settings_not_per_run_keep_runs_in_separate_programs(tmp_path, heavy_ball):
    runs = heavy_runs(tmp_path, betas=(0.5,))
    other = dataclasses.replace(
        runs[0],
        config=dataclasses.replace(
            runs[0].config, optimizer=dataclasses.replace(runs[0].config.optimizer, flag=True)
        ),
    )
    assert len({group_key(run) for run in runs}) == 1  # lr differs per run: one program
    assert group_key(other) != group_key(runs[0])


@pytest.mark.parametrize(
    "per_run, message",
    [
        (
            ("lr", "flag"),
            "optimizer kind 'heavy_ball': per-run key 'flag' is a bool setting; only a number "
            "or a tuple of numbers can differ between the runs of one program",
        ),
        (
            ("lr", "momentum"),
            "optimizer kind 'heavy_ball': per-run key 'momentum' is not one of its settings (lr, beta, flag)",
        ),
    ],
)
def test_a_per_run_key_the_engine_cannot_make_per_run_is_one_sentence_naming_it(per_run, message):
    rule = dataclasses.replace(HEAVY_BALL_RULE, per_run=per_run)
    with pytest.raises(ValueError) as caught:
        register_optimizer(HeavyBallOptimizer, lambda kind, spec, params: None, rule)
    assert str(caught.value) == message
    assert "heavy_ball" not in kinds.builtin("optimizer")  # nothing was registered


def _program(settings: list[Any]) -> list[Any]:
    return [SimpleNamespace(config=SimpleNamespace(optimizer=s)) for s in settings]


def _train(optimizer: Optimizer, params: list[torch.Tensor], steps: int, rows: list[int]) -> list:
    """Updates with gradients that depend on the parameters (so on the state), each of the rows of
    a program of three at its own rate."""
    lr_64 = torch.linspace(0.01, 0.02, 3, dtype=torch.float64)[rows]
    for _ in range(steps):
        grads = [torch.sin(3 * p) + 0.1 for p in params]
        params = optimizer.step(params, grads, lr_64.float(), lr_64)
    return params


@pytest.mark.parametrize(
    "settings",
    [
        [
            SgdOptimizer(momentum=m, nesterov=True, weight_decay=d)
            for m, d in ((0.9, 0.0), (0.5, 0.1), (0.7, 0.01))
        ],
        [
            AdamWOptimizer(betas=(b, 0.99), amsgrad=True, eps=e)
            for b, e in ((0.9, 1e-8), (0.8, 1e-6), (0.7, 1e-7))
        ],
    ],
    ids=["sgd", "adamw"],
)
def test_a_runs_own_state_taken_apart_and_stacked_goes_on_with_the_same_bits(settings):
    torch.manual_seed(0)
    start = [torch.randn(3, 4, 2), torch.randn(3, 4)]
    every = [0, 1, 2]
    reference = _train(Optimizer(_program(settings), start), start, 10, every)

    first = Optimizer(_program(settings), start)
    middle = _train(first, start, 4, every)
    saved = [first.run_state(row) for row in range(3)]
    assert set(saved[0]["state"]) == set(first.rule.state(settings[0])) != set()
    order = [2, 0]  # two of the runs, in another order, as a resumed program could hold them
    again = Optimizer(_program([settings[r] for r in order]), [p[order] for p in middle])
    again.load([saved[r] for r in order])
    resumed = _train(again, [p[order] for p in middle], 6, order)
    assert all(torch.equal(a, b[order]) for a, b in zip(resumed, reference))

    kept = Optimizer(_program(settings), start)
    params = _train(kept, start, 4, every)
    kept.keep(torch.tensor(order))  # a run left the program
    params = _train(kept, [p[order] for p in params], 6, order)
    assert all(torch.equal(a, b[order]) for a, b in zip(params, reference))


@pytest.mark.parametrize("name", sorted(metrics.BUILTIN))
@pytest.mark.parametrize("outputs", [1, 3])
def test_a_builtin_metric_of_one_run_is_its_value_among_many(name, outputs):
    generator = torch.Generator().manual_seed(outputs)
    output = torch.randn(4, 37, outputs, generator=generator)
    target = torch.randint(0, 2 if outputs == 1 else outputs, (4, 37), generator=generator).float()
    if name != "accuracy":
        target = torch.randn(4, 37, *([outputs] if outputs > 1 else []), generator=generator)
    metric = metrics.BUILTIN[name]
    together = metric.over_runs(output, target)
    assert together.shape == (4,)
    assert all(torch.equal(metric.compute(output[r], target[r]), together[r]) for r in range(4))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_an_mlp_computes_alike_in_both_engines(activation):
    spec = MlpModel(hidden=(5, 3), activation=activation)
    model = build_model(spec, Shape(features=4, outputs=2), seed=0)
    assert {type(m) for m in model} >= {ACTIVATIONS[activation]}
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    params = [p.detach().unsqueeze(0) for p in model.parameters()]
    with torch.no_grad():
        assert torch.equal(forward(spec, params, x)[0], model(x))
