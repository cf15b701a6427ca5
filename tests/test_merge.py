"""Merging teammates' log folders with the real CLI: what ends up on disk, and what is refused."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
from tensorboard.plugins.hparams import api_pb2, metadata

from tests.conftest import read_events
from trainer.cli.commands import main
from trainer.reporting import index

PROJECT = Path(__file__).resolve().parents[1]
METRIC_TAGS = [
    "final/train/loss",
    "best/train/loss",
    "final/weight_distance",
    "final/converged",
    "final/converged_step",
    "final/diverged",
]
SPEC = """
    name: shared
    data: {{kind: seed_toy}}
    loss: {{kind: mse, reduction: {reduction}}}
    optimizer: {{kind: sgd, lr: {lr}}}
    train: {{steps: 30, batch_size: 1}}
    log: {{every: 1, histograms_every: 10}}
"""


def spec_file(folder: Path, lr: float = 0.05, reduction: str = "mean") -> str:
    """A teammate's copy of the 'shared' experiment; each teammate may set their own lr."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "shared.yaml"
    path.write_text(textwrap.dedent(SPEC.format(lr=lr, reduction=reduction)))
    return str(path)


def run(spec: str, logdir: Path, *overrides: str) -> None:
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["run", spec, "--logdir", str(logdir), "--quiet", *sets]) == 0


def merge(capsys, *args: Path | str) -> str:
    """The merge command's output; it exits 1 exactly when it refused something, else 0."""
    capsys.readouterr()
    status = main(["merge", *map(str, args)])
    out = capsys.readouterr().out
    assert status == (1 if "  refused: " in out else 0), out
    return out


def record(folder: Path) -> dict:
    return json.loads((folder / "record.json").read_text())


def runs_in(logdir: Path) -> list[str]:
    return [f"{e}/{r}" for e, r in index.rundir.run_folders(logdir)]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder, by relative path, with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def experiment_record(logdir: Path) -> api_pb2.Experiment:
    """The folder's HParams experiment record, as tensorboard's own reader finds it."""
    content = read_events(logdir).PluginTagToContent(metadata.PLUGIN_NAME)
    return metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])


@pytest.fixture
def teammates(tmp_path: Path) -> tuple[Path, Path]:
    """Alice and Bob each ran 'shared' twice: the same lr=0.05 run, and a 'base' run with their own lr."""
    alice, bob = tmp_path / "alice" / "logs", tmp_path / "bob" / "logs"
    for logdir, lr in ((alice, 0.05), (bob, 0.02)):
        spec = spec_file(logdir.parent / "experiments", lr=lr)
        run(spec, logdir)  # shared/base: same name, different lr
        run(spec, logdir, "optimizer.lr=0.1")  # shared/lr=0.1: the same run for both
    return alice, bob


def test_identical_runs_appear_once(teammates, tmp_path, capsys):
    alice, bob = teammates
    assert record(alice / "shared/lr=0.1")["metrics"] == record(bob / "shared/lr=0.1")["metrics"]
    out = merge(capsys, alice, bob, "--into", tmp_path / "team")
    assert [r for r in runs_in(tmp_path / "team") if r.startswith("shared/lr=0.1")] == ["shared/lr=0.1"]
    assert "1 already present (identical)" in out


def test_different_runs_sharing_a_name_are_both_kept(teammates, tmp_path, capsys):
    alice, bob = teammates
    team = tmp_path / "team"
    merge(capsys, alice, "--into", team)
    before = snapshot(team / "shared/base")
    out = merge(capsys, bob, "--into", team)
    assert snapshot(team / "shared/base") == before  # Alice's run untouched
    (renamed,) = [r for r in runs_in(team) if r.startswith("shared/base~")]
    assert f"kept both: {bob / 'shared/base'} -> {renamed}" in out
    kept = record(team / renamed)
    assert (
        kept["hparams"]["optimizer.lr"] == 0.02
        and kept["merged_from"] == "base"
        and kept["run"] == renamed[7:]
    )
    assert kept["metrics"] == record(bob / "shared/base")["metrics"]
    assert record(team / "shared/base")["hparams"]["optimizer.lr"] == 0.05
    # The renamed copy holds Bob's event file byte for byte, so TensorBoard shows his curves.
    bob_events = {k: v for k, v in snapshot(bob / "shared/base").items() if k.startswith("events.")}
    assert bob_events and all(snapshot(team / renamed)[k] == v for k, v in bob_events.items())


@pytest.mark.parametrize(
    "make_unfinished",
    [
        pytest.param(lambda folder: (folder / "record.json").unlink(), id="no-record"),
        pytest.param(
            lambda folder: (folder / "record.json").write_text(
                json.dumps({**record(folder), "status": "interrupted"})
            ),
            id="interrupted",
        ),
    ],
)
def test_unfinished_runs_are_left_out_unless_asked_for(teammates, tmp_path, capsys, make_unfinished):
    alice, _ = teammates
    make_unfinished(alice / "shared/base")
    out = merge(capsys, alice, "--into", tmp_path / "team")
    assert runs_in(tmp_path / "team") == ["shared/lr=0.1"]
    assert f"left out (unfinished; --include-unfinished copies it): {alice / 'shared/base'}" in out
    merge(capsys, alice, "--into", tmp_path / "team", "--include-unfinished")
    assert runs_in(tmp_path / "team") == ["shared/base", "shared/lr=0.1"]
    assert snapshot(tmp_path / "team/shared/base") == snapshot(alice / "shared/base")


def test_merged_folder_gets_an_experiment_record_of_all_runs(teammates, tmp_path, capsys):
    alice, bob = teammates
    team = tmp_path / "team"
    out = merge(capsys, alice, bob, "--into", team)
    assert f"{team}: HParams record rebuilt for 3 runs" in out
    experiment = experiment_record(team)
    columns = {info.name: info for info in experiment.hparam_infos}
    assert set(columns) == {"experiment", "optimizer.lr"}  # the only setting that varies
    assert columns["optimizer.lr"].type == api_pb2.DATA_TYPE_FLOAT64
    assert [v.number_value for v in columns["optimizer.lr"].domain_discrete.values] == [0.02, 0.05, 0.1]
    assert columns["optimizer.lr"].differs and not columns["experiment"].differs
    # The metrics every run has a value for: 30 steps are too few for any to converge.
    assert not any(record(team / r)["metrics"]["final/converged"] for r in runs_in(team))
    assert [m.name.tag for m in experiment.metric_infos] == [
        t for t in METRIC_TAGS if t != "final/converged_step"
    ]
    assert experiment.description == "3 runs"


def test_a_column_typed_differently_by_a_teammate_becomes_text(teammates, tmp_path, capsys):
    alice, bob = teammates
    older = record(bob / "shared/base")
    older["hparams"]["train.batch_size"] = "1"  # as another version might have written it
    (bob / "shared/base/record.json").write_text(json.dumps(older))
    merge(capsys, alice, bob, "--into", tmp_path / "team")
    (column,) = [i for i in experiment_record(tmp_path / "team").hparam_infos if i.name == "train.batch_size"]
    assert column.type == api_pb2.DATA_TYPE_STRING
    assert [v.WhichOneof("kind") for v in column.domain_discrete.values] == ["string_value"] * 2
    assert sorted(v.string_value for v in column.domain_discrete.values) == ["1", "1.0"]


def test_merging_twice_changes_nothing(teammates, tmp_path, capsys):
    alice, bob = teammates
    team = tmp_path / "team"
    (alice / "shared/base/record.json").unlink()  # one unfinished run as well
    merge(capsys, alice, bob, "--into", team, "--include-unfinished")
    first = snapshot(team)
    out = merge(capsys, alice, bob, "--into", team, "--include-unfinished")
    assert snapshot(team) == first
    assert out.startswith("copied 0 runs, 4 already present (identical)")


def test_log_folders_hold_no_absolute_paths_and_move_freely(teammates, tmp_path, capsys):
    alice, bob = teammates
    diverged = spec_file(tmp_path / "carol", lr=100.0, reduction="sum")
    run(diverged, alice, "train.batch_size=full")
    assert record(alice / "shared/batch_size=full")["status"] == "diverged"
    team = tmp_path / "team"
    merge(capsys, alice, bob, "--into", team)
    for folder in (alice, bob, team):
        for name, content in snapshot(folder).items():
            for path in {str(tmp_path), str(tmp_path.resolve()), str(PROJECT), str(PROJECT.resolve())}:
                assert path.encode() not in content, f"{folder / name} holds the path {path}"

    moved = tmp_path / "elsewhere" / "alice-logs"
    shutil.copytree(alice, moved)
    (moved / index.INDEX_FILE).unlink()
    assert main(["index", str(moved)]) == 0
    assert (moved / index.INDEX_FILE).read_bytes() == (alice / index.INDEX_FILE).read_bytes()
    out = merge(capsys, moved, "--into", team)
    assert out.startswith("copied 0 runs, 3 already present (identical)")


def test_a_failed_run_holds_no_absolute_paths(tmp_path, monkeypatch):
    import trainer.training.loop

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(trainer.training.loop, "train", crash)
    logdir = tmp_path / "logs"
    assert main(["run", spec_file(tmp_path / "experiments"), "--logdir", str(logdir), "--quiet"]) == 1
    assert record(logdir / "shared/base")["status"] == "failed"
    for name, content in snapshot(logdir).items():
        assert str(PROJECT).encode() not in content and str(tmp_path).encode() not in content, name


# --- reading a teammate's folder is safe ------------------------------------------------------


def test_symlinks_in_a_source_are_not_followed(teammates, tmp_path, capsys):
    alice, _ = teammates
    outside = tmp_path / "private"
    shutil.copytree(alice / "shared/lr=0.1", outside / "a-run")
    (outside / "secret.txt").write_text("the secret")
    (outside / "record.json").write_text(
        json.dumps({**record(alice / "shared/base"), "secret": "the secret"})
    )
    os.symlink(outside / "secret.txt", alice / "shared/base/notes.txt")  # a file inside a run
    os.symlink(outside / "a-run", alice / "shared/linked-run")  # a run
    os.symlink(outside, alice / "linked-experiment")  # an experiment
    unrecorded = alice / "shared/lr=0.1"
    (unrecorded / "record.json").unlink()
    os.symlink(outside / "record.json", unrecorded / "record.json")  # a run's record
    team = tmp_path / "team"
    out = merge(capsys, alice, "--into", team, "--include-unfinished")
    assert runs_in(team) == ["shared/base"]
    assert not any(p.is_symlink() for p in team.rglob("*"))
    assert all(b"the secret" not in content for content in snapshot(team).values())
    for refused in (
        "linked-experiment: a symlink",
        "shared/linked-run: a symlink",
        "shared/lr=0.1: record.json is a symlink",
    ):
        assert refused in out


@pytest.mark.parametrize(
    "name", ["-rf", "a\\..\\..\\escape", "new\nline", "x" * 129, "tab\there", "$(reboot)"]
)
def test_run_folders_named_to_escape_are_refused(teammates, tmp_path, capsys, name):
    alice, _ = teammates
    shutil.copytree(alice / "shared/base", alice / "shared" / name)
    team = tmp_path / "team"
    out = merge(capsys, alice, "--into", team)
    assert runs_in(team) == ["shared/base", "shared/lr=0.1"]
    assert f"{name!r} is not a run folder name" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice", "bob", "team"]


def test_an_experiment_folder_named_to_escape_is_refused(teammates, tmp_path, capsys):
    alice, _ = teammates
    shutil.copytree(alice / "shared", alice / "a\\..\\escape")
    out = merge(capsys, alice, "--into", tmp_path / "team")
    assert runs_in(tmp_path / "team") == ["shared/base", "shared/lr=0.1"]
    assert "'a\\\\..\\\\escape' is not an experiment name" in out


@pytest.mark.parametrize("into", ["inside-source", "source-itself"])
def test_the_destination_cannot_overlap_a_source(teammates, capsys, into):
    alice, _ = teammates
    dest = alice / "merged" if into == "inside-source" else alice
    assert main(["merge", str(alice), "--into", str(dest)]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (alice / "merged").exists()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"[]", id="a-list"),
        pytest.param(b'"complete"', id="a-string"),
        pytest.param(b'{"status": "complete"}', id="no-hparams"),
        pytest.param(b'{"status": "complete", "hparams": "lr=1"}', id="hparams-a-string"),
        pytest.param(b'{"status": "complete", "hparams": {"lr": {"$ne": 1}}}', id="hparam-a-mapping"),
        pytest.param(b'{"status": "complete", "hparams": {"lr": NaN}}', id="hparam-nan"),
        pytest.param(b'{"status": "complete", "hparams": {"lr": 1}, "metrics": [1]}', id="metrics-a-list"),
        pytest.param(
            b'{"status": "complete", "hparams": {"lr": 1}, "metrics": {"final/train/loss": "low"}}',
            id="metric-text",
        ),
        pytest.param(b'{"status": ["complete"], "hparams": {"lr": 1}}', id="status-a-list"),
        pytest.param(b'{"status": "complete", "hparams": {"lr": 1}, "swept": 3}', id="swept-a-number"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
    ],
)
def test_a_junk_record_is_refused_and_the_merge_goes_on(teammates, tmp_path, capsys, content):
    alice, bob = teammates
    (alice / "shared/base/record.json").write_bytes(content)
    team = tmp_path / "team"
    out = merge(capsys, alice, bob, "--into", team)
    assert f"refused: {alice / 'shared/base'}: record.json is not" in out
    # Bob's base run takes the free name; nothing of Alice's broken run was copied.
    assert runs_in(team) == ["shared/base", "shared/lr=0.1"]
    assert record(team / "shared/base")["hparams"]["optimizer.lr"] == 0.02
    assert main(["index", str(alice)]) == 0  # the broken source still indexes
    # Swept (set with --set, so in the run names) comes first.
    assert [i.name for i in experiment_record(team).hparam_infos] == ["optimizer.lr", "experiment"]
