"""A teammate's log folder is untrusted data (docs/threat-model.md): reading it never runs code,
never reads or writes outside the folders named, never follows a symlink out of them, never blocks
on a special file, and stays within a memory bound.

One real log folder is swept once; each test copies it and crafts what an attacker could put in it:
records that name code or paths, symlinks out of it (to /dev/zero, to files beside it), named pipes,
records too large or too deep. Every command runs in a subprocess under a memory limit, and each
test asserts that nothing ran, nothing outside was touched, and each command ended with its sentence.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# A command's address space at the most: torch and matplotlib take about 1 GB of it; reading
# /dev/zero through a symlink took 23 GB before the kernel stopped it.
MEMORY_LIMIT = 3 << 30
# Only to catch a command that blocks (on a named pipe); none comes near it.
HANG = 300

TOY = """\
name: toy
data: {kind: seed_toy}
model: {kind: linear}
loss: {kind: l1, reduction: sum}
optimizer: {kind: sgd, lr: 0.1}
train: {steps: 30, batch_size: 2}
log: {every: 1, histograms_every: 10}
sweep:
  optimizer.lr: [0.05, 0.1, 0.2]
  train.seed: [0, 1]
"""

FOUND = """\
name: found
data: {kind: seed_toy}
model: {kind: linear}
loss: {kind: l1, reduction: mean}
optimizer: {kind: sgd, lr: 0.1}
train: {steps: 30, batch_size: full, seed: 0}
sweep:
  optimizer.lr: {loguniform: [0.01, 0.3]}
search: {method: random, trials: 2, seed: 0}
"""


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """A command of the CLI, in a process of its own under the memory limit."""
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=HANG,
        preexec_fn=_limit,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def python(cwd: Path, code: str) -> subprocess.CompletedProcess:
    """Python code using the API, in a process of its own under the memory limit."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=HANG,
        preexec_fn=_limit,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A log folder as a teammate would send it: six runs of a grid and a search of two trials."""
    where = tmp_path_factory.mktemp("teammate")
    (where / "toy.yaml").write_text(TOY)
    (where / "found.yaml").write_text(FOUND)
    done = run(where, "sweep", "toy.yaml", "found.yaml", "--logdir", "logs", "--workers", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    return where / "logs"


@pytest.fixture
def place(tmp_path: Path, swept: Path) -> Path:
    """tmp_path holding a copy of the teammate's folder (logs/) and, beside it, a folder of the
    user's (outside/) that no command may read or change."""
    shutil.copytree(swept, tmp_path / "logs", symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the user's own file\n")
    shutil.copytree(swept / "toy" / "lr=0.1,seed=0", outside / "planted-run")
    return tmp_path


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every path under root (symlinks not followed) with its type, size, mtime and content hash."""
    found = {}
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if str(rel / d) not in skip]
        for name in dirs + [f for f in files if str(rel / f) not in skip]:
            path = Path(folder) / name
            info = path.lstat()
            digest = None
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(rel / name)] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return found


def record_of(run_folder: Path) -> dict:
    return json.loads((run_folder / "record.json").read_text())


def rewrite_record(run_folder: Path, change, consistent: bool = False) -> None:
    """Edit a run's record; `consistent` also rewrites its digest and config.yaml to agree, as an
    attacker who knows the format would."""
    sys.path.insert(0, str(ROOT))
    from trainer.run import rundir

    record = record_of(run_folder)
    change(record)
    if consistent:
        import yaml

        record["config_digest"] = rundir.data_digest(record["config"])
        (run_folder / "config.yaml").write_text(yaml.safe_dump(record["config"]))
        record.setdefault("files", {})["config.yaml"] = (run_folder / "config.yaml").stat().st_size
    (run_folder / "record.json").write_text(json.dumps(record))


def craft(place: Path) -> dict[str, Path]:
    """Everything an attacker could put in the folder, at once; returns the runs by what was done."""
    logs, outside = place / "logs", place / "outside"
    toy = logs / "toy"
    runs = {
        "code": toy / "lr=0.05,seed=0",
        "escape": toy / "lr=0.05,seed=1",
        "checkpoint": toy / "lr=0.1,seed=1",
        "zero": toy / "lr=0.2,seed=0",
        "pipe": toy / "lr=0.2,seed=1",
        "intact": toy / "lr=0.1,seed=0",
    }
    marker = place / "PWNED"
    # A record naming a shell command as its model's kind, digest and config.yaml made to agree.
    rewrite_record(
        runs["code"],
        lambda r: r["config"].update(model={"kind": "os:system", "command": f"touch {marker}"}),
        consistent=True,
    )
    # Traversal in every field a reader might join to a path.
    rewrite_record(
        runs["escape"],
        lambda r: r.update(experiment="../../outside", run="../outside", spec=str(outside / "evil.yaml")),
    )
    rewrite_record(runs["checkpoint"], lambda r: r.update(checkpoint="../../../outside/secret.txt"))
    # Symlinks out of the folder, to a device and to the user's files; named pipes.
    (events,) = runs["zero"].glob("events.out.tfevents.*")
    events.unlink()
    events.symlink_to("/dev/zero")
    (runs["zero"] / "model.pt").unlink()
    (runs["zero"] / "model.pt").symlink_to("/dev/zero")
    (events,) = runs["pipe"].glob("events.out.tfevents.*")
    events.unlink()
    os.mkfifo(events)
    (runs["pipe"] / "config.yaml").unlink()
    os.mkfifo(runs["pipe"] / "config.yaml")
    (toy / ".claims").mkdir(exist_ok=True)
    os.mkfifo(toy / ".claims" / runs["pipe"].name)
    (toy / "linked").symlink_to(outside / "planted-run")
    (toy / "record-link").mkdir()
    (toy / "record-link" / "record.json").symlink_to(outside / "planted-run" / "record.json")
    # A config.yaml of nested aliases, which hashing would expand to 9**9 values (its size in the
    # record made to agree, so that only reading it tells).
    laughs = sorted((logs / "found").glob("trial=000*"))[0]
    rows = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    rows += [f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    (laughs / "config.yaml").write_text("\n".join(rows) + "\n")
    rewrite_record(
        laughs, lambda r: r["files"].update({"config.yaml": (laughs / "config.yaml").stat().st_size})
    )
    runs["laughs"] = laughs
    # A record whose curve claims a trillion steps and whose true weights are a hundred thousand.
    claims = sorted((logs / "found").glob("trial=001*"))[0]
    rewrite_record(
        claims,
        lambda r: r.update(
            curve={**r["curve"], "first": 0, "every": 1, "last": 10**12}, true_weights=[1.0] * 100_000
        ),
    )
    # The claims folder of the search leads out, to a claim-shaped file of the user's.
    (outside / "claims").mkdir()
    (outside / "claims" / claims.name).write_text('{"host": "the user\'s own file", "pid": 1}')
    shutil.rmtree(logs / "found" / ".claims", ignore_errors=True)
    (logs / "found" / ".claims").symlink_to(outside / "claims")
    # Records too large (a sparse file claiming 4 GB) and too deep for a parser.
    (toy / "huge").mkdir()
    with open(toy / "huge" / "record.json", "wb") as f:
        f.truncate(4 << 30)
    (toy / "deep").mkdir()
    (toy / "deep" / "record.json").write_text("[" * 200_000 + "]" * 200_000)
    # An event file whose last record claims an exabyte.
    (events,) = runs["intact"].glob("events.out.tfevents.*")
    with open(events, "ab") as f:
        f.write((1 << 60).to_bytes(8, "little") + bytes(4))
    # The folder's own files: the seed bands and the study's journal lead out, the index is a pipe.
    shutil.rmtree(logs / "_seeds")
    (logs / "_seeds").symlink_to(outside)
    (logs / "found" / "study.journal").unlink()
    (logs / "found" / "study.journal").symlink_to(outside / "journal")
    (logs / "found" / ".study.lock").unlink(missing_ok=True)
    (logs / "found" / ".study.lock").symlink_to(outside / "lock")
    index = next(logs.glob("events.out.tfevents.*hparams-index"))
    index.unlink()
    os.mkfifo(index)
    return runs


API_READERS = """
import json, sys, warnings
from pathlib import Path
import trainer

runs = trainer.runs("logs")
print("runs:", json.dumps(sorted(zip(runs["run"], runs["state"]))))
curves = trainer.curves("logs", tags=["loss", "train/loss"])
print("curves:", json.dumps(sorted(curves["run"].unique().tolist())))
for folder in sorted(p for p in Path("logs/toy").iterdir() if not p.name.startswith(".")):
    for which in ("final", "best"):
        try:
            trainer.load_model(folder, which=which)
            print("loaded:", folder.name, which)
        except trainer.UserError as error:
            print("refused:", folder.name, which, "|", error)
"""


def test_reading_a_crafted_folder_runs_nothing_reads_nothing_outside_and_ends(place: Path):
    """Every reader over one folder holding every attack at once: each ends with its sentences
    (no traceback, no hang, within the memory limit), no code ran, and nothing outside the
    folders named changed; the intact runs are still read."""
    craft(place)
    logs_before = snapshot(place / "logs")
    before = snapshot(place, skip=("logs", "R", "D"))
    outputs = {}
    for args in (
        ("status", "logs"),
        ("status", "logs", "--verify"),
        ("status", "logs", "--format", "csv"),
        ("status", "logs", "--format", "json"),
        ("index", "logs"),
        ("report", "logs", "--out", "R"),
        ("merge", "logs", "--into", "D"),
        ("compare", "logs", "D"),
    ):
        done = run(place, *args)
        outputs[args] = done
        assert "Traceback" not in done.stderr, (args, done.stderr)
        assert done.returncode in (0, 1, 2), (args, done.returncode, done.stderr)
    api = python(place, API_READERS)
    assert api.returncode == 0 and "Traceback" not in api.stderr, api.stderr
    assert not (place / "PWNED").exists()  # the record's shell command never ran
    assert snapshot(place, skip=("logs", "R", "D")) == before  # nothing outside was read into or changed
    assert snapshot(place / "logs") == logs_before  # index refused to write through _seeds
    assert not (place / "outside" / "journal").exists() and not (place / "outside" / "lock").exists()

    status = outputs[("status", "logs", "--verify")].stdout
    for line in (
        "toy/huge: record.json is 4,294,967,296 bytes, more than such a file may hold",
        "toy/deep: record.json is not valid JSON (RecursionError",
        "toy/lr=0.05,seed=1: record.json is not a run record: its experiment '../../outside' is not a name this tool writes",
        "toy/lr=0.1,seed=1: record.json is not a run record: its checkpoint '../../../outside/secret.txt' is not a name this tool writes",
        "toy/lr=0.2,seed=0: events.out.tfevents.",
        "toy/lr=0.2,seed=1: config.yaml is not a plain file",
        "toy/record-link: record.json is a symlink (not followed)",
        "found/trial=000,lr=0.0647: config.yaml holds YAML aliases, which no run's configuration does",
    ):
        assert line in status, (line, status)
    assert "toy/linked" not in status  # a symlinked run folder is no run folder
    index = outputs[("index", "logs")]
    assert index.returncode == 2 and "logs/_seeds: is a symlink to " in index.stderr, index.stderr
    merged = outputs[("merge", "logs", "--into", "D")].stdout
    assert (
        "copied 2 runs" in merged and "refused: logs/found/study.journal: a symlink (not followed)" in merged
    )
    assert sorted(p.name for p in (place / "D" / "toy").iterdir() if not p.name.startswith(".")) == [
        "lr=0.05,seed=0"
    ]
    assert (place / "R" / "report.md").is_file()
    assert {p.name for p in (place / "R").iterdir()} <= {"report.md", "summary.md", "report.html"} | {
        p.name for p in (place / "R").glob("*.png")
    }
    lines = api.stdout.splitlines()
    assert (
        "refused: lr=0.05,seed=0 final | logs/toy/lr=0.05,seed=0: its model is user code ('os:system'); rebuilding it would import and run that code."
        in "\n".join(lines)
    )
    assert (
        "refused: lr=0.2,seed=0 final | logs/toy/lr=0.2,seed=0/model.pt: is a symlink (not followed)" in lines
    )
    assert "loaded: lr=0.1,seed=0 final" in lines  # its event file was damaged, its weights are whole
    assert "refused: linked final | logs/toy/linked: is a symlink to " in api.stdout  # it leads out


def test_a_record_naming_code_runs_it_only_when_the_user_trusts_it(place: Path):
    """A record whose model kind is `os:system`, made consistent with its digest and config.yaml,
    passes every check of the files; what keeps its command from running is that load_model
    imports user code only when asked to (trust_code=True), and then only from code_dir."""
    run_folder = place / "logs" / "toy" / "lr=0.05,seed=0"
    marker = place / "PWNED"
    rewrite_record(
        run_folder,
        lambda r: r["config"].update(model={"kind": "os:system", "command": f"touch {marker}"}),
        consistent=True,
    )
    verified = run(place, "status", "logs", "--verify")
    assert re.search(r"toy/lr=0\.05,seed=0 +complete", verified.stdout)  # its files agree: nothing to catch
    refused = python(
        place,
        'import trainer\ntry:\n    trainer.load_model("logs/toy/lr=0.05,seed=0")\nexcept trainer.UserError as e:\n    print(e)\n',
    )
    assert refused.stdout.strip() == (
        "logs/toy/lr=0.05,seed=0: its model is user code ('os:system'); rebuilding it would import and "
        "run that code. Pass trust_code=True to import it from code_dir (default: the current folder) "
        "if you trust it, or model=YourModel(...) to load the weights into a model of yours"
    ), refused.stdout + refused.stderr
    assert not marker.exists()
    # With the opt-in the user's decision is carried out, as a spec naming that code would be.
    trusted = python(
        place,
        'import trainer\ntry:\n    trainer.load_model("logs/toy/lr=0.05,seed=0", trust_code=True)\n'
        "except trainer.UserError as e:\n    print(e)\n",
    )
    assert marker.exists() and "os:system returned int, not a torch.nn.Module" in trusted.stdout, (
        trusted.stdout
    )


def test_an_edited_record_is_damaged_and_rebuilds_no_model(place: Path):
    run_folder = place / "logs" / "toy" / "lr=0.1,seed=0"
    rewrite_record(run_folder, lambda r: r["config"]["model"].update(bias=True))  # digest left as it was
    verified = run(place, "status", "logs", "--verify")
    assert (
        "toy/lr=0.1,seed=0: its record's configuration does not match its digest: the record was edited "
        "after the run"
    ) in verified.stdout, verified.stdout
    from trainer.run.checkpoint import CheckpointError, load_model

    with pytest.raises(
        CheckpointError, match=r"does not match its digest.*; its model is not rebuilt from it"
    ):
        load_model(run_folder)


@pytest.mark.parametrize("name", ["study.journal", ".study.lock"])
def test_a_search_never_writes_through_a_symlinked_journal_or_lock(place: Path, name: str):
    (place / "found.yaml").write_text(FOUND.replace("trials: 2", "trials: 3"))
    link = place / "logs" / "found" / name
    link.unlink(missing_ok=True)
    link.symlink_to(place / "outside" / "appended")
    done = run(place, "sweep", "found.yaml", "--logdir", "logs", "--workers", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert (
        f"logs/found/{name}: is a symlink to {place / 'outside' / 'appended'} (dangling); nothing is read or written through a symlink"
        in done.stderr
    )
    assert not (place / "outside" / "appended").exists()
    assert (
        not (place / "logs" / "found" / "trial=002").exists()
        and len(list((place / "logs/found").glob("trial=*"))) == 2
    )


class Gadget:
    """An object a weights-only load refuses to rebuild."""


def test_weights_that_cannot_be_read_are_one_sentence(place: Path):
    """A cut model.pt, one that holds more than weights, and weights of another shape: each a
    sentence naming the file, never torch's advice to load it unsafely."""
    import torch

    from trainer.run.checkpoint import CheckpointError, load_model

    toy = place / "logs" / "toy"
    cut = toy / "lr=0.05,seed=0" / "model.pt"
    size = cut.stat().st_size
    cut.write_bytes(cut.read_bytes()[: size // 2])
    with pytest.raises(CheckpointError) as caught:
        load_model(cut.parent)
    assert (
        str(caught.value)
        == f"{cut}: is {size // 2:,} bytes, the record says {size:,} (cut short or rewritten)"
    )

    rigged = toy / "lr=0.05,seed=1" / "model.pt"
    torch.save({"weight": torch.zeros(1, 4), "extra": Gadget()}, rigged)
    rewrite_record(rigged.parent, lambda r: r["files"].update({"model.pt": rigged.stat().st_size}))
    with pytest.raises(CheckpointError) as caught:
        load_model(rigged.parent)
    message = str(caught.value)
    assert message.startswith(f"{rigged}: cannot be read as the run's weights: it holds more than weights")
    assert "weights_only" not in message and "\n" not in message

    other = toy / "lr=0.1,seed=1" / "model.pt"
    torch.save({"weight": torch.zeros(3, 4)}, other)
    rewrite_record(other.parent, lambda r: r["files"].update({"model.pt": other.stat().st_size}))
    with pytest.raises(
        CheckpointError, match=r"model.pt: its weights do not fit the model: Error\(s\) in loading state_dict"
    ):
        load_model(other.parent)


NET = """\
from torch import nn


class Net(nn.Module):
    def __init__(self, in_features, width: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, x):
        return self.body(x)
"""


def test_load_model_finds_user_code_where_the_user_says(tmp_path: Path):
    """From any folder: the module comes from code_dir (or the current folder), never from the
    spec path the record keeps, which is only named as a hint."""
    project = tmp_path / "project"
    (project / "experiments").mkdir(parents=True)
    (project / "experiments" / "netmod.py").write_text(NET)
    (project / "experiments" / "own.yaml").write_text(
        "name: own\ndata: {kind: seed_toy}\nmodel: {kind: 'netmod:Net'}\nloss: {kind: mse}\n"
        "optimizer: {kind: sgd, lr: 0.05}\ntrain: {steps: 5, batch_size: full}\n"
    )
    done = run(project, "sweep", "experiments/own.yaml", "--logdir", "logs", "--workers", "1")
    assert done.returncode == 0, done.stderr
    load = (
        "import trainer\n"
        "try:\n"
        f"    m = trainer.load_model({str(project / 'logs/own/base')!r}, trust_code=True{{}})\n"
        "    print(type(m).__name__, m.body[0].out_features)\n"
        "except trainer.UserError as e:\n"
        "    print(e)\n"
    )
    away = python(tmp_path, load.format(""))
    assert away.stdout.strip() == (
        f"{project / 'logs/own/base'}: its model cannot be rebuilt here: model.kind: cannot import module "
        f"'netmod': no netmod.py in ./ and no installed module of that name (the run's spec was "
        f"'experiments/own.yaml', relative to where its sweep ran: pass code_dir with the folder of its code)"
    ), away.stdout + away.stderr
    found = python(tmp_path, load.format(f", code_dir={str(project / 'experiments')!r}"))
    assert found.stdout.strip() == "Net 3", found.stdout + found.stderr
    # code_dir comes first: a netmod.py in the current folder is not imported instead.
    (tmp_path / "netmod.py").write_text("raise SystemExit('not this one')\n")
    chosen = python(tmp_path, load.format(f", code_dir={str(project / 'experiments')!r}"))
    assert chosen.stdout.strip() == "Net 3", chosen.stdout + chosen.stderr
