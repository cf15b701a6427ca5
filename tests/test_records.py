"""Records that survive what runs and processes do: values that are not finite, records that
cannot be read, and merges or index rebuilds killed half-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import plugin_event_multiplexer
from test_faults import start, toy_spec, trainer, wait_until

from trainer.reporting.index import INDEX_FILE


def strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def tensorboard_runs(logdir: Path) -> list[str]:
    """The runs TensorBoard's own loader finds in a log folder."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    return sorted(multiplexer.Runs())


HUGE_LR = """\
name: huge-lr
data: {kind: seed_toy}
model: {kind: linear, bias: false}
loss: {kind: l1, reduction: sum}
optimizer: {kind: sgd, lr: 1.0e35}
train: {steps: 50, batch_size: 1, seed: 0}
"""


@pytest.mark.slow
def test_a_run_with_a_metric_that_is_not_finite_keeps_its_record(tmp_path):
    (tmp_path / "huge.yaml").write_text(HUGE_LR)
    code, out, err = trainer(tmp_path, "sweep", "huge.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0 and "Traceback" not in err, out + err
    record = strict_json(tmp_path / "logs/huge-lr/base/record.json")  # strict JSON: no Infinity
    assert record["status"] == "complete"
    assert record["metrics"]["final/weight_distance"] is None
    assert record["non_finite"] == ["metrics.final/weight_distance"]
    code, out, err = trainer(tmp_path, "status", "logs")
    assert code == 0 and "huge-lr/base  complete" in out, out + err
    code, out, err = trainer(tmp_path, "sweep", "huge.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0 and "(0 run now, 1 already done)" in out, out + err


@pytest.mark.slow
def test_a_record_that_cannot_be_read_is_damaged_and_set_aside_not_deleted(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1]", steps=20)
    assert trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")[0] == 0
    record = tmp_path / "logs/toy/seed=0/record.json"
    cut = record.read_bytes()[:50]
    record.write_bytes(cut)
    code, out, err = trainer(tmp_path, "status", "logs")
    assert code == 1, out + err
    assert "toy/seed=0  damaged" in out
    assert "toy/seed=0: record.json is not valid JSON" in out
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0 and "(1 run now, 1 already done)" in out, out + err
    aside = tmp_path / "logs/toy/.damaged/seed=0.1"
    assert (aside / "record.json").read_bytes() == cut
    assert "record.json is not valid JSON" in (aside / "DAMAGED.txt").read_text()
    assert strict_json(record)["status"] == "complete"


# A merge or an index rebuild that stops for good at the moment named, as a kill -9 would find it.
HELD = """\
import os, shutil, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})

def hold(what):
    Path({ready!r}).write_text(what)
    while True:
        time.sleep(60)

{patch}

if __name__ == "__main__":  # the workers of a sweep import this script again
    from trainer.cli import main

    sys.exit(main(sys.argv[1:]))
"""

HOLD_MERGE_COPY = """\
real_copyfile = shutil.copyfile
def copyfile(src, dst, **kwargs):
    result = real_copyfile(src, dst, **kwargs)
    if "tf" in Path(dst).name:
        hold(str(dst))
    return result
shutil.copyfile = copyfile
"""

HOLD_INDEX_RENAME = """\
real_replace = os.replace
def replace(src, dst):
    if "hparams-index" in str(dst):
        hold(str(src))
    return real_replace(src, dst)
os.replace = replace
"""


def held_script(tmp_path: Path, patch: str) -> tuple[Path, Path]:
    ready = tmp_path / "held"
    script = tmp_path / "held.py"
    repo = str(Path(__file__).resolve().parents[1])
    script.write_text(HELD.format(repo=repo, ready=str(ready), patch=textwrap.dedent(patch)))
    return script, ready


@pytest.mark.slow
def test_a_merge_killed_mid_copy_leaves_no_run_tensorboard_reads_and_the_next_merge_cleans_up(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1]", steps=20)
    assert trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "alice", "--workers", "1")[0] == 0
    script, ready = held_script(tmp_path, HOLD_MERGE_COPY)
    merge = start(tmp_path, ["merge", "alice", "--into", "team"], script, name="merge")
    wait_until(ready.exists, "the merge is copying an event file", merge)
    os.killpg(merge.process.pid, signal.SIGKILL)
    merge.process.wait()
    staging = [p for p in (tmp_path / "team/toy").iterdir() if p.name.startswith(".merge-")]
    assert len(staging) == 1 and any(staging[0].iterdir())  # killed with a run half-copied
    assert tensorboard_runs(tmp_path / "team") == []
    code, out, err = trainer(tmp_path, "merge", "alice", "--into", "team")
    assert code == 0, out + err
    assert sorted(p.name for p in (tmp_path / "team/toy").iterdir()) == ["seed=0", "seed=1"]
    assert [r for r in tensorboard_runs(tmp_path / "team") if r.startswith("toy")] == [
        "toy/seed=0",
        "toy/seed=1",
    ]


@pytest.mark.slow
def test_an_index_rebuild_killed_before_its_rename_leaves_no_file_tensorboard_reads(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1]", steps=20)
    assert trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")[0] == 0
    (tmp_path / "logs" / INDEX_FILE).unlink()  # so that the rebuild has a new index to write
    before = sorted(p.name for p in (tmp_path / "logs").iterdir())
    script, ready = held_script(tmp_path, HOLD_INDEX_RENAME)
    index = start(tmp_path, ["index", "logs"], script, name="index")
    wait_until(ready.exists, "the index is about to be renamed into place", index)
    os.killpg(index.process.pid, signal.SIGKILL)
    index.process.wait()
    left = tmp_path / ready.read_text()  # relative to where the command ran
    assert left.exists() and left.parent == tmp_path / "logs"  # the temporary file it was writing
    assert "tfevents" not in left.name
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted([*before, left.name])
    assert trainer(tmp_path, "index", "logs")[0] == 0  # the next rebuild removes what was left
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted([*before, INDEX_FILE])


@pytest.mark.slow
def test_a_run_that_raises_mid_run_records_the_step_it_stopped_at(tmp_path):
    toy_spec(tmp_path, "train.seed: [0]", steps=300)
    spec = tmp_path / "toy.yaml"
    spec.write_text(spec.read_text().replace("eval: {every: 100}", "eval: {every: 50}") + "")
    spec.write_text(spec.read_text().replace("log: {", "log: {hook: 'stopper:hook', "))
    (tmp_path / "stopper.py").write_text(
        "def hook(writer, step, model, **context):\n    if step >= 150:\n        raise RuntimeError('stopped by the hook')\n"
    )
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 1, out + err
    record = strict_json(tmp_path / "logs/toy/seed=0/record.json")
    assert (record["status"], record["error"]) == ("failed", "RuntimeError: stopped by the hook")
    assert record["steps_done"] == 150
    code, out, err = trainer(tmp_path, "status", "logs")
    row = next(line for line in out.splitlines() if line.startswith("toy/seed=0"))
    assert row.split()[1] == "failed" and "150" in row.split()


CHDIR_DATA = """\
import os
from pathlib import Path

import torch


def load():
    os.chdir(Path(__file__).parent / "elsewhere")
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    return x, x.sum(dim=1)
"""


@pytest.mark.slow
def test_user_code_that_changes_folder_moves_no_path_of_the_sweep(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1]", steps=20)
    spec = tmp_path / "toy.yaml"
    spec.write_text(spec.read_text().replace("data: {kind: seed_toy}", "data: {kind: 'chdir_data:load'}"))
    (tmp_path / "chdir_data.py").write_text(CHDIR_DATA)
    (tmp_path / "elsewhere").mkdir()
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 0, out + err
    assert sorted(p.name for p in (tmp_path / "logs/toy").iterdir() if not p.name.startswith(".")) == [
        "seed=0",
        "seed=1",
    ]
    assert list((tmp_path / "elsewhere").iterdir()) == []


MUTATING_HOOK = """\
def hook(writer, step, model, train_inputs, **context):
    if step == 0:
        train_inputs.mul_(10.0)  # a hook that changes its inputs in place
"""


@pytest.mark.slow
def test_a_run_that_changes_its_data_in_place_changes_nothing_for_the_next_run_in_its_worker(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1, 2]", steps=40, every=1)
    spec = tmp_path / "toy.yaml"
    spec.write_text(spec.read_text().replace("eval: {every: 100}", "eval: {every: 20}"))
    spec.write_text(spec.read_text().replace("log: {", "log: {hook: 'mutate:hook', "))
    (tmp_path / "mutate.py").write_text(MUTATING_HOOK)
    args = ["--workers", "1", "--set", "train.engine=loop"]
    assert trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "together", *args)[0] == 0
    for seed in (0, 1, 2):
        alone = ["--set", f"train.seed={seed}", "--logdir", f"alone{seed}"]
        code, out, err = trainer(tmp_path, "sweep", "toy.yaml", *alone, *args)
        assert code == 0, out + err
    for seed in (0, 1, 2):
        together = strict_json(tmp_path / f"together/toy/seed={seed}/record.json")
        (alone,) = (tmp_path / f"alone{seed}/toy").glob("*/record.json")
        alone = strict_json(alone)
        assert together["weights_sha256"] == alone["weights_sha256"], f"seed {seed}"
        assert together["metrics"] == alone["metrics"], f"seed {seed}"


DATASET_AND_HOOK = """\
import torch


class Rows(torch.utils.data.Dataset):
    def __init__(self):
        self.x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 1.0], [1.0, 2.0]])
        self.y = self.x @ torch.tensor([1.0, 2.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def load():
    return Rows()


def hook(writer, step, model, dataset, **context):
    if step == 0:
        dataset.dataset.x.mul_(10.0)  # through the Subset that data.validation made
"""


@pytest.mark.slow
def test_a_run_that_changes_its_map_style_dataset_changes_nothing_for_the_next_run(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1, 2]", steps=40, every=1)
    spec = tmp_path / "toy.yaml"
    text = spec.read_text().replace("eval: {every: 100}", "eval: {every: 20}")
    text = text.replace("data: {kind: seed_toy}", "data: {kind: 'rows:load', validation: 0.34}")
    spec.write_text(text.replace("log: {", "log: {hook: 'rows:hook', "))
    (tmp_path / "rows.py").write_text(DATASET_AND_HOOK)
    args = ["--workers", "1", "--set", "train.engine=loop"]
    assert trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "together", *args)[0] == 0
    for seed in (1, 2):
        alone = ["--set", f"train.seed={seed}", "--logdir", f"alone{seed}"]
        code, out, err = trainer(tmp_path, "sweep", "toy.yaml", *alone, *args)
        assert code == 0, out + err
        together = strict_json(tmp_path / f"together/toy/seed={seed}/record.json")
        (alone,) = (tmp_path / f"alone{seed}/toy").glob("*/record.json")
        alone = strict_json(alone)
        assert together["weights_sha256"] == alone["weights_sha256"], f"seed {seed}"
        assert together["metrics"] == alone["metrics"], f"seed {seed}"


HOLD_SECOND_CLAIM = """\
import trainer.run.claims as claims_module

real_take = claims_module.Held.take
taken = []
def take(self, experiment, name):
    taken.append(name)
    if len(taken) == 2:
        Path({ready!r}).write_text(name)
        while not Path({release!r}).exists():
            time.sleep(0.02)
    return real_take(self, experiment, name)
claims_module.Held.take = take
"""


@pytest.mark.slow
def test_runs_another_spec_of_the_same_name_recorded_meanwhile_are_not_counted_as_this_sweeps(tmp_path):
    """Two specs with one experiment name on one folder at once: the runs the other spec recorded
    while this sweep ran are reported as another configuration, never as this sweep's results."""
    ready, release = tmp_path / "held", tmp_path / "release"
    mine = toy_spec(tmp_path / "mine", "train.seed: [0, 1, 2]", steps=30)
    theirs = toy_spec(tmp_path / "theirs", "train.seed: [1, 2]", steps=60)
    script = tmp_path / "held.py"
    patch = HOLD_SECOND_CLAIM.format(ready=str(ready), release=str(release))
    script.write_text(
        HELD.format(repo=str(Path(__file__).resolve().parents[1]), ready=str(ready), patch=patch)
    )
    args = ["--logdir", "logs", "--workers", "1", "--set", "train.engine=loop"]
    sweep = start(tmp_path, ["sweep", mine, *args], script)
    wait_until(ready.exists, "the first sweep is about to claim its second run", sweep)
    code, out, err = trainer(tmp_path, "sweep", theirs, *args)
    assert code == 0 and "2 complete (2 run now" in out, out + err
    release.write_text("")
    code, out, err = sweep.finish()
    assert code == 2, out + err
    assert "1 run: 1 complete (1 run now, 0 already done)" in out
    assert (
        f"error: toy: 2 finished runs in {Path('logs') / 'toy'} were logged with a different configuration "
        "(train.steps: 60 -> 30); by another sweep while this one ran; they are not this spec's results."
    ) in err
    assert "--force" in err


HOLD_MERGE_UNTIL_RELEASED = """\
real_copyfile = shutil.copyfile
def copyfile(src, dst, **kwargs):
    result = real_copyfile(src, dst, **kwargs)
    if "tf" in Path(dst).name and not Path({ready!r}).exists():
        Path({ready!r}).write_text(str(dst))
        while not Path({release!r}).exists():
            time.sleep(0.02)
    return result
shutil.copyfile = copyfile
"""


@pytest.mark.slow
def test_two_merges_of_one_source_at_once_copy_each_run_once(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1, 2]", steps=20)
    assert trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "alice", "--workers", "1")[0] == 0
    ready, release = tmp_path / "held", tmp_path / "release"
    script = tmp_path / "held.py"
    patch = HOLD_MERGE_UNTIL_RELEASED.format(ready=str(ready), release=str(release))
    script.write_text(
        HELD.format(repo=str(Path(__file__).resolve().parents[1]), ready=str(ready), patch=patch)
    )
    first = start(tmp_path, ["merge", "alice", "--into", "team"], script, name="first")
    wait_until(ready.exists, "the first merge is copying a run", first)
    second = start(tmp_path, ["merge", "alice", "--into", "team"], name="second")
    wait_until(
        lambda: "waiting for another merge into team to finish" in second.stderr.read_text(),
        "the second merge waits for the first",
        second,
    )
    release.write_text("")
    code, out, err = first.finish()
    assert code == 0 and "copied 3 runs, 0 already present" in out, out + err
    code, out, err = second.finish()
    assert code == 0 and "copied 0 runs, 3 already present (identical)" in out, out + err
    runs = sorted(p.name for p in (tmp_path / "team/toy").iterdir())
    assert runs == ["seed=0", "seed=1", "seed=2"]
    assert not (tmp_path / "team/.merge-lock").exists()


@pytest.mark.slow
def test_event_files_swapped_between_runs_are_damage_for_verify_and_merge(tmp_path):
    toy_spec(tmp_path, "optimizer.weight_decay: [0.0, 0.1]", steps=20)
    assert trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")[0] == 0
    (a,) = (tmp_path / "logs/toy/weight_decay=0.0").glob("events.out.tfevents.*")
    (b,) = (tmp_path / "logs/toy/weight_decay=0.1").glob("events.out.tfevents.*")
    content_a, content_b = a.read_bytes(), b.read_bytes()
    assert len(content_a) == len(content_b)  # so that sizes alone cannot tell
    a.write_bytes(content_b)
    b.write_bytes(content_a)
    assert trainer(tmp_path, "status", "logs")[0] == 0  # sizes and names agree with the records
    code, out, err = trainer(tmp_path, "status", "logs", "--verify")
    assert code == 1, out + err
    for run, theirs, mine in (("weight_decay=0.0", 0.1, 0.0), ("weight_decay=0.1", 0.0, 0.1)):
        assert (
            f"toy/{run}: {a.name if run.endswith('0.0') else b.name}: its session holds "
            f"optimizer.weight_decay = {theirs!r} where the record says {mine!r}: it is another run's event file"
        ) in out
    code, out, err = trainer(tmp_path, "merge", "logs", "--into", "team")
    assert code == 1 and "refused (damaged)" in out, out + err
    assert not (tmp_path / "team/toy").exists() or not any((tmp_path / "team/toy").iterdir())


PRINTING_MODEL = """\
from torch import nn


class Chatty(nn.Module):
    def __init__(self, features: int = 4):
        super().__init__()
        self.linear = nn.Linear(features, 1, bias=False)

    def forward(self, x):
        print("a forward pass of", len(x), "rows " * 20)
        return self.linear(x)
"""


@pytest.mark.slow
def test_user_code_printing_into_a_closed_pipe_fails_no_run(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1]", steps=300)
    spec = tmp_path / "toy.yaml"
    spec.write_text(
        spec.read_text().replace("model: {kind: linear, bias: false}", "model: {kind: 'chatty:Chatty'}")
    )
    (tmp_path / "chatty.py").write_text(PRINTING_MODEL)
    command = f"{sys.executable} -m trainer sweep toy.yaml --logdir logs --workers 1 --quiet | head -c 1"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run(
        ["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in done.stderr, done.stderr
    for seed in (0, 1):
        record = strict_json(tmp_path / f"logs/toy/seed={seed}/record.json")
        assert (record["status"], record["error"]) == ("complete", None)


CRASHING_MODEL = """\
import ctypes
import os

from torch import nn


class Crash(nn.Module):
    def __init__(self, features: int = 4):
        super().__init__()
        self.linear = nn.Linear(features, 1, bias=False)

    def forward(self, x):
        {crash}


def load():
    {crash}
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash, how",
    [
        pytest.param("os._exit(3)", "exited with status 3", id="exits"),
        pytest.param("ctypes.string_at(0)", "was killed by signal SIGSEGV", id="segfaults"),
    ],
)
@pytest.mark.parametrize("command", ["check", "sweep"])
@pytest.mark.parametrize(
    "section, before, after, trying",
    [
        (
            "model",
            "model: {kind: linear, bias: false}",
            "model: {kind: 'crash:Crash'}",
            "model 'crash:Crash' on one batch",
        ),
        ("data", "data: {kind: seed_toy}", "data: {kind: 'crash:load'}", "data 'crash:load'"),
    ],
    ids=["model", "data"],
)
def test_user_code_that_kills_its_process_in_the_preflight_check_is_one_sentence(
    tmp_path, crash, how, command, section, before, after, trying
):
    toy_spec(tmp_path, "train.seed: [0, 1]", steps=20)
    spec = tmp_path / "toy.yaml"
    spec.write_text(spec.read_text().replace(before, after))
    (tmp_path / "crash.py").write_text(CRASHING_MODEL.format(crash=crash))
    args = ["--logdir", "logs"] if command == "sweep" else []
    code, out, err = trainer(tmp_path, command, "toy.yaml", *args)
    assert (code, out) == (2, "")
    assert err == (
        f"error: toy.yaml: trying {trying}, its process {how}: the user code "
        "crashed or ended it; nothing was run or written\n"
    )
    assert not (tmp_path / "logs").exists()
