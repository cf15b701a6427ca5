"""The contract every executor keeps, one suite that each executor's class inherits: the same run
folders and bit-identical numbers as a sweep in this process, Ctrl-C's grace, claims against a
sweep beside it, a unit killed mid-run, a unit lost with its driver that goes on from its checkpoint,
and a search that draws as it goes and prunes.

Each sweep is the real command line in a process group of its own; the runs are held at a step by
a user hook (a file in the spec's folder that the test opens), so the tests wait for events, never
for a duration. The Ray class runs against a Ray cluster started here on 127.0.0.1, the Slurm class
against the one-node Slurm that `make slurm-up` starts (skipped where SLURM_CONF names none).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import scalars
from tests.test_faults import Sweep, records, start, wait_until
from tests.test_search import small, study

pytestmark = pytest.mark.slow

TIMEOUT = 240.0

HOOK = '''
    """Holds a run at step 100, the first time only, until the test opens the gate."""
    import os
    import time
    from pathlib import Path

    HERE = Path({here!r})


    def hold(writer, step, model, **context):
        held = HERE / "held"
        if step != 100 or held.exists() or (HERE / "no-hold").exists():
            return
        (HERE / "holding.tmp").write_text(str(os.getpid()))
        os.replace(HERE / "holding.tmp", HERE / "holding")
        while not (HERE / "gate").exists():
            time.sleep(0.02)
        held.write_text("")
'''

SPEC = """\
name: toy
data: {{kind: seed_toy}}
model: {{kind: linear, bias: false}}
loss: {{kind: mse}}
optimizer: {{kind: sgd, lr: 0.01}}
train: {{steps: {steps}, batch_size: 1, engine: loop}}
eval: {{every: 100}}
log: {{every: 10, histograms_every: 0, checkpoint_every: 50, hook: "gate:hold"}}
sweep:
  optimizer.lr: {lrs}
"""


def project(tmp_path: Path, steps: int = 300, lrs: str = "[0.01, 0.02, 0.03]", hold: bool = True) -> Path:
    folder = tmp_path / "experiments"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gate.py").write_text(textwrap.dedent(HOOK.format(here=str(folder.resolve()))))
    if not hold:
        (folder / "no-hold").write_text("")
    spec = folder / "toy.yaml"
    spec.write_text(SPEC.format(steps=steps, lrs=lrs))
    return spec


def numbers(logdir: Path, experiment: str = "toy") -> dict[str, tuple]:
    """Run folder -> what it computed: its weights' digest, its metrics and every scalar it logged."""
    found = {}
    for name, record in records(logdir, experiment).items():
        found[name] = (
            record["status"],
            record.get("weights_sha256"),
            json.dumps(record.get("metrics"), sort_keys=True),
        )
        found[name] += (json.dumps(scalars(logdir / experiment / name), sort_keys=True),)
    return found


def in_process(tmp_path: Path, spec: Path, name: str) -> dict[str, tuple]:
    """The reference: the same spec, swept in this process (its hook held nowhere)."""
    folder = tmp_path / f"reference-{name}"
    shutil.copytree(spec.parent, folder)
    (folder / "gate.py").write_text(textwrap.dedent(HOOK.format(here=str(folder.resolve()))))
    (folder / "no-hold").write_text("")
    script = tmp_path / f"reference-{name}.py"  # a process of its own: the hook's module is its own
    script.write_text(
        "from trainer import api\n"
        f"api.sweep({str(folder / spec.name)!r}, {str(tmp_path / f'in-process-{name}')!r}, workers=0, quiet=True)\n"
    )
    code, out, err = start(tmp_path, [], script=script, name=f"reference-{name}").finish(TIMEOUT)
    assert code == 0, out + err
    return numbers(tmp_path / f"in-process-{name}")


class ExecutorContract:
    """What every executor's class sets: its command-line flags, and what becomes of a killed unit."""

    killed_status = "failed"  # the status of a run whose unit was killed by a signal

    @pytest.fixture
    def flags(self) -> list[str]:
        raise NotImplementedError

    def one_at_a_time(self, flags: list[str]) -> list[str]:
        return [*flags, "--workers", "1"]

    def lose_units(self) -> None:
        """Units that outlive their driver (a Slurm job) are lost too."""

    def sweep(self, tmp_path: Path, spec: Path, flags: list[str], name: str, quiet: bool = True) -> Sweep:
        return start(
            tmp_path, ["sweep", spec, "--logdir", "logs", *(["--quiet"] if quiet else []), *flags], name=name
        )

    def finish(self, sweep: Sweep) -> tuple[int, str, str]:
        return sweep.finish(TIMEOUT)

    # --- the same results -------------------------------------------------------------------

    def test_same_run_folders_and_bits_as_a_sweep_in_this_process(self, tmp_path, flags, sweeps):
        spec = project(tmp_path, hold=False)
        sweeps.append(sweep := self.sweep(tmp_path, spec, flags, "same"))
        code, out, err = self.finish(sweep)
        assert code == 0, out + err
        assert "3 runs: 3 complete" in out
        got = numbers(tmp_path / "logs")
        assert got == in_process(tmp_path, spec, "same")
        assert {v[0] for v in got.values()} == {"complete"}
        assert not list((tmp_path / "logs" / "toy" / ".claims").iterdir())

    # --- stop, grace -----------------------------------------------------------------------

    def test_ctrl_c_records_the_run_in_flight_and_the_same_command_ends_it_with_the_same_bits(
        self, tmp_path, flags, sweeps
    ):
        spec = project(tmp_path, steps=400, lrs="[0.01]")
        sweeps.append(sweep := self.sweep(tmp_path, spec, flags, "stopped", quiet=False))
        wait_until(lambda: (spec.parent / "holding").exists(), "the run is held at step 100", sweep, TIMEOUT)
        os.kill(sweep.process.pid, signal.SIGINT)
        wait_until(
            lambda: "Interrupted: stopping" in sweep.output(), "the sweep asks its runs to stop", sweep
        )
        (spec.parent / "gate").write_text("")
        code, out, err = self.finish(sweep)
        assert code == 130 and "Traceback" not in err, out + err
        (record,) = records(tmp_path / "logs").values()
        assert record["status"] == "interrupted" and 100 <= record["steps_done"] < 400
        assert not list((tmp_path / "logs" / "toy" / ".claims").iterdir())

        code, out, err = self.finish(self.sweep(tmp_path, spec, flags, "resumed"))
        assert code == 0, out + err
        assert numbers(tmp_path / "logs") == in_process(tmp_path, spec, "stopped")

    # --- claims ----------------------------------------------------------------------------

    def test_two_sweeps_at_once_run_each_run_once(self, tmp_path, flags, sweeps):
        spec = project(tmp_path, lrs="[0.01, 0.02, 0.03, 0.04]", hold=False)
        first, second = (self.sweep(tmp_path, spec, flags, name) for name in ("first", "second"))
        sweeps.extend([first, second])
        outs = [self.finish(s) for s in (first, second)]
        assert [code for code, _, _ in outs] == [0, 0], outs
        ran = sum(int(out.split("(")[1].split(" run now")[0]) for _, out, _ in outs)
        assert ran == 4, outs
        got = numbers(tmp_path / "logs")
        assert got == in_process(tmp_path, spec, "twice")

    # --- a killed unit ---------------------------------------------------------------------

    def test_a_unit_killed_mid_run_is_recorded_and_the_others_run(self, tmp_path, flags, sweeps):
        spec = project(tmp_path, lrs="[0.01, 0.02]")
        sweeps.append(sweep := self.sweep(tmp_path, spec, self.one_at_a_time(flags), "killed"))
        holding = spec.parent / "holding"
        wait_until(holding.exists, "a run is held at step 100", sweep, TIMEOUT)
        (spec.parent / "held").write_text("")  # a retry of the killed unit is not held again
        os.kill(int(holding.read_text()), signal.SIGKILL)
        code, out, err = self.finish(sweep)
        found = {n: r["status"] for n, r in records(tmp_path / "logs").items()}
        assert sorted(found.values()) == sorted(["complete", self.killed_status]), out + err
        assert code == (0 if self.killed_status == "complete" else 1), out + err
        if self.killed_status == "failed":
            (failed,) = [r for r in records(tmp_path / "logs").values() if r["status"] == "failed"]
            assert "SIGKILL" in failed["error"] or "ended without its results" in failed["error"], failed

    # --- a lost unit -----------------------------------------------------------------------

    def test_a_unit_lost_with_its_driver_goes_on_from_its_checkpoint_to_the_same_bits(
        self, tmp_path, flags, sweeps
    ):
        spec = project(tmp_path, steps=400, lrs="[0.01]")
        sweeps.append(sweep := self.sweep(tmp_path, spec, flags, "lost"))
        wait_until(lambda: (spec.parent / "holding").exists(), "the run is held at step 100", sweep, TIMEOUT)
        run = tmp_path / "logs" / "toy" / "lr=0.01"
        wait_until(lambda: (run / "resume.pt").exists(), "the run has a checkpoint", sweep)
        os.killpg(sweep.process.pid, signal.SIGKILL)
        sweep.process.wait()
        self.lose_units()
        (spec.parent / "gate").write_text("")
        code, out, err = self.finish(self.sweep(tmp_path, spec, flags, "again"))
        assert code == 0, out + err
        (record,) = records(tmp_path / "logs").values()
        assert record["status"] == "complete"
        assert numbers(tmp_path / "logs") == in_process(tmp_path, spec, "lost")

    # --- searches --------------------------------------------------------------------------

    def test_a_search_draws_as_it_goes_and_prunes(self, tmp_path, flags, sweeps):
        spec = small(
            tmp_path / "experiments",
            "tpe",
            trials=6,
            prune="{kind: asha, min_steps: 50, reduction_factor: 3}",
        )
        code, out, err = self.finish(self.sweep(tmp_path, spec, flags, "search"))
        assert code == 0, out + err
        recorded = records(tmp_path / "logs", "small")
        assert sorted(r["trial"]["number"] for r in recorded.values()) == list(range(6))
        states = {t.user_attrs["trial"]: t.state.name for t in study(tmp_path / "logs", "small").get_trials()}
        assert {r["trial"]["number"]: r["status"].upper() for r in recorded.values()} == states
        pruned = [r for r in recorded.values() if r["status"] == "pruned"]
        assert pruned, states  # the verdicts reached the runs
        assert all(r["steps_done"] in (50, 150) for r in pruned), [r["steps_done"] for r in pruned]


class TestLocal(ExecutorContract):
    @pytest.fixture
    def flags(self) -> list[str]:
        return ["--workers", "2"]


# --- Ray -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on this machine, on 127.0.0.1, with 2 CPUs."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    yield cluster.address
    cluster.shutdown()


class TestRay(ExecutorContract):
    killed_status = "complete"  # Ray runs a task whose worker died again

    @pytest.fixture
    def flags(self, ray_head) -> list[str]:
        return ["--executor", "ray", "--executor-opt", f"address={ray_head}", "--workers", "2"]

    def one_at_a_time(self, flags: list[str]) -> list[str]:
        return flags


# --- Slurm -----------------------------------------------------------------------------------


def slurm_here() -> bool:
    if not os.environ.get("SLURM_CONF") or shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and bool(done.stdout.strip())


def slurm_or_skip() -> None:
    if slurm_here():
        return
    if os.environ.get("TRAINER_REQUIRE_SLURM") == "1":
        pytest.fail("TRAINER_REQUIRE_SLURM=1 but no Slurm answers: start one with `make slurm-up`")
    pytest.skip('no Slurm here: `eval "$(make -s slurm-up | tail -1)"` starts one on 127.0.0.1')


def cancel_all_jobs() -> None:
    subprocess.run(["scancel", "-u", os.environ.get("USER", "root")], capture_output=True, timeout=60)
    wait_until(
        lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip(),
        "Slurm has no job left",
    )


class TestSlurm(ExecutorContract):
    @pytest.fixture
    def flags(self) -> list[str]:
        slurm_or_skip()
        yield ["--executor", "slurm", "--workers", "2"]
        cancel_all_jobs()

    def one_at_a_time(self, flags: list[str]) -> list[str]:
        return [*flags, "--executor-opt", "max_jobs=1"]

    def lose_units(self) -> None:
        cancel_all_jobs()
