"""Sweeps that search: every method draws its trials (random and Sobol the same ones on any worker
count), replicates are crossed with every trial and averaged for Optuna, the pruners stop runs that
are behind (in a batched group too, at no cost to the others), and a study survives kill -9 and a
second sweep on the same folder; every trial is a TensorBoard run with real HParams columns."""

from __future__ import annotations

import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
from conftest import scalars
from test_faults import start, trainer, wait_until
from test_tensorboard_live import check_hparams_view, tensorboard  # noqa: F401  (a fixture)

import trainer as api

EXAMPLE = """\
name: lr-search
data:      {kind: seed_toy}
model:     {kind: linear, bias: false}
loss:      {kind: l1, reduction: mean}
optimizer: {kind: sgd, lr: 0.1}
train:     {steps: 1000, batch_size: 1, seed: 0}
eval:      {every: 50}
search:
  method: tpe               # grid (the default: every combination), random, sobol, tpe
  trials: 40                # configurations to draw (grid: all of them)
  seed: 0                   # the sampler's seed: the same spec draws the same trials
  metric: final/train/loss  # what tpe minimizes and pruning compares; default: the main evaluation loss
  direction: minimize
  prune: {kind: asha, min_steps: 100, reduction_factor: 3}   # none (default), median, asha
sweep:
  optimizer.lr: {loguniform: [0.001, 0.3]}
  optimizer.weight_decay: {uniform: [0.0, 0.1]}
  train.batch_size: [1, 5, full]   # a list: a grid axis under grid, a categorical choice otherwise
  train.seed: [0, 1]               # replicates: every drawn configuration runs once per seed
"""

SMALL = """\
name: small
data: {{kind: seed_toy}}
model: {{kind: linear, bias: false}}
loss: {{kind: l1, reduction: mean}}
optimizer: {{kind: sgd, lr: 0.1}}
train: {{steps: {steps}, batch_size: 1, engine: {engine}}}
eval: {{every: 50}}
log: {{checkpoint_every: {checkpoint_every}}}
search: {{method: {method}, trials: {trials}, seed: 3, prune: {prune}}}
sweep:
  optimizer.lr: {{loguniform: [0.0001, 0.3]}}
  train.seed: {seeds}
"""
NAME = re.compile(r"^trial=\d{3},lr=[0-9.e-]+,weight_decay=[0-9.e-]+,batch_size=(1|5|full),seed=[01]$")


def small(
    folder: Path,
    method: str = "random",
    trials: int = 6,
    prune: str = "none",
    seeds: str = "[0]",
    steps: int = 400,
    engine: str = "auto",
    checkpoint_every: str = "auto",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "small.yaml"
    path.write_text(
        SMALL.format(
            method=method,
            trials=trials,
            prune=prune,
            seeds=seeds,
            steps=steps,
            engine=engine,
            checkpoint_every=checkpoint_every,
        )
    )
    return path


def records(logdir: Path, experiment: str) -> dict[str, dict]:
    folder = logdir / experiment
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/record.json"))}


def study(logdir: Path, experiment: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(logdir / experiment / "study.journal")))
    return optuna.load_study(study_name=experiment, storage=storage)


def trial_means(recorded: dict[str, dict], metric: str) -> dict[int, float]:
    by_trial: dict[int, list[float]] = {}
    for record in recorded.values():
        by_trial.setdefault(record["trial"]["number"], []).append(record["metrics"][metric])
    return {n: math.fsum(v) / len(v) for n, v in by_trial.items()}


# --- the example, verbatim -----------------------------------------------------------


@pytest.mark.slow
def test_the_example_searches_prunes_and_every_trial_is_a_run(tmp_path):
    spec = tmp_path / "lr-search.yaml"
    spec.write_text(EXAMPLE)
    code, out, err = trainer(tmp_path, "check", spec)
    assert code == 0, out + err
    assert "40 trials x 2 replicates, drawn as the study goes" in out
    assert "optimizer.lr: loguniform [0.001, 0.3]" in out and "train.seed: replicates 0, 1" in out

    logdir = tmp_path / "logs"
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--workers", "2")
    assert code == 0, out + err
    recorded = records(logdir, "lr-search")
    assert len(recorded) == 80 and all(NAME.match(name) for name in recorded), sorted(recorded)[:3]
    numbers = {r["trial"]["number"] for r in recorded.values()}
    assert numbers == set(range(40))
    states = {r["status"] for r in recorded.values()}
    assert states == {"complete", "pruned"}, states

    found = study(logdir, "lr-search")
    trials = found.get_trials()
    assert len(trials) == 40
    by_number = {t.user_attrs["trial"]: t for t in trials}
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    # Optuna saw each complete trial's mean over its two seeds.
    complete = {n for n, t in by_number.items() if t.state.name == "COMPLETE"}
    assert complete
    for number in complete:
        runs = [r for r in recorded.values() if r["trial"]["number"] == number]
        assert len(runs) == 2 and {r["seed"] for r in runs} == {0, 1}
        mean = math.fsum(r["metrics"]["final/train/loss"] for r in runs) / 2
        assert by_number[number].value == pytest.approx(mean, rel=1e-12)
        assert by_number[number].params["optimizer.lr"] == runs[0]["trial"]["params"]["optimizer.lr"]

    # A pruned run keeps its curves up to where it stopped, and says where that was.
    pruned = [(n, r) for n, r in recorded.items() if r["status"] == "pruned"]
    for name, record in pruned[:5]:
        stopped = record["stopped"]["step"]
        assert 100 <= stopped < 1000 and record["steps_done"] < 1000
        curve = scalars(logdir / "lr-search" / name)["loss"]
        # Trained up to the step it was judged at, whose minibatch loss a batched group logs.
        assert record["steps_done"] == stopped and max(curve) == stopped
        assert record["metrics"].get("final/train/loss") is None
        assert record["metrics"]["final/pruned"] is True
    assert "pruning (asha) stopped" in out and "best: trial" in out
    trained = sum(r["steps_done"] for r in recorded.values())
    assert trained < 0.8 * 80 * 1000

    # status shows the pruned state and the step; report never counts a pruned run as complete.
    code, lines, err = trainer(tmp_path, "status", logdir, "--format", "json")
    assert code == 0, err
    rows = {row["run"]: row for row in map(json.loads, lines.splitlines())}
    name, record = pruned[0]
    assert rows[name]["state"] == "pruned" and rows[name]["steps"] == record["steps_done"]
    code, table, err = trainer(tmp_path, "status", logdir)
    line = next(line for line in table.splitlines() if line.startswith(f"lr-search/{name} "))
    assert line.split()[1:2] == ["pruned"] and f" {record['stopped']['step']} " in line
    groups = api.report(logdir)
    trial = record["trial"]["number"]
    row = groups[groups["group"].str.startswith(f"trial={trial:03d},")].iloc[0]
    assert row["complete"] < row["runs"] and math.isnan(row["mean"]) and math.isnan(row["rank"])
    best = groups[groups["rank"] == 1].iloc[0]
    assert best["complete"] == best["runs"] == 2


# --- methods, replicates, determinism ---------------------------------------------------------


@pytest.mark.parametrize("method", ["random", "sobol"])
def test_random_and_sobol_draw_the_same_trials_on_any_worker_count(tmp_path, method):
    spec = small(tmp_path, method, trials=8)
    code, listed, err = trainer(tmp_path, "sweep", spec, "--dry-run")
    assert code == 0, err
    assert "drawn trials (8):" in listed
    here = api.sweep(spec, tmp_path / "here", workers=0, quiet=True)
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", tmp_path / "pool", "--workers", "2")
    assert code == 0, out + err
    one, two = records(tmp_path / "here", "small"), records(tmp_path / "pool", "small")
    assert sorted(one) == sorted(two) == sorted(here["run"])
    assert len(one) == 8 and all(name in listed for name in one)
    assert {n: r["trial"]["params"] for n, r in one.items()} == {
        n: r["trial"]["params"] for n, r in two.items()
    }
    assert {n: r["weights_sha256"] for n, r in one.items()} == {
        n: r["weights_sha256"] for n, r in two.items()
    }
    lrs = sorted(r["trial"]["params"]["optimizer.lr"] for r in one.values())
    assert all(1e-4 <= lr <= 0.3 for lr in lrs) and len(set(lrs)) == 8
    if method == "sobol":  # a Sobol sequence covers the log range evenly: every decade-and-a-half gets one
        logs = sorted(math.log(lr / 1e-4) / math.log(0.3 / 1e-4) for lr in lrs)
        assert all(int(8 * x) == i or abs(8 * x - i) < 1.5 for i, x in enumerate(logs)), logs
    assert len(study(tmp_path / "here", "small").get_trials()) == 8


def test_sobol_and_random_draw_differently_and_the_seed_decides(tmp_path):
    def lrs(method: str, seed: int) -> list[float]:
        text = small(tmp_path / f"{method}{seed}", method).read_text().replace("seed: 3", f"seed: {seed}")
        plans = api.runs  # noqa: F841  (the API is imported; planning is the spec layer's)
        from trainer.spec.sweep import plan

        return [r.trial.params[0][1] for r in plan([_write(tmp_path / f"{method}{seed}.yaml", text)])]

    assert lrs("random", 3) == lrs("random", 3)
    assert lrs("random", 3) != lrs("random", 4)
    assert lrs("random", 3) != lrs("sobol", 3)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_replicates_are_crossed_with_every_trial_and_optuna_sees_their_mean(tmp_path):
    spec = small(tmp_path, "random", trials=3, seeds="[0, 1, 2]")
    frame = api.sweep(spec, tmp_path / "logs", workers=0, quiet=True)
    assert len(frame) == 9
    recorded = records(tmp_path / "logs", "small")
    for number in range(3):
        runs = [r for r in recorded.values() if r["trial"]["number"] == number]
        assert sorted(r["seed"] for r in runs) == [0, 1, 2]
        assert len({json.dumps(r["trial"]["params"]) for r in runs}) == 1
    means = trial_means(recorded, "final/train/loss")
    for trial in study(tmp_path / "logs", "small").get_trials():
        assert trial.value == pytest.approx(means[trial.user_attrs["trial"]], rel=1e-12)


def test_tpe_draws_from_the_results_so_far_in_this_process(tmp_path):
    spec = small(tmp_path, "tpe", trials=12)
    frame = api.sweep(spec, tmp_path / "logs", workers=0, quiet=True)
    assert len(frame) == 12 and set(frame["state"]) == {"complete"}
    trials = study(tmp_path / "logs", "small").get_trials()
    assert [t.user_attrs["trial"] for t in trials] == list(range(12))
    assert all(t.state.name == "COMPLETE" for t in trials)
    # Past its startup trials TPE draws nearer the good ones than uniformly at random.
    recorded = records(tmp_path / "logs", "small")
    assert {r["trial"]["number"] for r in recorded.values()} == set(range(12))


# --- pruning ---------------------------------------------------------------------------------


def test_median_pruning_stops_the_trials_behind_the_completed_ones(tmp_path):
    # A grid of learning rates, one after another: the first two complete, and those far behind
    # their median at min_steps are pruned there.
    path = tmp_path / "grid.yaml"
    path.write_text(
        SMALL.format(
            steps=600,
            engine="loop",
            checkpoint_every="auto",
            method="grid",
            trials=1,
            prune="{kind: median, min_steps: 100, startup_trials: 2}",
            seeds="[0]",
        )
        .replace("optimizer.lr: {loguniform: [0.0001, 0.3]}", "optimizer.lr: [0.1, 0.05, 0.00001, 0.000001]")
        .replace("trials: 1, ", "")
    )
    api.sweep(path, tmp_path / "logs", workers=0, quiet=True)
    recorded = records(tmp_path / "logs", "small")
    assert {n: r["status"] for n, r in recorded.items()} == {
        "lr=0.1,seed=0": "complete",
        "lr=0.05,seed=0": "complete",
        "lr=1e-05,seed=0": "pruned",
        "lr=1e-06,seed=0": "pruned",
    }
    for name in ("lr=1e-05,seed=0", "lr=1e-06,seed=0"):
        assert recorded[name]["stopped"]["step"] == 100 and recorded[name]["steps_done"] == 100
        assert max(scalars(tmp_path / "logs" / "small" / name)["loss"]) == 99
    states = {t.user_attrs["trial"]: t.state.name for t in study(tmp_path / "logs", "small").get_trials()}
    assert sorted(states.values()) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]


def test_asha_prunes_inside_a_batched_group_at_no_cost_to_the_others(tmp_path):
    common = dict(method="random", trials=9, steps=800, engine="batched")
    pruned = small(tmp_path / "asha", prune="{kind: asha, min_steps: 100, reduction_factor: 3}", **common)
    unpruned = small(tmp_path / "none", prune="none", **common)
    api.sweep(pruned, tmp_path / "asha-logs", workers=0, quiet=True)
    api.sweep(unpruned, tmp_path / "none-logs", workers=0, quiet=True)
    with_pruning, without = records(tmp_path / "asha-logs", "small"), records(tmp_path / "none-logs", "small")
    assert sorted(with_pruning) == sorted(without)
    assert all(r["engine"]["name"] == "batched" for r in with_pruning.values())
    states = [r["status"] for r in with_pruning.values()]
    assert "pruned" in states and "complete" in states
    for name, record in with_pruning.items():
        if record["status"] == "complete":  # trained in the same program as the pruned ones
            assert record["weights_sha256"] == without[name]["weights_sha256"], name
            assert record["metrics"]["final/train/loss"] == without[name]["metrics"]["final/train/loss"]
        else:
            assert record["steps_done"] < 800
            assert record["stopped"]["step"] >= 100
            curve = scalars(tmp_path / "asha-logs" / "small" / name)["loss"]
            # Stopped at the step it was judged at, before that step's update, as the loop engine stops.
            assert record["steps_done"] == record["stopped"]["step"] == max(curve)
            assert curve == {
                s: v
                for s, v in scalars(tmp_path / "none-logs" / "small" / name)["loss"].items()
                if s in curve
            }
    assert sum(r["steps_done"] for r in with_pruning.values()) < sum(
        r["steps_done"] for r in without.values()
    )


# --- what a spec gets wrong -------------------------------------------------------------------

BAD = "name: bad\ntrain: {{steps: 10}}\n{search}sweep:\n  optimizer.lr: {lr}\n  train.seed: {seed}\n"
RANDOM = "search: {method: random, trials: 3}\n"


@pytest.mark.parametrize(
    "search, lr, seed, expected",
    [
        (
            RANDOM,
            "{loguniform: [0, 1]}",
            "[0]",
            "bad.yaml:5: sweep.optimizer.lr.loguniform: a log scale needs a low bound above 0, got 0",
        ),
        (
            RANDOM,
            "{uniform: [0.5, 0.1]}",
            "[0]",
            "bad.yaml:5: sweep.optimizer.lr.uniform: the low bound must be below the high one, got [0.5, 0.1]",
        ),
        (
            RANDOM,
            "{uniform: [0.1]}",
            "[0]",
            "bad.yaml:5: sweep.optimizer.lr.uniform: must be two numbers [low, high], got [0.1]",
        ),
        (
            RANDOM,
            "{loguniforn: [0.001, 0.1]}",
            "[0]",
            "bad.yaml:5: sweep.optimizer.lr: must be a list of values or a distribution",
        ),
        (RANDOM, "{loguniforn: [0.001, 0.1]}", "[0]", "(did you mean 'loguniform'?)"),
        (
            RANDOM,
            "{uniform: [0.001, 0.1], log: true}",
            "[0]",
            "bad.yaml:5: sweep.optimizer.lr.log: is a setting of int; for real numbers use loguniform: [a, b]",
        ),
        (
            "",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "bad.yaml:4: sweep.optimizer.lr: a distribution is drawn from by a search, but search.method is "
            "grid (no search: section); set search.method to random, sobol or tpe",
        ),
        (
            "search: {method: random}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "bad.yaml:3: search.trials: missing; give how many configurations random draws",
        ),
        (
            "search: {method: rnadom, trials: 3}\n",
            "[0.1]",
            "[0]",
            "bad.yaml:3: search.method: ",
        ),
        ("search: {method: rnadom, trials: 3}\n", "[0.1]", "[0]", "'random'"),
        (
            "search: {method: random, trials: 3, prune: hyperbnad}\n",
            "[0.1]",
            "[0]",
            "bad.yaml:3: search.prune.kind: ",
        ),
        (
            RANDOM,
            "{loguniform: [0.001, 0.1]}",
            "{int: [0, 5]}",
            "bad.yaml:6: sweep.train.seed: is a replicate (search.replicates), whose values every trial runs "
            "with; give it a list, not a distribution",
        ),
        (
            "search: {method: random, trials: 3, metric: final/val/loss}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "search.metric: final/val/loss is measured on held-out rows, and none are; set data.validation",
        ),
        (
            RANDOM,
            "{loguniform: [0.001, 0.1]}",
            "{choice: [0, 1]}",
            "bad.yaml:6: sweep.train.seed: is a replicate",
        ),
        (
            "search: {method: random, trials: 3, replicates: [train.sed]}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "bad.yaml:3: search.replicates[0]: unknown key 'train.sed' (did you mean 'seed'?)",
        ),
        (
            "search: {trials: 3}\n",
            "[0.1, 0.2]",
            "[0]",
            "bad.yaml:3: search.trials: a grid runs every combination of its lists; leave search.trials out",
        ),
        (
            "search: {method: random, trials: 3, metric: final/val/accuracy}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "search.metric: final/val/accuracy is measured on held-out rows",
        ),
        (
            "search: {method: random, trials: 3, metric: final/train/accuracy}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "search.metric: final/train/accuracy is no value of this run's evaluations; they have "
            "final/train/loss, best/train/loss",
        ),
        (
            "search: {method: random, trials: 3, seed: -1}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "bad.yaml:3: search.seed: must be >= 0, got -1",
        ),
        (
            "search: {method: random, trials: 3, prune: {min_steps: 5}}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "bad.yaml:3: search.prune.kind: missing; give none, median, asha or hyperband",
        ),
        (
            "search: {method: random, trials: 3, prune: {kind: asha, startup_trials: 2}}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "bad.yaml:3: search.prune.startup_trials: is a setting of median, and search.prune.kind is asha",
        ),
        (
            "search: {method: random, trials: 3, prune: {kind: asha, min_steps: 50}}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "search.prune.min_steps: 50 is at or past the runs' last evaluation before their end (10 steps, "
            "evaluated every 10): no run would be pruned",
        ),
        (
            "search: {method: random, trials: 3, replicates: [model.bias]}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "bad.yaml:3: search.replicates[0]: model.bias is not swept; list its values under sweep:",
        ),
        (
            "search: {method: random, trials: 3, direction: maximize}\n",
            "{loguniform: [0.001, 0.1]}",
            "[0]",
            "search.direction: maximize, but final/train/loss is better lower",
        ),
        (RANDOM, "{choice: [0.1, 0.1]}", "[0]", "bad.yaml:5: sweep.optimizer.lr.choice: 0.1 is listed twice"),
        (
            # A range is checked at its ends, whatever a handful of draws would have tried.
            "search: {method: random, trials: 2}\n",
            "{uniform: [-1, 1]}",
            "[0]",
            "bad.yaml:5: optimizer.lr: must be > 0, got -1.0 (at an end of the searched ranges: optimizer.lr: -1.0)",
        ),
    ],
)
def test_a_bad_search_spec_is_one_sentence_naming_the_line(tmp_path, search, lr, seed, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD.format(search=search, lr=lr, seed=seed))
    code, out, err = trainer(tmp_path, "check", "bad.yaml")
    assert code == 2, out + err
    assert expected in err, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err  # one mistake, one sentence
    code, out, err = trainer(tmp_path, "sweep", "bad.yaml", "--logdir", "logs")
    assert code == 2 and expected in err and not (tmp_path / "logs").exists()


def test_a_distribution_on_a_user_kinds_argument_is_searched(tmp_path):
    (tmp_path / "widths.py").write_text(
        "import torch\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, in_features, hidden: int = 4, scale: float = 1.0):\n"
        "        super().__init__()\n"
        "        self.body = torch.nn.Sequential(torch.nn.Linear(in_features, hidden), torch.nn.Linear(hidden, 1))\n"
        "        self.scale = scale\n\n"
        "    def forward(self, x):\n"
        "        return self.body(x) * self.scale\n"
    )
    path = tmp_path / "user.yaml"
    path.write_text(
        "name: user\nmodel: {kind: 'widths:Net'}\nloss: {kind: mse}\noptimizer: {kind: sgd, lr: 0.001}\ntrain: {steps: 20}\n"
        "search: {method: random, trials: 4}\n"
        "sweep:\n  model.hidden: {int: [2, 64], log: true}\n  model.scale: {uniform: [0.5, 2.0]}\n"
    )
    frame = api.sweep(path, tmp_path / "logs", workers=0, quiet=True)
    assert len(frame) == 4 and set(frame["state"]) == {"complete"}
    for record in records(tmp_path / "logs", "user").values():
        hidden = record["config"]["model"]["hidden"]
        assert isinstance(hidden, int) and 2 <= hidden <= 64
        assert record["trial"]["params"]["model.hidden"] == hidden
        assert 0.5 <= record["config"]["model"]["scale"] <= 2.0


# --- a study that survives --------------------------------------------------------------------


@pytest.mark.slow
def test_a_study_killed_mid_run_goes_on_where_it_stopped(tmp_path, sweeps):
    spec = small(tmp_path, "tpe", trials=6, steps=6000, engine="loop", checkpoint_every="500")
    logdir = tmp_path / "logs"
    args = ["sweep", spec, "--logdir", logdir, "--workers", "1"]
    first = start(tmp_path, args, name="first")
    sweeps.append(first)

    def two_done_and_a_checkpoint() -> list[str] | None:
        done = [n for n, r in records(logdir, "small").items() if r["status"] == "complete"]
        going = [p.parent.name for p in (logdir / "small").glob("*/resume.pt") if p.parent.name not in done]
        return done if len(done) >= 2 and going else None

    done = wait_until(two_done_and_a_checkpoint, "two trials completed and a third took a checkpoint", first)
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait()
    before = {n: (logdir / "small" / n / "record.json").read_bytes() for n in done}
    drawn = {t.user_attrs["trial"]: t.params for t in study(logdir, "small").get_trials()}
    assert len(drawn) >= 3

    code, out, err = trainer(tmp_path, *args, name="second")
    assert code == 0, out + err
    recorded = records(logdir, "small")
    assert len(recorded) == 6 and all(r["status"] == "complete" for r in recorded.values())
    for name in done:  # completed trials were not run again
        assert (logdir / "small" / name / "record.json").read_bytes() == before[name]
    resumed = [r for r in recorded.values() if r.get("resumed")]
    assert resumed and resumed[0]["resumed"]["from_step"] >= 500
    trials = study(logdir, "small").get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    for number, params in drawn.items():  # the interrupted trial was redone with its own values
        assert next(t for t in trials if t.user_attrs["trial"] == number).params == params
    # The sweep that went on drew on from the study, not its first draws again.
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6
    by_trial = {r["trial"]["number"]: r for r in recorded.values()}
    assert sorted(by_trial) == list(range(6))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tpe", "random"])
def test_two_sweeps_at_once_share_the_study_and_run_each_trial_once(tmp_path, sweeps, method):
    spec = small(tmp_path, method, trials=8, steps=1500, engine="loop")
    logdir = tmp_path / "logs"
    pair = [
        start(tmp_path, ["sweep", spec, "--logdir", logdir, "--workers", "1"], name=f"sweep{i}")
        for i in (1, 2)
    ]
    sweeps.extend(pair)
    results = [sweep.finish() for sweep in pair]
    for code, out, err in results:
        assert code == 0, out + err
    ran = sum(int(m) for _, out, _ in results for m in re.findall(r"\((\d+) run now", out))
    assert ran == 8
    recorded = records(logdir, "small")
    assert len(recorded) == 8 and all(r["status"] == "complete" for r in recorded.values())
    assert sorted(r["trial"]["number"] for r in recorded.values()) == list(range(8))
    trials = study(logdir, "small").get_trials()
    assert sorted(t.user_attrs["trial"] for t in trials) == list(range(8))
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 8  # no configuration twice


# --- what TensorBoard shows -------------------------------------------------------------------


@pytest.mark.slow
def test_a_search_in_the_hparams_view_has_interval_columns_and_a_pruned_column(tmp_path, tensorboard):  # noqa: F811
    spec = small(tmp_path, "random", trials=9, steps=600, prune="{kind: asha, min_steps: 100}")
    logdir = tmp_path / "logs"
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--workers", "2")
    assert code == 0, out + err
    recorded = records(logdir, "small")
    assert {"pruned", "complete"} <= {r["status"] for r in recorded.values()}
    server = tensorboard(logdir)
    columns, groups = check_hparams_view(server, logdir)
    lr = columns["optimizer.lr"]
    assert lr["type"] == "DATA_TYPE_FLOAT64"
    assert lr["domainInterval"]["minValue"] == pytest.approx(1e-4)
    assert lr["domainInterval"]["maxValue"] == pytest.approx(0.3)
    assert "trial" in columns
    declared = {m["name"]["tag"] for m in server.experiment()["metricInfos"]}
    assert {"final/pruned", "final/steps_trained"} <= declared
    for name, record in recorded.items():
        metrics = {
            m["name"]["tag"]: m["value"]
            for m in groups[f"small/{name}"]["sessions"][0].get("metricValues", [])
        }
        assert metrics["final/steps_trained"] == record["steps_done"]
        assert metrics["final/pruned"] == (1.0 if record["status"] == "pruned" else 0.0)
        assert groups[f"small/{name}"]["hparams"]["optimizer.lr"] == record["trial"]["params"]["optimizer.lr"]


def test_a_kind_is_not_drawn_from_a_range(tmp_path):
    path = _write(
        tmp_path / "kind.yaml",
        "name: k\nsearch: {method: random, trials: 2}\nsweep:\n  model.kind: {uniform: [0, 1]}\n",
    )
    code, out, err = trainer(tmp_path, "check", path)
    assert code == 2 and err.strip() == (
        f"error: {path}:4: sweep.model.kind: a kind is chosen, not drawn from a range; list the kinds, "
        f"or give {{choice: [...]}}"
    ), err


def test_set_overrides_the_search_section_and_refuses_a_searched_key(tmp_path):
    spec = small(tmp_path, "random", trials=6, seeds="[0, 1]")
    code, out, err = trainer(
        tmp_path, "check", spec, "--set", "search.trials=2", "--set", "search.method=sobol"
    )
    assert code == 0, err
    assert "ok, 4 runs" in out and "search: sobol, 2 trials" in out
    code, out, err = trainer(tmp_path, "check", spec, "--set", "search.trails=2")
    assert (
        code == 2
        and "--set search.trails=2: search.trails: unknown key 'trails' (did you mean 'trials'?)" in err
    )
    for pinned in ("optimizer.lr=0.01", "train.seed=0"):
        code, out, err = trainer(tmp_path, "sweep", spec, "--set", pinned, "--logdir", "logs")
        key = pinned.partition("=")[0]
        assert code == 2 and f"--set {pinned}: {key} is swept by the spec's random search" in err, err
    assert not (tmp_path / "logs").exists()


def test_allow_large_lets_a_large_search_through(tmp_path):
    spec = small(tmp_path, "random", trials=12_000)
    code, out, err = trainer(tmp_path, "check", spec)
    assert code == 2 and "pass --allow-large to run them all" in err
    from trainer.spec.sweep import plan

    assert len(plan([str(spec)], allow_large=True)) == 12_000


def test_a_study_drawn_otherwise_is_refused_and_force_starts_it_over(tmp_path):
    spec = small(tmp_path, "random", trials=6, steps=600, prune="{kind: asha, min_steps: 100}")
    logdir = tmp_path / "logs"
    api.sweep(spec, logdir, workers=0, quiet=True)
    first = records(logdir, "small")
    pruned = {n for n, r in first.items() if r["status"] == "pruned"}
    assert pruned

    # Another seed draws other trials: they cannot join the study, and nothing is run or written.
    other = _write(tmp_path / "other.yaml", spec.read_text().replace("seed: 3", "seed: 4"))
    before = sorted(p.name for p in (logdir / "small").iterdir())
    code, out, err = trainer(tmp_path, "sweep", other, "--logdir", logdir)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        f"error: {logdir}/small/study.journal: the experiment small was searched with other settings than "
        f"its spec's (seed 3 -> 4); its trials cannot join that study. Give the spec a new name "
        f"(--set name=small-2), or move {logdir}/small away"
    )
    assert sorted(p.name for p in (logdir / "small").iterdir()) == before

    # --force runs the search again with its pruner, in a new study; the old journal is kept.
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--force")
    assert code == 0, out + err
    again = records(logdir, "small")
    assert {n for n, r in again.items() if r["status"] == "pruned"} == pruned
    assert all(again[n]["started"] != first[n]["started"] for n in first)
    assert len(list((logdir / "small").glob("study.journal.replaced-*"))) == 1
    assert {t.state.name for t in study(logdir, "small").get_trials()} == {"COMPLETE", "PRUNED"}


def test_a_merged_search_rebuilds_its_study_from_the_runs(tmp_path):
    spec = small(tmp_path, "tpe", trials=4)
    api.sweep(spec, tmp_path / "mine", workers=0, quiet=True)
    code, out, err = trainer(tmp_path, "merge", tmp_path / "mine", "--into", tmp_path / "team")
    assert code == 0, err
    team = tmp_path / "team"
    assert not (team / "small" / "study.journal").exists()  # a study is not merged: its runs are
    before = {n: r["started"] for n, r in records(team, "small").items()}
    more = _write(tmp_path / "more.yaml", spec.read_text().replace("trials: 4", "trials: 6"))
    code, out, err = trainer(tmp_path, "sweep", more, "--logdir", team)
    assert code == 0, out + err
    recorded = records(team, "small")
    assert len(recorded) == 6 and sorted(r["trial"]["number"] for r in recorded.values()) == list(range(6))
    assert {n: recorded[n]["started"] for n in before} == before  # none of the merged runs ran again
    trials = study(team, "small").get_trials()
    assert sorted(t.user_attrs["trial"] for t in trials) == list(range(6))
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6
    assert "(2 run now, 4 already done)" in out


def test_run_of_a_search_spec_says_to_sweep(tmp_path):
    spec = small(tmp_path, "random", trials=3)
    code, out, err = trainer(tmp_path, "run", spec, "--logdir", "logs")
    assert code == 2 and "searches (random, 3 trials); 'run' runs one configuration: use 'sweep'" in err
    assert not (tmp_path / "logs").exists()


def test_hyperband_prunes_from_several_first_rungs(tmp_path):
    spec = small(
        tmp_path,
        "random",
        trials=16,
        steps=800,
        prune="{kind: hyperband, min_steps: 100, reduction_factor: 2}",
    )
    api.sweep(spec, tmp_path / "logs", workers=0, quiet=True)
    recorded = records(tmp_path / "logs", "small")
    pruned = [r for r in recorded.values() if r["status"] == "pruned"]
    assert pruned and any(r["status"] == "complete" for r in recorded.values())
    # One program: its chunks end at every evaluation a verdict may come at, the last one at none.
    assert {json.dumps(r["engine"]) for r in recorded.values()} == {
        json.dumps({"name": "batched", "runs": 16})
    }
    for record in pruned:  # judged at an evaluation from min_steps on, before that step's update
        step = record["stopped"]["step"]
        assert step >= 100 and step % 50 == 0 and record["steps_done"] == step
    states = {t.user_attrs["trial"]: t.state.name for t in study(tmp_path / "logs", "small").get_trials()}
    assert states == {r["trial"]["number"]: r["status"].upper() for r in recorded.values()}


def test_a_study_journal_that_cannot_be_read_is_one_sentence(tmp_path):
    spec = small(tmp_path, "random", trials=2)
    journal = tmp_path / "logs" / "small" / "study.journal"
    journal.parent.mkdir(parents=True)
    journal.write_text("not a journal\n")
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", tmp_path / "logs")
    assert code == 2 and "Traceback" not in err
    assert err.startswith(
        f"error: {journal}: the study cannot be opened (ValueError: it holds no study of the experiment small); "
    )
    assert err.rstrip().endswith("move it away, and the next sweep makes it again from the runs' records")
    assert journal.read_text() == "not a journal\n" and sorted(p.name for p in journal.parent.iterdir()) == [
        "study.journal"
    ]


# --- a user metric's names, the report of a search --------------------------------------------

DICT_METRIC = """\
def lm(output, target):
    error = (output.squeeze(-1) - target).abs().mean()
    return {"ppl": error.exp(), "char_acc": 1 - error}


lm.greater_is_better = {"char_acc": True}
"""

DICT_SPEC = """\
name: dm
data: {kind: seed_toy, validation: 0.25}
model: {kind: linear}
loss: {kind: mse}
optimizer: {kind: sgd, lr: 0.1}
train: {steps: 60, batch_size: 4}
eval: {every: 20, metrics: ['lm:lm']}
search: {method: random, trials: 2, seed: 1, metric: final/val/perplexity, prune: {kind: median, min_steps: 20}}
sweep:
  optimizer.lr: {loguniform: [0.001, 0.1]}
"""


def test_a_metric_no_dict_metric_gives_is_refused_before_any_run(tmp_path):
    (tmp_path / "lm.py").write_text(DICT_METRIC)
    spec = _write(tmp_path / "dm.yaml", DICT_SPEC)
    code, out, err = trainer(tmp_path, "check", spec)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        f"error: {spec}:8: search.metric: final/val/perplexity is no value of this run's evaluations "
        f"(did you mean 'final/val/ppl'?); they have final/train/loss, final/train/ppl, final/train/char_acc, "
        f"final/val/loss, final/val/ppl, final/val/char_acc, best/val/loss, best/val/ppl, best/val/char_acc, "
        f"final/weight_distance"
    )

    # Early stopping's metric, in a sweep's pre-flight: refused, and nothing is written.
    stopping = _write(
        tmp_path / "es.yaml",
        DICT_SPEC.replace("metric: final/val/perplexity", "metric: final/val/ppl").replace(
            "batch_size: 4}", "batch_size: 4, early_stopping: {metric: val/char_accuracy}}"
        ),
    )
    code, out, err = trainer(tmp_path, "sweep", stopping, "--logdir", tmp_path / "logs")
    assert code == 2 and "Traceback" not in err
    assert err.strip().startswith(
        f"error: {stopping}:6: train.early_stopping.metric: val/char_accuracy is no value of this run's "
        f"evaluations (did you mean 'val/char_acc'?); they have train/loss, train/ppl, train/char_acc, "
        f"val/loss, val/ppl, val/char_acc (run dm/trial=000,"
    ), err
    assert not (tmp_path / "logs").exists()

    # The names it gives are searched for and watched: every run trains to its end.
    good = _write(tmp_path / "good.yaml", stopping.read_text().replace("val/char_accuracy", "val/char_acc"))
    frame = api.sweep(good, tmp_path / "logs", workers=0, quiet=True)
    assert set(frame["state"]) == {"complete"} and frame["final/val/ppl"].notna().all()


def test_report_gives_swept_settings_typed_as_runs_does(tmp_path):
    spec = _write(
        tmp_path / "typed.yaml",
        SMALL.format(
            steps=100,
            engine="auto",
            checkpoint_every="auto",
            method="random",
            trials=3,
            prune="none",
            seeds="[0, 1]",
        ).replace("  train.seed:", "  train.batch_size: [1, 5]\n  model.bias: [true, false]\n  train.seed:"),
    )
    api.sweep(spec, tmp_path / "logs", workers=0, quiet=True)
    runs, found = api.runs(tmp_path / "logs"), api.report(tmp_path / "logs")
    for key in ("optimizer.lr", "train.batch_size", "model.bias"):
        assert found[key].dtype == runs[key].dtype, key
    assert found["optimizer.lr"].dtype == "float64" and found["model.bias"].dtype == "bool"
    for _, group in found.iterrows():
        mine = runs[runs["trial"] == int(group["group"][6:9])]
        assert len(mine) == 2 and (mine["optimizer.lr"] == group["optimizer.lr"]).all()
        assert (mine["train.batch_size"] == group["train.batch_size"]).all()


def test_a_pruned_trial_is_never_ranked_and_says_where_it_was_stopped(tmp_path):
    spec = small(tmp_path, "random", trials=12, steps=600, prune="{kind: asha, min_steps: 100}")
    logdir = tmp_path / "logs"
    api.sweep(spec, logdir, workers=0, quiet=True)
    by_trial: dict[int, list[dict]] = {}
    for record in records(logdir, "small").values():
        by_trial.setdefault(record["trial"]["number"], []).append(record)
    pruned = {n: rs[0]["stopped"] for n, rs in by_trial.items() if rs[0]["status"] == "pruned"}
    complete = sorted(
        (rs[0]["metrics"]["final/train/loss"], n)
        for n, rs in by_trial.items()
        if rs[0]["status"] == "complete"
    )
    assert pruned and len(complete) >= 2 and len(pruned) + len(complete) == 12

    found = api.report(logdir, out=tmp_path / "report")
    numbers = [int(g[6:9]) for g in found["group"]]
    assert numbers == [n for _, n in complete] + sorted(pruned)  # the ranked, best first; then the pruned
    # report.md: the ranked trials numbered; a pruned one has no rank, and its step and value there.
    text = (tmp_path / "report" / "report.md").read_text()
    table = text[text.index("## small") :].split("\n\n")[2].splitlines()[2:]
    assert len(table) == 12
    for line, number in zip(table, numbers):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1].startswith(f"`trial={number:03d},")
        if number in pruned:
            stopped = pruned[number]
            assert cells[0] == "" and cells[2] == "0 of 1 (1 pruned)"
            assert cells[3] == f"pruned at step {stopped['step']} (train/loss {stopped['train/loss']:.3g})"
        else:
            assert cells[0] == str(1 + [n for _, n in complete].index(number))
    # The DataFrame: the same, by columns.
    assert list(found["rank"][: len(complete)]) == list(range(1, len(complete) + 1))
    rest = found[len(complete) :]
    assert rest["rank"].isna().all() and rest["mean"].isna().all()
    assert list(rest["pruned at step"]) == [pruned[n]["step"] for n in sorted(pruned)]
    assert list(rest["value at pruning"]) == [pruned[n]["train/loss"] for n in sorted(pruned)]
    assert found["pruned at step"][: len(complete)].isna().all()
