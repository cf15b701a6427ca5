"""A run knows which code made it: a rerun after the user's module changed, and records that other
code made, are never counted as the spec's results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_faults import toy_spec, trainer

HOOK = """\
def hook(writer, step, model, **context):
    return None  # version {version}
"""


def hooked_spec(folder: Path, version: int) -> Path:
    """A seed_toy sweep of two seeds whose log hook lives in folder/myhook.py."""
    spec = toy_spec(folder, "train.seed: [0, 1]", steps=20)
    spec.write_text(spec.read_text().replace("log: {", "log: {hook: 'myhook:hook', "))
    (folder / "myhook.py").write_text(HOOK.format(version=version))
    return spec


@pytest.mark.slow
def test_a_rerun_after_the_users_module_changed_refuses_the_runs_of_the_old_code(tmp_path):
    hooked_spec(tmp_path, version=1)
    args = ["--logdir", "logs", "--workers", "1"]
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", *args)
    assert code == 0, out + err
    old = json.loads((tmp_path / "logs/toy/seed=0/record.json").read_text())["code"]["log.hook"]["sha256"]

    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", *args)  # the same code: kept
    assert code == 0 and "2 already done" in out, out + err

    (tmp_path / "myhook.py").write_text(HOOK.format(version=2))
    new = __import__("hashlib").sha256((tmp_path / "myhook.py").read_bytes()).hexdigest()
    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", *args)
    assert code == 2, out + err
    assert (
        f"error: toy: 2 finished runs in {Path('logs') / 'toy'} were logged by different code "
        f"(code of log.hook (myhook.py): sha256 {old[:8]} -> {new[:8]}); nothing was run."
    ) in err
    assert "--force" in err
    assert (
        json.loads((tmp_path / "logs/toy/seed=0/record.json").read_text())["code"]["log.hook"]["sha256"]
        == old
    )

    code, out, err = trainer(tmp_path, "sweep", "toy.yaml", *args, "--force")
    assert code == 0 and "2 run now" in out, out + err
    record = json.loads((tmp_path / "logs/toy/seed=0/record.json").read_text())
    assert record["code"]["log.hook"]["sha256"] == new


@pytest.mark.slow
def test_merged_runs_of_other_code_are_named_by_merge_and_never_pooled_by_report(tmp_path):
    args = ["--workers", "1", "--quiet"]
    hooked_spec(tmp_path / "alice", version=1)
    assert trainer(tmp_path / "alice", "sweep", "toy.yaml", "--logdir", "logs", *args)[0] == 0
    hooked_spec(tmp_path / "bob", version=2)
    assert trainer(tmp_path / "bob", "sweep", "toy.yaml", "--logdir", "logs", *args)[0] == 0
    digest = {
        who: json.loads((tmp_path / who / "logs/toy/seed=0/record.json").read_text())["code"]["log.hook"][
            "sha256"
        ]
        for who in ("alice", "bob")
    }
    code, out, err = trainer(tmp_path, "merge", "alice/logs", "bob/logs", "--into", "team")
    assert code == 0, out + err
    assert f"(same name, code of log.hook: sha256 {digest['alice'][:8]} -> {digest['bob'][:8]})" in out, out
    code, out, err = trainer(tmp_path, "status", "team")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].split()[-1] == "code"
    codes = {line.split()[-1] for line in lines[1:5]}  # the four runs' rows
    assert len(codes) == 2 and all(len(c) == 8 for c in codes), out
    first, second = sorted(codes)
    assert (
        f"toy: its runs were made by 2 versions of its user code (code {first}: 2 runs, "
        f"code {second}: 2 runs); the report keeps them apart"
    ) in out
    code, out, err = trainer(tmp_path, "status", "team", "--filter", f"code={first}")
    assert code == 0 and "2 of 4 runs" in out, out + err
    code, out, err = trainer(tmp_path, "report", "team", "--out", "report")
    assert code == 0, out + err
    text = (tmp_path / "report/report.md").read_text()
    assert "4 runs in 2 groups" in text
    assert "2 groups would all be `base`: their runs have one name but different code" in text
    labels = sorted(
        line.split("|")[2].strip()
        for line in text.splitlines()
        if line.startswith("| 1 ") or line.startswith("| 2 ")
    )
    assert len(labels) == 2 and all(label.startswith("`code=") for label in labels), labels


@pytest.mark.slow
def test_merged_runs_of_one_name_and_other_settings_get_labels_that_tell_them_apart(tmp_path):
    args = ["--workers", "1", "--quiet"]
    for who, lr in (("alice", 0.01), ("bob", 0.02)):
        toy_spec(tmp_path / who, "train.seed: [0, 1]", steps=20, lr=lr)
        assert trainer(tmp_path / who, "sweep", "toy.yaml", "--logdir", "logs", *args)[0] == 0
    code, out, err = trainer(tmp_path, "merge", "alice/logs", "bob/logs", "--into", "team")
    assert code == 0 and "(same name, optimizer.lr: 0.01 -> 0.02)" in out, out + err
    code, out, err = trainer(tmp_path, "report", "team", "--out", "report")
    assert code == 0, out + err
    text = (tmp_path / "report/report.md").read_text()
    assert "`lr=0.01`" in text and "`lr=0.02`" in text
    assert "but other settings" in text
