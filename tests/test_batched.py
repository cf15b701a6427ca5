"""The batched engine against the loop engine: the same runs trained both ways give the same weights,
the same logged scalars and histograms, and the same records; faults inside a group stay with
their run; what cannot be batched falls back with its reason."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import read_events

from trainer.executors.driver import Options, run_all
from trainer.kinds.optim import build_schedule
from trainer.run.job import execute_unit
from trainer.run.rundir import data_digest
from trainer.spec.sweep import plan
from trainer.spec.units import Unit, units_of
from trainer.training.batched import train_group
from trainer.training.batched_optim import rates
from trainer.training.loop import train

RTOL, ATOL = 1e-5, 1e-6  # float32: relative, with a floor for values near zero


def random_spec(seed: int) -> tuple[str, bool]:
    """A random configuration the batched engine takes, as YAML with a sweep of rates and seeds;
    whether the run is bit-identical to the loop engine's (plain SGD)."""
    pick = random.Random(seed)
    optimizer = pick.choice(
        [
            {"kind": "sgd"},
            {"kind": "sgd", "momentum": 0.9, "weight_decay": 0.01},
            {"kind": "sgd", "momentum": 0.5, "nesterov": True},
            {"kind": "adam", "weight_decay": 0.01},
            {"kind": "adamw", "amsgrad": True, "betas": [0.8, 0.99]},
            {"kind": "adam", "eps": 1e-6},
        ]
    )
    schedule = pick.choice(
        [
            {"kind": "constant"},
            {"kind": "step", "step_size": 20, "gamma": 0.5},
            {"kind": "cosine"},
            {"kind": "exponential", "gamma": 0.99},
        ]
    )
    problem = pick.choice(
        [
            {
                "data": {"kind": "seed_toy"},
                "model": {"kind": "linear"},
                "loss": {"kind": "l1", "reduction": "sum"},
            },
            {
                "data": {"kind": "synthetic", "rows": 40, "features": 3, "noise": 0.1, "validation": 0.25},
                "model": {"kind": "linear", "bias": True},
                "loss": {"kind": "mse"},
                "eval": {"every": 7, "metrics": ["mae", "rmse"]},
            },
            {
                "data": {"kind": "synthetic", "rows": 30, "features": 5},
                "model": {
                    "kind": "mlp",
                    "hidden": [6, 5],
                    "activation": pick.choice(["relu", "tanh", "gelu"]),
                },
                "loss": {"kind": "huber"},
                "log": {"max_elements": 8, "histograms_every": 3},
            },
        ]
    )
    train_settings = {
        "steps": 60,
        "batch_size": pick.choice([1, 5, "full"]),
        "sampling": pick.choice(["with_replacement", "shuffle"])
        if "rows" not in problem["data"]
        else "with_replacement",
    }
    if pick.random() < 0.3:
        train_settings["clip_grad_norm"] = 0.5
    lr = [0.01, 0.05] if optimizer["kind"] == "sgd" else [0.003, 0.02]
    spec = {
        "name": f"eq{seed}",
        **problem,
        "optimizer": optimizer,
        "schedule": schedule,
        "train": train_settings,
        "sweep": {"optimizer.lr": lr, "train.seed": [0, 1]},
    }
    # Bit-identical where torch's kernels and ours round alike: SGD on a linear model without bias.
    exact = (
        optimizer == {"kind": "sgd"}
        and "clip_grad_norm" not in train_settings
        and problem["model"] == {"kind": "linear"}
    )
    return json.dumps(spec), exact


def sweep(spec_path: str, logdir: Path, engine: str) -> list:
    runs = plan([spec_path], [f"train.engine={engine}"])
    report = run_all(runs, Options(logdir=logdir, workers=0))
    assert not report.failed, report.failed
    return runs


def close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    return abs(a - b) <= ATOL + RTOL * abs(b)


@pytest.mark.parametrize("seed", range(8))
def test_batched_equals_loop(tmp_path: Path, seed: int):
    text, exact = random_spec(seed)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    runs = sweep(str(spec), tmp_path / "loop", "loop")
    sweep(str(spec), tmp_path / "batched", "batched")
    for run in runs:
        loop_folder, batched_folder = tmp_path / "loop" / run.folder, tmp_path / "batched" / run.folder
        a = json.loads((loop_folder / "record.json").read_text())
        b = json.loads((batched_folder / "record.json").read_text())
        assert (a["engine"]["name"], b["engine"]) == ("loop", {"name": "batched", "runs": 4})
        assert (a["status"], a["steps_done"]) == (b["status"], b["steps_done"])
        for name, values in a["final_weights"].items():
            assert all(close(x, y) for x, y in zip(b["final_weights"][name], values)), name
        assert a["metrics"].keys() == b["metrics"].keys()
        for key, value in a["metrics"].items():
            assert close(b["metrics"][key], value), (key, b["metrics"][key], value)
        if exact:
            assert a["weights_sha256"] == b["weights_sha256"]
        ea, eb = read_events(loop_folder), read_events(batched_folder)
        assert ea.Tags()["scalars"] == eb.Tags()["scalars"]
        for tag in ea.Tags()["scalars"]:
            sa, sb = ea.Scalars(tag), eb.Scalars(tag)
            assert [e.step for e in sa] == [e.step for e in sb], tag
            assert all(close(y.value, x.value) for x, y in zip(sa, sb)), tag
        assert ea.Tags()["histograms"] == eb.Tags()["histograms"]
        for tag in ea.Tags()["histograms"]:
            ha, hb = ea.Histograms(tag), eb.Histograms(tag)
            assert [e.step for e in ha] == [e.step for e in hb], tag
            for x, y in zip(ha, hb):
                x, y = x.histogram_value, y.histogram_value
                assert (x.num, len(x.bucket)) == (y.num, len(y.bucket)), tag
                for field in ("min", "max", "sum_squares"):
                    assert close(getattr(y, field), getattr(x, field)), (tag, field)
                # A sum of values that cancel is as exact as its terms: relative to the sum of their sizes.
                assert abs(y.sum - x.sum) <= ATOL + RTOL * (x.num * x.sum_squares) ** 0.5, tag
                assert all(close(q, p) for p, q in zip(x.bucket_limit, y.bucket_limit)), tag
                assert sum(abs(p - q) for p, q in zip(x.bucket, y.bucket)) <= 2, (
                    tag
                )  # an edge's element may move


TOY = """\
name: toy
data: {kind: seed_toy}
model: {kind: linear}
loss: {kind: l1, reduction: sum}
optimizer: {kind: sgd, lr: 0.05, momentum: 0.9}
train: {steps: STEPS, batch_size: 2}
sweep:
  optimizer.lr: LRS
  train.seed: [0, 1, 2]
"""


def toy(tmp_path: Path, steps: int = 300, lrs: str = "[0.01, 0.1]") -> str:
    path = tmp_path / "toy.yaml"
    path.write_text(TOY.replace("STEPS", str(steps)).replace("LRS", lrs))
    return str(path)


def test_a_run_does_not_depend_on_the_other_runs_of_its_program(tmp_path: Path):
    runs = plan([toy(tmp_path)])
    together = train_group(runs)
    apart = train_group(runs[:1]) + train_group(runs[1:4]) + train_group(runs[4:])
    assert [o.weights_sha256 for o in together] == [o.weights_sha256 for o in apart]
    assert [o.metrics for o in together] == [o.metrics for o in apart]


def test_a_diverging_run_is_marked_at_its_own_step_and_costs_the_others_nothing(tmp_path: Path):
    spec = tmp_path / "div.yaml"
    spec.write_text(
        textwrap.dedent(
            """\
            name: div
            data: {kind: synthetic, rows: 50, features: 4}
            model: {kind: linear}
            loss: {kind: mse}
            optimizer: {kind: sgd}
            train: {steps: 1500, batch_size: 10}
            sweep:
              optimizer.lr: [0.01, 5.0, 0.1]
            """
        )
    )
    runs = plan([str(spec)])
    batched = train_group(runs)
    loop = [train(run) for run in runs]
    assert [o.status for o in batched] == ["complete", "diverged", "complete"]
    assert batched[1].metrics["diverged_step"] == loop[1].metrics["diverged_step"] < 1000
    assert batched[1].steps_done == loop[1].steps_done
    alone = train_group([runs[0], runs[2]])
    assert [o.weights_sha256 for o in alone] == [batched[0].weights_sha256, batched[2].weights_sha256]
    assert [o.metrics for o in alone] == [batched[0].metrics, batched[2].metrics]


def test_an_interrupted_group_leaves_its_runs_unfinished_and_the_rerun_trains_only_those(tmp_path: Path):
    spec = toy(tmp_path, steps=1500)
    runs = plan([spec])
    whole = tmp_path / "whole"
    run_all(runs, Options(logdir=whole, workers=0))
    logdir = tmp_path / "logs"
    # Two runs finish first on their own; the group of the other four is stopped after its first chunk.
    run_all(runs[:2], Options(logdir=logdir, workers=0))
    summaries = execute_unit(Unit(tuple(runs[2:]), "batched"), logdir, should_stop=lambda: True)
    assert [s.status for s in summaries] == ["interrupted"] * 4
    records = [json.loads((logdir / r.folder / "record.json").read_text()) for r in runs[2:]]
    assert [r["steps_done"] for r in records] == [1000] * 4
    report = run_all(runs, Options(logdir=logdir, workers=0))
    assert sorted(s.folder for s in report.ran) == sorted(r.folder for r in runs[2:])
    for run in runs:
        a = json.loads((whole / run.folder / "record.json").read_text())
        b = json.loads((logdir / run.folder / "record.json").read_text())
        assert (b["status"], b["weights_sha256"], b["metrics"]) == (
            "complete",
            a["weights_sha256"],
            a["metrics"],
        )
    rerun = json.loads((logdir / runs[2].folder / "record.json").read_text())
    assert rerun["engine"] == {"name": "batched", "runs": 4}


def test_auto_groups_what_it_can_and_says_why_the_rest_runs_alone(tmp_path: Path, write_spec):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "hooks.py").write_text(
        "def hook(writer, step, model, **context):\n    pass\n"
    )
    text = TOY.replace("STEPS", "50")
    grid = write_spec("grid", text.replace("LRS", "[0.01, 0.1]").replace("name: toy", "name: grid"))
    single = write_spec("single", text.split("sweep:")[0].replace("name: toy", "name: single"))
    hooked = write_spec(
        "hooked",
        text.replace("LRS", "[0.01]").replace("name: toy", "name: hooked") + "log: {hook: 'hooks:hook'}\n",
    )
    runs = plan([grid, single, hooked])
    units = units_of(runs, workers=2)
    assert sorted((u.engine, len(u.runs)) for u in units) == [("batched", 3)] * 2 + [("loop", 1)] * 4
    run_all(runs, Options(logdir=tmp_path / "logs", workers=0))
    engines = {
        r.folder: json.loads((tmp_path / "logs" / r.folder / "record.json").read_text())["engine"]
        for r in runs
    }
    alone = [e for f, e in engines.items() if f.startswith("single/")]
    assert alone == [{"name": "loop", "reason": "no other run of its spec can share its program"}]
    assert all(
        e == {"name": "loop", "reason": "log.hook is called with each run's own model"}
        for f, e in engines.items()
        if f.startswith("hooked/")
    )
    assert sum(e["name"] == "batched" for e in engines.values()) == 6


def test_the_engine_is_not_part_of_a_runs_configuration(tmp_path: Path):
    spec = toy(tmp_path, steps=50)
    logdir = tmp_path / "logs"
    run_all(plan([spec], ["train.engine=loop"]), Options(logdir=logdir, workers=0))
    report = run_all(plan([spec], ["train.engine=batched"]), Options(logdir=logdir, workers=0))
    assert not report.ran and len(report.kept) == 6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_program_matches_the_cpu_program(tmp_path: Path):
    runs = plan([toy(tmp_path)], ["train.device=cpu"])
    cpu = train_group(runs)
    cuda = train_group(plan([toy(tmp_path)], ["train.device=cuda"]))
    assert [o.status for o in cuda] == [o.status for o in cpu]
    for a, b in zip(cpu, cuda):
        assert b.device.startswith("cuda")
        for name, values in a.final_weights.items():
            assert all(close(y, x) for x, y in zip(values, b.final_weights[name]))
        for key, value in a.metrics.items():
            assert close(b.metrics[key], value) if isinstance(value, float) else b.metrics[key] == value


@pytest.mark.parametrize(
    "schedule",
    [
        {"kind": "constant"},
        {"kind": "step", "step_size": 7, "gamma": 0.5},
        {"kind": "cosine", "t_max": 13, "eta_min": 0.001},
        {"kind": "exponential", "gamma": 0.9},
    ],
    ids=lambda s: s["kind"],
)
def test_the_rates_are_those_a_torch_optimizer_gets_from_its_schedule(tmp_path: Path, schedule: dict):
    path = tmp_path / "rates.yaml"
    path.write_text(
        TOY.replace("STEPS", "40").replace("LRS", "[0.01, 0.1]") + f"schedule: {json.dumps(schedule)}\n"
    )
    runs = plan([str(path)])
    table = rates(runs, 40)
    for run, row in zip(runs, table):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=run.config.optimizer.lr)
        scheduler = build_schedule(run.config.schedule, optimizer, 40)
        expected = []
        for _ in range(40):
            expected.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        assert row.tolist() == expected


NEIGHBOURS = """\
name: neighbours
data: {kind: seed_toy}
model: {kind: linear, bias: false}
loss: {kind: l1, reduction: sum}
optimizer: {kind: sgd, lr: 0.1}
train: {steps: 200, batch_size: 1}
eval: {every: 25}
log: {every: 5, histograms_every: 20}
sweep:
  optimizer:
    - {kind: sgd, weight_decay: 0.1}
    - {kind: sgd, momentum: 0.9, weight_decay: 0.01}
    - {kind: sgd, momentum: 0.5, nesterov: true, weight_decay: 0.1}
  optimizer.lr: [0.01, 0.03]
  train.seed: [0, 1, 2]
"""


def _series(folder: Path) -> dict:
    acc = read_events(folder)
    values = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    values.update(
        {
            tag: [(e.step, e.histogram_value.bucket) for e in acc.Histograms(tag)]
            for tag in acc.Tags()["histograms"]
        }
    )
    return values


def test_a_runs_numbers_do_not_depend_on_the_runs_that_share_its_program(tmp_path: Path):
    """SGD with weight decay, momentum and nesterov: the grid in groups of six (one per optimizer),
    in groups of two (one seed at a time), and each run alone (as `--set` reproduces it) give the
    same bits, logged series included."""
    spec = tmp_path / "neighbours.yaml"
    spec.write_text(NEIGHBOURS)
    whole = plan([str(spec)], ["train.engine=batched"])
    assert sorted((u.engine, len(u.runs)) for u in units_of(whole)) == [("batched", 6)] * 3
    run_all(whole, Options(logdir=tmp_path / "whole", workers=0))
    for seed in (0, 1, 2):  # the runs of one seed: groups of two
        pairs = plan([str(spec)], [f"train.seed={seed}"])
        assert sorted(len(u.runs) for u in units_of(pairs)) == [2, 2, 2]
        run_all(pairs, Options(logdir=tmp_path / "pairs", workers=0))
    for run in whole:
        record = json.loads((tmp_path / "whole" / run.folder / "record.json").read_text())
        assert record["engine"]["name"] == "batched"
        paired = json.loads((tmp_path / "pairs" / run.folder / "record.json").read_text())
        assert (paired["weights_sha256"], paired["metrics"]) == (record["weights_sha256"], record["metrics"])
        assert _series(tmp_path / "pairs" / run.folder) == _series(tmp_path / "whole" / run.folder)
        pins = [f"{key}={value}" for key, value in run.swept if key != "optimizer"]
        alone = plan([str(spec)], [f"optimizer={json.dumps(dict(run.swept)['optimizer'])}", *pins])
        (single,) = alone  # the same configuration, its engine aside
        assert data_digest(single.config_data) == data_digest(run.config_data)
        run_all([single], Options(logdir=tmp_path / "alone", workers=0))
        got = json.loads((tmp_path / "alone" / single.folder / "record.json").read_text())
        assert got["engine"]["name"] == "loop"
        assert got["weights_sha256"] == record["weights_sha256"], run.folder
        assert got["metrics"] == record["metrics"], run.folder
        assert _series(tmp_path / "alone" / single.folder) == _series(tmp_path / "whole" / run.folder), (
            run.folder
        )


MATRIX_PRODUCTS = {"mm", "bmm", "addmm", "baddbmm", "mv", "dot", "addmv", "matmul"}


def _matrix_products(step) -> list[tuple[str, tuple[tuple[int, ...], ...]]]:
    """The matrix products a training step dispatches, each with the shapes of one run's operands:
    (op, per-run shapes), the leading run dimension of a batched product left out."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in MATRIX_PRODUCTS:
                shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
                seen.append((name, tuple(s[1:] for s in shapes) if name in ("bmm", "baddbmm") else shapes))
            return func(*args, **(kwargs or {}))

    with Record():
        step()
    return seen


@pytest.mark.parametrize("model", ["{kind: linear, bias: false}", "{kind: mlp, hidden: [6, 5], bias: true}"])
@pytest.mark.parametrize("batch", [1, "full"])
def test_both_engines_compute_a_run_with_the_same_kernels(tmp_path: Path, model: str, batch):
    """Why a run's numbers cannot depend on its neighbours, on any processor: one run alone (the
    loop engine) and a run among six (the batched engine) go through the same matrix products, of
    the same per-run shapes, forward and backward. BLAS's gemm and bmm's own loop sum a small
    product in orders that agree on some processors only; neither engine may reach for gemm."""
    spec = tmp_path / "kernels.yaml"
    spec.write_text(
        NEIGHBOURS.replace("train: {steps: 200, batch_size: 1}", f"train: {{steps: 1, batch_size: {batch}}}")
        .replace("model: {kind: linear, bias: false}", f"model: {model}")
        .replace("data: {kind: seed_toy}", "data: {kind: synthetic, rows: 12, features: 4}")
    )
    runs = plan([str(spec)], ["train.engine=batched"])
    group = [r for r in runs if r.config.train.seed == 0][:6]
    train(group[0])  # the synthetic rows are drawn once (a product of their own) and kept
    alone = _matrix_products(lambda: train(group[0]))
    together = _matrix_products(lambda: train_group(group))
    assert ("bmm", ((1 if batch == 1 else 12, 4), (4, 6 if "mlp" in model else 1))) in alone
    assert not {name for name, _ in alone + together} & {"mm", "addmm"}, alone  # no gemm, in either
    assert sorted(set(alone)) == sorted(set(together))


def test_auto_trains_adam_alone_so_that_it_is_the_run_reproduced_alone(tmp_path: Path):
    spec = tmp_path / "adam.yaml"
    spec.write_text(NEIGHBOURS.replace("kind: sgd, weight_decay: 0.1}", "kind: adam, weight_decay: 0.01}"))
    units = units_of(plan([str(spec)]))
    adam = [u for u in units if u.runs[0].config.optimizer.kind == "adam"]
    assert adam and all(u.engine == "loop" and "adam's batched update can differ" in u.reason for u in adam)
    assert any(u.engine == "batched" for u in units)  # its SGD neighbours still share programs
