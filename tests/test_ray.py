"""Sweeps on a real Ray cluster started on this machine: a head and a second node, shared by these tests.

The nodes keep their scratch folders in a temporary folder of their own, and the user's module
refuses to run from the spec folder itself on a node, so these tests also show that runs reach the
log folder only through this process and that user code travels as a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import scalars
from trainer.cli.commands import main

# Read once, when Ray is imported: keeps every node of the test cluster on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

MODULE = '''
    """A user's model and hook; on a Ray node they must be the copy that travelled, not this file."""
    import os
    import time
    from pathlib import Path

    from torch import nn

    HERE = Path(__file__).resolve().parent


    def _ray_node():
        try:
            import ray

            if not ray.is_initialized():  # planning, on the sweep's machine
                return None
            context = ray.get_runtime_context()
            return context.get_node_id() if context.worker.mode == ray.WORKER_MODE else None
        except Exception:
            return None


    def net(features: int = 4, width: int = 8):
        node = _ray_node()
        if node is not None:
            if str(HERE) == (HERE / "original.txt").read_text():
                raise RuntimeError("a Ray node imported the spec folder itself, not its copy")
            doomed = HERE / "doomed.txt"
            if doomed.exists() and doomed.read_text().split()[0] == node:
                Path(doomed.read_text().split()[1], str(os.getpid())).write_text("")
                time.sleep(600)  # until the test kills this node
        return nn.Sequential(nn.Linear(features, width), nn.Tanh(), nn.Linear(width, 1))


    def weight_norm(writer, step, model, **context):
        writer.add_scalar("custom/weight_norm", float(sum(p.norm() for p in model.parameters())), step)
'''

SPEC = """
    name: tiny
    data: {kind: synthetic, rows: 256, features: 4, noise: 0.1, seed: 0}
    model: {kind: "raymodel:net", features: 4, width: 8}
    loss: {kind: mse}
    optimizer: {kind: sgd, lr: 0.05}
    train: {steps: 60, batch_size: 16}
    eval: {every: 20}
    log: {hook: "raymodel:weight_norm"}
    sweep:
      optimizer.lr: [0.05, 0.01]
      train.seed: [0, 1, 2]
"""

# Every node: one CPU, on 127.0.0.1 only.
LOCAL_NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
# What differs between any two sweeps of the same runs, local or not.
PER_SWEEP = {"started", "ended", "duration_s", "pid", "host", "files"}


@pytest.fixture(scope="module")
def cluster():
    """A Ray head and one more node on this machine, 1 CPU each, on 127.0.0.1, with their own temp folder."""
    from ray.cluster_utils import Cluster

    node_tmp = tempfile.mkdtemp(prefix="rt")  # short: Ray's socket paths live under it
    saved = {"TMPDIR": os.environ.get("TMPDIR")}
    os.environ["TMPDIR"] = node_tmp
    fast_death = {
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 500,
        "health_check_failure_threshold": 3,
    }
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={**LOCAL_NODE, "include_dashboard": False, "_system_config": fast_death},
        )
        cluster.add_node(**LOCAL_NODE)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    cluster.node_tmp = Path(node_tmp)
    yield cluster
    cluster.shutdown()
    shutil.rmtree(node_tmp, ignore_errors=True)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """experiments/ with the user's module and the spec; the working folder is tmp_path."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "raymodel.py").write_text(textwrap.dedent(MODULE))
    (folder / "original.txt").write_text(str(folder.resolve()))
    (folder / "tiny.yaml").write_text(textwrap.dedent(SPEC))
    monkeypatch.chdir(tmp_path)
    yield folder
    sys.modules.pop("raymodel", None)
    sys.path[:] = [p for p in sys.path if p != str(folder.resolve())]


SPEC_PATH = "experiments/tiny.yaml"


def sweep_on(cluster, logdir: str, *args: str) -> int:
    return main(
        [
            "sweep",
            SPEC_PATH,
            "--logdir",
            logdir,
            "--quiet",
            "--executor",
            "ray",
            "--address",
            cluster.address,
            *args,
        ]
    )


def run_folders(logdir: Path) -> list[Path]:
    return sorted(p for p in (logdir / "tiny").iterdir() if not p.name.startswith("."))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(folder: Path) -> dict:
    return json.loads((folder / "record.json").read_text())


def kill_node(node, *pids: int) -> None:
    """SIGKILL every process of a Ray node (and these pids besides), as a machine that dies."""
    for pid in [*pids, *(p.process.pid for ps in node.all_processes.values() for p in ps)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_ray_sweep_leaves_the_folder_a_local_sweep_leaves(cluster, project, tmp_path):
    assert sweep_on(cluster, "on-ray") == 0
    assert main(["sweep", SPEC_PATH, "--logdir", "local", "--quiet", "--workers", "2"]) == 0
    ours, theirs = run_folders(tmp_path / "on-ray"), run_folders(tmp_path / "local")
    assert [p.name for p in ours] == [p.name for p in theirs] and len(ours) == 6
    for a, b in zip(ours, theirs):
        names = sorted(p.name for p in a.iterdir())
        assert names == sorted(p.name for p in b.iterdir()) or [n[:20] for n in names] == [
            n[:20] for n in sorted(p.name for p in b.iterdir())
        ]
        assert (a / "config.yaml").read_text() == (b / "config.yaml").read_text()
        assert digest(a / "model.pt") == digest(b / "model.pt")
        tags = scalars(a)
        assert "custom/weight_norm" in tags and tags == scalars(b)  # bit-identical, the hook's too
        ra, rb = record(a), record(b)
        assert ra["status"] == "complete"
        assert {k: v for k, v in ra.items() if k not in PER_SWEEP} == {
            k: v for k, v in rb.items() if k not in PER_SWEEP
        }
        assert ra["pid"] != os.getpid()  # trained elsewhere, written here
    # A second sweep finds everything done and runs nothing.
    before = {p.name: digest(p / "record.json") for p in ours}
    assert sweep_on(cluster, "on-ray") == 0
    assert {p.name: digest(p / "record.json") for p in run_folders(tmp_path / "on-ray")} == before


def test_run_folders_are_written_only_here_and_scratch_folders_are_removed(cluster, project, tmp_path):
    assert sweep_on(cluster, "logs") == 0
    assert len(run_folders(tmp_path / "logs")) == 6
    on_nodes = [p for p in cluster.node_tmp.rglob("*") if p.name in ("record.json", "config.yaml")]
    assert on_nodes == []
    assert list(cluster.node_tmp.glob("trainer-run-*")) == []
    copies = list(cluster.node_tmp.rglob("raymodel.py"))  # the user's code reached the nodes as a copy
    assert copies and all(project not in p.parents for p in copies)


def test_a_node_killed_mid_sweep_costs_no_run_and_runs_none_twice(cluster, project, tmp_path):
    doomed = cluster.add_node(**LOCAL_NODE)
    markers = tmp_path / "markers"
    markers.mkdir()
    (project / "doomed.txt").write_text(f"{doomed.node_id} {markers}")

    def kill_when_busy() -> None:
        for _ in range(1200):  # a task of the sweep is stuck on the doomed node
            found = list(markers.iterdir())
            if found:
                kill_node(doomed, int(found[0].name))
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    try:
        status = sweep_on(cluster, "logs")
    finally:
        killer.join()
        cluster.remove_node(doomed, allow_graceful=False)
    assert list(markers.iterdir()), "no task ran on the node that was to be killed"
    assert status == 0
    folders = run_folders(tmp_path / "logs")
    assert len(folders) == 6
    for folder in folders:
        assert record(folder)["status"] == "complete"
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        assert all(len(values) == len(set(values)) for values in scalars(folder).values())
    assert not any((tmp_path / "logs" / "tiny" / ".claims").iterdir())


def test_a_rerun_resumes_after_the_sweep_was_killed(cluster, project, tmp_path):
    command = [sys.executable, "-m", "trainer", "sweep", SPEC_PATH, "--logdir", "logs", "--quiet"]
    command += ["--executor", "ray", "--address", cluster.address]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logdir = tmp_path / "logs"
    try:
        for _ in range(1200):  # until the first run is recorded
            if list(logdir.glob("tiny/*/record.json")) or driver.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finished = {p.parent.name: digest(p) for p in logdir.glob("tiny/*/record.json")}
    assert finished
    assert sweep_on(cluster, "logs") == 0
    folders = run_folders(logdir)
    assert len(folders) == 6 and all(record(f)["status"] == "complete" for f in folders)
    assert {n: digest(logdir / "tiny" / n / "record.json") for n in finished} == finished  # kept, not rerun


def test_a_local_sweep_and_a_ray_sweep_on_one_folder_run_each_run_once(cluster, project, tmp_path, capsys):
    command = [
        sys.executable,
        "-m",
        "trainer",
        "sweep",
        SPEC_PATH,
        "--logdir",
        "logs",
        "--quiet",
        "--workers",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    local = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status = sweep_on(cluster, "logs")
    finally:
        local_out, _ = local.communicate(timeout=300)
    ours = capsys.readouterr().out
    assert status == 0 and local.returncode == 0, local_out
    ran = [int(out.split(" run now")[0].rsplit("(", 1)[1]) for out in (ours, local_out)]
    assert sum(ran) == 6
    folders = run_folders(tmp_path / "logs")
    assert len(folders) == 6
    for folder in folders:
        assert record(folder)["status"] == "complete"
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1


def test_ray_not_installed_is_one_sentence_with_the_install_command(project, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["sweep", SPEC_PATH, "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[ray]'" in err and "Traceback" not in err
    assert not Path("logs").exists()


def test_an_unreachable_head_is_one_sentence(project, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["sweep", SPEC_PATH, "--executor", "ray", "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the Ray head at 127.0.0.1:{port}") and err.count("\n") == 1
    assert not list(Path("logs").glob("*/*/record.json"))


LONG_MODULE = '''
    """A model whose builder leaves a mark when it runs on the node the test kills, naming its seed."""
    from pathlib import Path

    import torch
    from torch import nn

    HERE = Path(__file__).resolve().parent


    def net(in_features: int, width: int = 64):
        marks = HERE / "doomed.txt"
        if marks.exists():
            import ray

            node, folder = marks.read_text().split()
            if ray.is_initialized() and ray.get_runtime_context().get_node_id() == node:
                Path(folder, str(torch.initial_seed())).write_text("")
        return nn.Sequential(nn.Linear(in_features, width), nn.Tanh(), nn.Linear(width, 1))
'''

LONG_SPEC = """
    name: long
    data: {kind: synthetic, rows: 256, features: 8, noise: 0.1, seed: 0}
    model: {kind: "longmodel:net"}
    loss: {kind: mse}
    optimizer: {kind: adam, lr: 0.003}
    train: {steps: 6000, batch_size: 16}
    eval: {every: 100}
    log: {every: 10, histograms_every: 100, checkpoint_every: 400}
    sweep:
      train.seed: [0, 1, 2]
"""


def test_a_task_whose_node_dies_goes_on_from_the_last_checkpoint_that_reached_the_sweep(
    cluster, project, tmp_path
):
    (project / "longmodel.py").write_text(textwrap.dedent(LONG_MODULE))
    (project / "long.yaml").write_text(textwrap.dedent(LONG_SPEC))
    spec = "experiments/long.yaml"
    assert main(["sweep", spec, "--logdir", "local", "--quiet", "--workers", "2"]) == 0
    doomed = cluster.add_node(**LOCAL_NODE)
    markers = tmp_path / "markers"
    markers.mkdir()
    (project / "doomed.txt").write_text(f"{doomed.node_id} {markers}")
    logdir = tmp_path / "logs"
    killed: list[str] = []

    def kill_after_a_checkpoint_arrived() -> None:
        for _ in range(3000):
            found = list(markers.iterdir())
            if found and (logdir / "long" / f"seed={found[0].name}" / "resume.pt").exists():
                killed.append(found[0].name)
                kill_node(doomed)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_a_checkpoint_arrived)
    killer.start()
    try:
        status = main(
            ["sweep", spec, "--logdir", "logs", "--quiet", "--executor", "ray", "--address", cluster.address]
        )
    finally:
        killer.join()
        cluster.remove_node(doomed, allow_graceful=False)
    assert killed, "no run on the killed node had a checkpoint in the log folder"
    assert status == 0
    for seed in range(3):
        ours, theirs = logdir / "long" / f"seed={seed}", tmp_path / "local" / "long" / f"seed={seed}"
        done = record(ours)
        assert done["status"] == "complete"
        if str(seed) == killed[0]:
            assert done["resumed"]["from_step"] > 0  # not from step 0
        assert done["weights_sha256"] == record(theirs)["weights_sha256"]
        assert scalars(ours) == scalars(theirs)
        assert not (ours / "resume.pt").exists()


SEARCH = """
    name: search
    data: {kind: seed_toy}
    model: {kind: linear, bias: false}
    loss: {kind: l1, reduction: mean}
    optimizer: {kind: sgd, lr: 0.1}
    train: {steps: 600, batch_size: 1}
    eval: {every: 50}
    search: {method: %s, trials: %d, seed: 1, prune: {kind: asha, min_steps: 100, reduction_factor: 2}}
    sweep:
      optimizer.lr: {loguniform: [0.0001, 0.3]}
      optimizer.weight_decay: {uniform: [0.0, 0.1]}
      train.seed: [0, 1]
"""


def search_records(logdir: Path) -> dict[str, dict]:
    return {p.parent.name: record(p.parent) for p in sorted((logdir / "search").glob("*/record.json"))}


def test_a_pruned_search_on_ray_prunes_what_a_local_sweep_prunes(cluster, project, tmp_path):
    spec = project / "search.yaml"
    spec.write_text(textwrap.dedent(SEARCH % ("random", 10)))
    ray_args = ["--quiet", "--executor", "ray", "--address", cluster.address]
    assert main(["sweep", str(spec), "--logdir", "on-ray", *ray_args]) == 0
    assert main(["sweep", str(spec), "--logdir", "local", "--quiet", "--workers", "2"]) == 0
    ours, theirs = search_records(tmp_path / "on-ray"), search_records(tmp_path / "local")
    assert sorted(ours) == sorted(theirs) and len(ours) == 20
    states = {name: r["status"] for name, r in ours.items()}
    assert set(states.values()) == {"complete", "pruned"}, states
    for name, r in ours.items():  # one program each way, its runs judged in one order: the same verdicts
        assert (r["status"], r["steps_done"], r.get("stopped")) == (
            theirs[name]["status"],
            theirs[name]["steps_done"],
            theirs[name].get("stopped"),
        ), name
        assert r["weights_sha256"] == theirs[name]["weights_sha256"], name
        assert r["pid"] != os.getpid()
    for logdir, recorded in (("on-ray", ours), ("local", theirs)):
        expected: dict[int, str] = {}
        for r in recorded.values():  # a trial with a pruned run is pruned
            state = "PRUNED" if r["status"] == "pruned" else "COMPLETE"
            expected[r["trial"]["number"]] = max(
                expected.get(r["trial"]["number"], state), state, key="COMPLETE PRUNED".split().index
            )
        assert {t.user_attrs["trial"]: t.state.name for t in study_trials(tmp_path / logdir)} == expected
    # Nothing was written outside the folders named: the study is in the log folder, not a node's copy.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments", "local", "on-ray"]


def study_trials(logdir: Path) -> list:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = JournalStorage(JournalFileBackend(str(logdir / "search" / "study.journal")))
    return optuna.load_study(study_name="search", storage=journal).get_trials()


def test_tpe_on_ray_draws_each_trial_when_a_worker_is_free(cluster, project, tmp_path):
    spec = project / "search.yaml"
    spec.write_text(textwrap.dedent(SEARCH % ("tpe", 5)))
    assert (
        main(
            [
                "sweep",
                str(spec),
                "--logdir",
                "on-ray",
                "--quiet",
                "--executor",
                "ray",
                "--address",
                cluster.address,
            ]
        )
        == 0
    )
    recorded = search_records(tmp_path / "on-ray")
    assert len(recorded) == 10 and {r["status"] for r in recorded.values()} <= {"complete", "pruned"}
    assert sorted({r["trial"]["number"] for r in recorded.values()}) == list(range(5))
    trials = study_trials(tmp_path / "on-ray")
    assert sorted(t.user_attrs["trial"] for t in trials) == list(range(5))
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
