"""Further faults of user code, settings and hands on the log folder: each one sentence, or a run
recorded for what it is, and never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_faults import toy_spec, trainer

pytestmark = pytest.mark.slow

USER = """\
import sys

import torch


def exits():
    sys.exit(0)


def words():
    return "hello", "world"


def interrupt(writer, step, model, **context):
    if step > 0:
        raise KeyboardInterrupt


def leave(writer, step, model, **context):
    if step > 0:
        sys.exit(3)


def shadow(output, target):
    return {"loss": 1.0}
"""


def user_spec(folder: Path, old: str, new: str, *sweep: str, steps: int = 300) -> None:
    spec = toy_spec(folder, *(sweep or ("train.seed: [0, 1]",)), steps=steps)
    spec.write_text(spec.read_text().replace(old, new))
    (folder / "user.py").write_text(USER)


@pytest.mark.parametrize(
    "kind, said",
    [
        ("user:exits", "raised SystemExit: 0"),
        ("user:words", "raised TypeError: new(): invalid data type 'str'"),
    ],
)
def test_a_data_function_that_exits_or_returns_no_tensors_is_one_sentence(tmp_path, kind, said):
    user_spec(tmp_path, "data: {kind: seed_toy}", f"data: {{kind: '{kind}'}}")
    code, out, err = trainer(tmp_path, "check", "toy.yaml")
    assert code == 2, out + err
    assert err == f"error: toy.yaml: trying data '{kind}' {said}; nothing was run or written\n"


def test_a_hook_that_raises_keyboard_interrupt_in_a_worker_fails_its_run_without_a_traceback(tmp_path):
    user_spec(tmp_path, "log: {", "log: {hook: 'user:interrupt', ")
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")
    assert code == 1, out + err
    assert "Traceback" not in err
    for seed in (0, 1):
        record = json.loads((tmp_path / f"logs/toy/seed={seed}/record.json").read_text())
        assert (record["status"], record["error"]) == ("failed", "the user code raised KeyboardInterrupt")
        assert record["steps_done"] == 100


@pytest.mark.parametrize(
    "hook, said", [("leave", "called sys.exit(3)"), ("interrupt", "raised KeyboardInterrupt")]
)
def test_a_hook_that_exits_in_the_command_lines_own_process_fails_its_run(tmp_path, hook, said):
    user_spec(tmp_path, "log: {", f"log: {{hook: 'user:{hook}', ")
    code, out, err = trainer(tmp_path, "run", "toy.yaml", "--set", "train.seed=0", "--logdir", "logs")
    assert code == 1, out + err
    record = json.loads((tmp_path / "logs/toy/seed=0/record.json").read_text())
    assert (record["status"], record["error"]) == ("failed", f"the user code {said}")


def test_a_metric_named_like_the_loss_is_refused_by_the_check(tmp_path):
    user_spec(tmp_path, "eval: {every: 100}", "eval: {every: 100, metrics: ['user:shadow']}")
    code, out, err = trainer(tmp_path, "check", "toy.yaml")
    assert code == 2, out + err
    assert "eval.metrics[0]: user:shadow returns a value named 'loss', the loss's own name" in err


def test_timeouts_too_long_to_count_are_refused_and_tiny_ones_still_record_every_run(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1]", steps=300)
    code, out, err = trainer(tmp_path, "check", "toy.yaml", "--set", "train.timeout=1e10")
    assert code == 2 and "train.timeout" in err and "31536000" in err, out + err
    args = [
        "--logdir",
        "logs",
        "--workers",
        "1",
        "--set",
        "train.timeout=0.0001",
        "--set",
        "train.engine=loop",
    ]
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", *args)
    assert code == 1, out + err
    for seed in (0, 1):
        record = json.loads((tmp_path / f"logs/toy/seed={seed}/record.json").read_text())
        assert record["error"] == "timed out: ran longer than train.timeout (0.0001 s)"


def test_a_batched_group_that_times_out_records_the_steps_it_had_done(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1, 2, 3]", steps=3_000_000, every=1000)
    args = ["--logdir", "logs", "--workers", "1", "--set", "train.timeout=6", "--set", "train.engine=batched"]
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", *args)
    assert code == 1, out + err
    record = json.loads((tmp_path / "logs/toy/seed=0/record.json").read_text())
    assert record["error"].startswith("timed out") and record["engine"]["name"] == "batched"
    assert 0 < record["steps_done"] < 3_000_000


def test_a_run_folder_moved_by_hand_is_damage_for_verify(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1]", steps=30)
    assert trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "logs", "--workers", "1")[0] == 0
    shutil.move(tmp_path / "logs/toy/seed=1", tmp_path / "logs/toy/seed=7")
    code, out, err = trainer(tmp_path, "status", "logs", "--verify")
    assert code == 1, out + err
    assert "its record is of the run toy/seed=1, not of toy/seed=7" in out + err


def test_an_empty_log_folder_name_is_refused(tmp_path):
    toy_spec(tmp_path, "train.seed: [0, 1]", steps=30)
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", "--logdir", "")
    assert code == 2 and "--logdir: an empty name is no folder; give its path" in err, out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.err", "cli.out", "toy.yaml"]
