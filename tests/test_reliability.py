"""Reliability under adversarial conditions: paused sweeps, stolen claims, symlinks in destinations,
full disks, inputs that are not files, damaged runs. Real processes, signals and (as root) a real
small tmpfs; every test checks what is on disk afterwards and that no traceback reached the user.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_faults import (
    assert_clean_run,
    descendants,
    event_files,
    gated_script,
    ran_now,
    record,
    records,
    start,
    toy_spec,
    trainer,
    wait_until,
)

from trainer.cli.commands import main
from trainer.run import claims, rundir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc"),
]

# The loop engine's run named NAME waits, once past its first chunk of steps (see gated_script).
HOLD_RUN = """\
    import dataclasses

    import trainer.training.loop

    real_train = trainer.training.loop.train

    def train(run, sink, context, *more):
        def progress(steps):
            context.on_progress(steps)
            if run.name == NAME and steps >= 1000:
                hold()
        return real_train(run, sink, dataclasses.replace(context, on_progress=progress), *more)

    trainer.training.loop.train = train
"""


def held_run(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A gated script (test_faults.gated_script) whose run `name` waits at the gate."""
    return gated_script(tmp_path, HOLD_RUN.replace("NAME", repr(name)))


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


# --- claims -----------------------------------------------------------------------------------


def test_a_paused_sweep_keeps_its_claim_however_old_and_no_run_runs_twice(tmp_path, sweeps):
    spec = toy_spec(tmp_path, "train.seed: [0, 1, 2, 3]", steps=2000)
    logdir = tmp_path / "logs"
    script, waiting, gate = held_run(tmp_path, "seed=0")
    loop = ["--set", "train.engine=loop"]  # the gate holds one run of the loop engine
    first = start(
        tmp_path, ["sweep", spec, "--logdir", logdir, "--workers", 1, *loop], script=script, name="first"
    )
    sweeps.append(first)
    wait_until(waiting.exists, "the first sweep's run is in flight", first)
    family = {first.process.pid, *descendants(first.process.pid)}
    os.killpg(first.process.pid, signal.SIGSTOP)  # a laptop asleep, a frozen VM
    claim = logdir / "toy" / ".claims" / "seed=0"
    hour_ago = time.time() - 3600  # far older than any heartbeat allows
    os.utime(claim, (hour_ago, hour_ago))

    code, out, err = trainer(
        tmp_path, "sweep", spec, "--logdir", logdir, "--workers", 1, *loop, name="second"
    )
    no_traceback(out, err)
    assert code == 0, out + err
    assert ran_now(out) == 3 and "1 left to another sweep" in out
    assert record(logdir, "toy/seed=0") is None and claim.exists()

    gate.write_text("")
    os.killpg(first.process.pid, signal.SIGCONT)
    code, out, err = first.finish()
    no_traceback(out, err)
    assert code == 0, out + err
    assert ran_now(out) == 1  # its own run; the rest were done meanwhile
    found = records(logdir)
    assert {n: d["status"] for n, d in found.items()} == {f"seed={s}": "complete" for s in range(4)}
    assert found["seed=0"]["pid"] in family
    for name in found:
        assert_clean_run(logdir / "toy" / name)  # one event file, by the process of its record
    assert not list((logdir / "toy" / ".claims").iterdir())


def test_a_sweep_whose_claim_was_taken_over_discards_its_result(tmp_path, sweeps):
    spec = toy_spec(tmp_path, "train.seed: [0]", steps=2000)
    logdir = tmp_path / "logs"
    script, waiting, gate = held_run(tmp_path, "seed=0")
    sweep = start(tmp_path, ["sweep", spec, "--logdir", logdir, "--workers", 1], script=script, name="paused")
    sweeps.append(sweep)
    wait_until(waiting.exists, "the run is in flight", sweep)
    os.killpg(sweep.process.pid, signal.SIGSTOP)
    # Meanwhile a sweep on another machine found the claim stale and took the run over.
    claim = logdir / "toy" / ".claims" / "seed=0"
    theirs = json.dumps({"pid": 1, "host": "elsewhere.invalid", "since": time.time(), "token": "theirs"})
    claim.unlink()
    claim.write_text(theirs)
    gate.write_text("")
    os.killpg(sweep.process.pid, signal.SIGCONT)

    code, out, err = sweep.finish()
    no_traceback(out, err)
    assert code == 0, out + err
    assert "taken over by another sweep" in err
    assert not (logdir / "toy" / "seed=0" / "record.json").exists(), "wrote over the new owner's run"
    assert claim.read_text() == theirs, "removed the new owner's claim"


def test_a_claim_that_cannot_be_written_stops_the_sweep_with_a_sentence_and_leaves_no_empty_claim(
    tmp_path, monkeypatch, capsys
):
    import errno

    spec = toy_spec(tmp_path, "train.seed: [0, 1]", steps=200)
    logdir = tmp_path / "logs"

    def full(fd, *args):  # the claim file is created, but its content finds the disk full
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir.os, "fdopen", full)
    code = main(["sweep", str(spec), "--logdir", str(logdir), "--workers", "1", "--quiet"])
    out, err = capsys.readouterr()
    no_traceback(out, err)
    assert code == 2
    assert "Stopped: the log folder cannot be written (cannot claim toy/seed=0 in " in out
    assert "No space left on device" in out
    assert list((logdir / "toy" / ".claims").iterdir()) == []
    assert records(logdir) == {}


# --- workers that die while starting ----------------------------------------------------------

# The first worker dies while starting (see test_faults' 'Patching the workers').
KILLED_ONCE = """\
    import os, signal, sys
    from pathlib import Path

    if __name__ != "__main__":
        import trainer.executors.local as local

        real_worker_main = local._worker_main

        def _worker_main(*args):
            marker = Path({marker!r})
            if not marker.exists():
                marker.write_text("")
                os.kill(os.getpid(), signal.SIGKILL)
            real_worker_main(*args)

        local._worker_main = _worker_main

    if __name__ == "__main__":
        from trainer.cli.commands import main
        from trainer.executors import workers

        workers.WORKER_MODULES.append("killed_once")
        sys.exit(main())
"""


def test_a_worker_killed_while_starting_is_replaced_and_the_sweep_goes_on(tmp_path):
    spec = toy_spec(tmp_path, "train.seed: [0, 1, 2]", steps=200)
    logdir = tmp_path / "logs"
    script = tmp_path / "killed_once.py"
    script.write_text(textwrap.dedent(KILLED_ONCE.format(marker=str(tmp_path / "killed"))))
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--workers", 2, script=script)
    no_traceback(out, err)
    assert code == 0, out + err
    assert "A worker process was killed by signal SIGKILL while starting; starting another." in err
    assert "import torch" not in out + err
    assert {n: d["status"] for n, d in records(logdir).items()} == dict.fromkeys(
        ["seed=0", "seed=1", "seed=2"], "complete"
    )


# --- never outside the target -----------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A log folder with three complete toy runs (copied by each test that changes it)."""
    root = tmp_path_factory.mktemp("finished")
    spec = toy_spec(root, "train.seed: [0, 1, 2]", steps=200)
    code, out, err = trainer(root, "sweep", spec, "--logdir", root / "logs", "--workers", 1)
    assert code == 0, out + err
    return root / "logs"


def copy_of(finished: Path, tmp_path: Path, name: str = "src") -> Path:
    target = tmp_path / name
    shutil.copytree(finished, target, symlinks=True)
    return target


def test_merge_refuses_a_symlinked_experiment_folder_in_the_destination(finished, tmp_path, capsys):
    elsewhere, dest = tmp_path / "elsewhere", tmp_path / "dest"
    elsewhere.mkdir()
    dest.mkdir()
    (dest / "toy").symlink_to(elsewhere)
    code = main(["merge", str(finished), "--into", str(dest)])
    out, err = capsys.readouterr()
    no_traceback(out, err)
    assert code == 2
    assert f"error: {dest}/toy: is a symlink to {elsewhere}; nothing is written through a symlink" in err
    assert "nothing was copied" in err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("dangling", [True, False], ids=["dangling", "to-a-folder"])
def test_merge_refuses_a_symlinked_run_folder_in_the_destination(finished, tmp_path, capsys, dangling):
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    (dest / "toy").mkdir(parents=True)
    if not dangling:
        elsewhere.mkdir()
    (dest / "toy" / "seed=1").symlink_to(elsewhere)
    code = main(["merge", str(finished), "--into", str(dest)])
    out, err = capsys.readouterr()
    no_traceback(out, err)
    assert code == 2
    assert f"{dest}/toy/seed=1: is a symlink to {elsewhere}" + (" (dangling)" if dangling else "") in err
    assert sorted(p.name for p in (dest / "toy").iterdir()) == ["seed=1"]
    assert not elsewhere.exists() if dangling else list(elsewhere.iterdir()) == []


def test_a_sweep_refuses_a_symlinked_experiment_folder(tmp_path, capsys):
    spec = toy_spec(tmp_path, "train.seed: [0]", steps=200)
    logdir, elsewhere = tmp_path / "logs", tmp_path / "elsewhere"
    elsewhere.mkdir()
    logdir.mkdir()
    (logdir / "toy").symlink_to(elsewhere)
    code = main(["sweep", str(spec), "--logdir", str(logdir), "--workers", "1", "--quiet"])
    out, err = capsys.readouterr()
    no_traceback(out, err)
    assert code == 2
    assert f"error: {logdir}/toy: is a symlink to {elsewhere}" in err and "error: nothing was run" in err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_merge_into_a_file_or_under_one_is_a_sentence(finished, tmp_path, capsys, where):
    afile = tmp_path / "afile"
    afile.write_text("")
    dest = afile if where == "file" else afile / "logs"
    code = main(["merge", str(finished), "--into", str(dest)])
    out, err = capsys.readouterr()
    no_traceback(out, err)
    assert code == 2
    expected = (
        f"error: {dest}: is a file, not a log folder; give a folder to merge into\n"
        if where == "file"
        else f"error: cannot create the log folder {dest}: Not a directory\n"
    )
    assert err == expected


# --- a real full disk (a small tmpfs; root only) ----------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards; skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill a file system until at most `leave` bytes are free."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                free = shutil.disk_usage(disk).free
                if free <= leave:
                    break
                f.write(bytes(min(65536, max(4096, free - leave))))
                f.flush()
        except OSError:
            pass


def test_a_sweep_onto_a_full_disk_is_one_sentence_and_leaves_no_claim(tmp_path, small_disk):
    spec = toy_spec(tmp_path, "train.seed: [0, 1]", steps=200)
    logdir = small_disk / "logs"
    logdir.mkdir()
    fill(small_disk)
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--workers", 1)
    no_traceback(out, err)
    assert code == 2, out + err
    assert "No space left on device" in out + err
    assert not [
        p for p in logdir.rglob("*") if p.is_file() and p.stat().st_size == 0 and ".claims" in p.parts
    ]
    assert records(logdir) == {}
    # Space freed: the same command runs everything.
    (small_disk / "filler").unlink()
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--workers", 1, name="again")
    assert code == 0, out + err
    assert {n: d["status"] for n, d in records(logdir).items()} == {
        "seed=0": "complete",
        "seed=1": "complete",
    }


def test_a_merge_onto_a_full_disk_is_one_sentence_and_leaves_nothing_half_copied(
    finished, tmp_path, small_disk
):
    dest = small_disk / "logs"
    dest.mkdir()
    fill(small_disk, leave=16384)  # room for a folder or two, not for a run's event file
    code, out, err = trainer(tmp_path, "merge", finished, "--into", dest)
    no_traceback(out, err)
    assert code == 2, out + err
    assert "No space left on device" in err and "nothing partial was left; free space" in err
    assert not list((dest / "toy").glob(".merge-*"))
    code, out, err = trainer(tmp_path, "index", dest, name="index")
    no_traceback(out, err)
    assert code in (0, 2), out + err


# --- inputs that are not files ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_device_or_a_pipe_as_spec_or_csv_is_refused_at_once(tmp_path, kind):
    if kind == "device":
        path = Path("/dev/zero")
        expected = "is a character device, not a regular file"
    else:
        path = tmp_path / "pipe"
        os.mkfifo(path)  # nobody writes to it: reading it would block forever
        expected = "is a named pipe, not a regular file"
    spec = tmp_path / "csv.yaml"
    spec.write_text(f"name: csv\ndata: {{kind: csv, path: {path}, target: y}}\n")
    code, out, err = trainer(tmp_path, "check", path, spec)
    no_traceback(out, err)
    assert code == 2
    assert f"error: {path}: {expected}" in err
    assert f"error: {spec}:2: data.path: '{path}' {expected}" in err


def test_an_oversized_spec_is_refused_with_its_size(tmp_path, capsys):
    spec = tmp_path / "huge.yaml"
    spec.write_text("name: huge\n" + "# padding\n" * 30000)
    assert main(["check", str(spec)]) == 2
    assert (
        capsys.readouterr().err == f"error: {spec}: is 300,011 bytes; a spec file may hold at most 262,144\n"
    )


# --- messages that name the cause -------------------------------------------------------------


def test_a_long_sweep_list_is_named_with_its_length(tmp_path, capsys, monkeypatch):
    from trainer.spec import yaml_lines as spec_module

    monkeypatch.setattr(spec_module, "MAX_VALUES", 1000)  # the same code path as 100,000, in less time
    spec = tmp_path / "long.yaml"
    spec.write_text("name: long\nsweep:\n  train.seed: [" + ",".join(["0"] * 1001) + "]\n")
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"error: {spec}:3: sweep.train.seed: the list holds 1,001 values, more than the 1,000 a "
        f"spec may hold\n"
    )


@pytest.mark.parametrize("key", ["train.seed", "data.seed"])
def test_a_seed_torch_cannot_take_is_refused_by_check(tmp_path, capsys, key):
    spec = tmp_path / "seed.yaml"
    section, name = key.split(".")
    data = "data: {kind: synthetic}\n" if section == "train" else ""
    spec.write_text(
        f"name: seed\n{data}{section}: {{{'kind: synthetic, ' if section == 'data' else ''}"
        f"{name}: {2**64}}}\n"
    )
    assert main(["check", str(spec)]) == 2
    assert (
        f"{key}: must be from -2**63 to 2**64 - 1, the seeds torch takes, got {2**64}"
        in capsys.readouterr().err
    )


def test_an_experiment_named_like_the_index_file_is_refused(tmp_path, capsys):
    spec = tmp_path / "index.yaml"
    spec.write_text("name: events.out.tfevents.0000000000.hparams-index\n")
    assert main(["check", str(spec)]) == 2
    assert "name: 'events.out.tfevents.0000000000.hparams-index' is reserved" in capsys.readouterr().err


def test_a_dry_run_too_large_to_list_is_refused_from_the_sweep_lengths(tmp_path, capsys):
    spec = tmp_path / "grid.yaml"
    seeds = ",".join(map(str, range(10_000)))
    rates = ",".join(f"0.{i:04d}" for i in range(1, 1001))
    spec.write_text(f"name: grid\nsweep:\n  train.seed: [{seeds}]\n  optimizer.lr: [{rates}]\n")
    assert main(["sweep", str(spec), "--dry-run", "--allow-large", "--logdir", str(tmp_path / "logs")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"error: {spec}:2: sweep: 10,000,000 runs (train.seed 10,000 x optimizer.lr 1,000)" in err
    assert "--dry-run lists at most 50,000 runs" in err
    assert not (tmp_path / "logs").exists()


# --- damage after completion ------------------------------------------------------------------


def status(tmp_path: Path, logdir: Path, *flags: str) -> tuple[int, dict[str, str], str]:
    code, out, err = trainer(tmp_path, "status", logdir, *flags, name="status")
    no_traceback(out, err)
    return code, dict(re.findall(r"^(toy/\S+)\s+(\w+)", out, re.M)), out


def test_damaged_runs_are_reported_refused_by_merge_and_rerun_with_the_evidence_kept(finished, tmp_path):
    logdir = copy_of(finished, tmp_path, "logs")
    (event0,) = event_files(logdir / "toy/seed=0")
    event0.unlink()
    (event1,) = event_files(logdir / "toy/seed=1")
    with open(event1, "r+b") as f:
        f.truncate(event1.stat().st_size - 100)
    (logdir / "toy/seed=2/config.yaml").unlink()

    code, states, out = status(tmp_path, logdir)
    assert code == 1
    assert states == {"toy/seed=0": "damaged", "toy/seed=1": "damaged", "toy/seed=2": "damaged"}
    assert "toy/seed=0: its event file is missing" in out
    assert re.search(r"toy/seed=1: events\.out\.tfevents\.\S+ is [\d,]+ bytes, the record says [\d,]+", out)
    assert "toy/seed=2: its config.yaml is missing" in out

    code, out, err = trainer(tmp_path, "merge", logdir, "--into", tmp_path / "merged", name="merge")
    no_traceback(out, err)
    assert code == 1
    assert out.count("refused (damaged)") == 3
    assert not (tmp_path / "merged" / "toy").exists()

    spec = finished.parent / "toy.yaml"
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", logdir, "--workers", 1, name="rerun")
    no_traceback(out, err)
    assert code == 0, out + err
    assert ran_now(out) == 3
    assert status(tmp_path, logdir)[:2] == (
        0,
        dict.fromkeys(["toy/seed=0", "toy/seed=1", "toy/seed=2"], "complete"),
    )
    aside = logdir / "toy" / ".damaged"
    assert sorted(p.name for p in aside.iterdir()) == ["seed=0.1", "seed=1.1", "seed=2.1"]
    assert "its event file is missing" in (aside / "seed=0.1" / "DAMAGED.txt").read_text()
    kept = [p.name for p in (aside / "seed=1.1").iterdir()]
    assert event1.name.replace("tfevents", "tf-events") in kept and "record.json" in kept
    for name in ("seed=0", "seed=1", "seed=2"):
        assert_clean_run(logdir / "toy" / name)


def test_verify_reads_checksums_that_the_quick_check_cannot_see(finished, tmp_path):
    logdir = copy_of(finished, tmp_path, "logs")
    (event,) = event_files(logdir / "toy/seed=1")
    data = bytearray(event.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    event.write_bytes(bytes(data))
    assert status(tmp_path, logdir)[:2] == (
        0,
        dict.fromkeys(["toy/seed=0", "toy/seed=1", "toy/seed=2"], "complete"),
    )
    code, states, out = status(tmp_path, logdir, "--verify")
    assert code == 1
    assert states["toy/seed=1"] == "damaged" and states["toy/seed=0"] == "complete"
    assert re.search(
        r"toy/seed=1: events\.out\.tfevents\.\S+: the record at byte [\d,]+ has a bad checksum", out
    )


def test_a_checkpoint_named_by_the_record_must_be_there(finished, tmp_path):
    logdir = copy_of(finished, tmp_path, "logs")
    folder = logdir / "toy/seed=0"
    assert json.loads((folder / "record.json").read_text())["checkpoint"] == "model.pt"
    weights = (folder / "model.pt").read_bytes()
    (folder / "model.pt").unlink()
    code, states, out = status(tmp_path, logdir)
    assert code == 1 and states["toy/seed=0"] == "damaged"
    assert "toy/seed=0: its checkpoint 'model.pt' is missing" in out
    (folder / "model.pt").write_bytes(weights)
    assert status(tmp_path, logdir)[0] == 0


def test_a_folder_where_the_index_belongs_is_a_sentence(finished, tmp_path, capsys):
    dest = tmp_path / "dest"
    (dest / "events.out.tfevents.0000000000.hparams-index").mkdir(parents=True)
    code = main(["merge", str(finished), "--into", str(dest)])
    out, err = capsys.readouterr()
    no_traceback(out, err)
    assert code == 2
    assert (
        err == f"error: {dest}/events.out.tfevents.0000000000.hparams-index: is a folder, where the log "
        f"folder's HParams record belongs; move it away; nothing more was done\n"
    )
    assert sorted(p.name for p in (dest / "toy").iterdir()) == ["seed=0", "seed=1", "seed=2"]


def test_a_takeover_lock_left_by_a_killed_sweep_does_not_keep_its_run_from_the_next(tmp_path: Path):
    # A sweep killed while it moved a record into place leaves its claim and the claim's takeover lock.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = claims.claim_path(tmp_path, "toy", "seed=0")
    path.parent.mkdir(parents=True)
    dead = json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": None, "token": "x"})
    path.write_text(dead)
    claims.lock_path(path).write_text(dead)
    assert claims.try_claim(path) is not None
