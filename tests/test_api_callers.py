"""trainer.sweep and the sweep's processes as real callers start them: a script read from standard
input, a script without a `__main__` guard, a process that goes on after the sweep, Ctrl-C inside
the call, and a sweep killed by SIGKILL. Real processes and signals; what is on disk is read back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_faults import (
    REPO,
    TIMEOUT,
    Sweep,
    alive,
    descendants,
    event_files,
    gated_script,
    record,
    records,
    start,
    toy_spec,
    trainer,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc"),
]

LONG_STEPS = 2_000_000  # a run that goes on until it is stopped

# A model of the user's own, named by its import path: planning tries it in a child process.
USER_MODEL = """\
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1, bias=False)

    def forward(self, x):
        return self.linear(x)
"""


def user_spec(folder: Path, *sweep: str, steps: int = 200) -> Path:
    """toy_spec's spec with the model of mymodel.py beside it."""
    (folder / "mymodel.py").write_text(USER_MODEL)
    path = toy_spec(folder, *sweep, steps=steps)
    path.write_text(path.read_text().replace("{kind: linear, bias: false}", "{kind: mymodel:Net}"))
    return path


def python(tmp_path: Path, source: str, via: str, name: str = "caller") -> Sweep:
    """A Python program started as a user starts one: `python - <<EOF` (via 'stdin'), or `python
    caller.py` (via 'file'), in tmp_path and a session of its own."""
    source = textwrap.dedent(source)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    if via == "file":
        (tmp_path / f"{name}.py").write_text(source)
        command, stdin = [sys.executable, f"{name}.py"], subprocess.DEVNULL
    else:
        (tmp_path / f"{name}.stdin").write_text(source)
        command, stdin = [sys.executable, "-"], open(tmp_path / f"{name}.stdin")
    stdout, stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdin=stdin, stdout=out, stderr=err, start_new_session=True
        )
    if via != "file":
        stdin.close()
    return Sweep(process, stdout, stderr)


# --- the caller's main module is never run again --------------------------------------------

# No `if __name__ == "__main__":` guard: a child that ran this again would start the sweep again.
CALLER = """\
    import trainer

    print("the caller runs", flush=True)
    frame = trainer.sweep("toy.yaml", logdir="logs", workers={workers}, quiet=True)
    print("states:", dict(zip(frame["run"], frame["state"])))
"""


@pytest.mark.parametrize(
    "via, workers, user_code",
    [
        ("stdin", 2, False),  # every worker used to die re-running '<stdin>', and no run started
        ("stdin", 0, True),  # planning's child, trying the user's model, died the same way
        ("file", 0, True),  # planning's child ran the script again, which failed to start its own
        ("file", 2, True),
    ],
    ids=["stdin-workers", "stdin-user-code", "unguarded-user-code", "unguarded-workers"],
)
def test_a_sweep_starts_from_stdin_and_from_an_unguarded_script(tmp_path, sweeps, via, workers, user_code):
    (user_spec if user_code else toy_spec)(tmp_path, "train.seed: [0, 1]")
    caller = python(tmp_path, CALLER.format(workers=workers), via)
    sweeps.append(caller)
    code, out, err = caller.finish()
    assert code == 0, out + err
    assert out.count("the caller runs") == 1, out
    assert "states: {'seed=0': 'complete', 'seed=1': 'complete'}" in out, out
    assert {name: r["status"] for name, r in records(tmp_path / "logs").items()} == {
        "seed=0": "complete",
        "seed=1": "complete",
    }
    assert "Traceback" not in err, err


def test_a_wrapper_of_the_command_line_without_a_guard_runs_its_sweep(tmp_path):
    spec = toy_spec(tmp_path, "train.seed: [0, 1, 2]")
    script = tmp_path / "unguarded.py"
    script.write_text("import sys\nfrom trainer.cli import main\nsys.exit(main())\n")
    code, out, err = trainer(tmp_path, "sweep", spec, "--logdir", "logs", "--workers", 2, script=script)
    assert code == 0, out + err
    assert "3 runs: 3 complete (3 run now, 0 already done)" in out
    assert "Traceback" not in err, err


# trainer.core.children leans on multiprocessing's preparation data: this pins what it relies on.
CHILDREN = """\
    import json
    import multiprocessing
    import sys
    from multiprocessing import spawn

    from trainer.core.children import MAIN_KEYS, start_without_main

    if __name__ == "__mp_main__":
        print("the main module ran again", flush=True)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("forkserver")
        found = {"seen": {}}
        for how, start in (("ours", start_without_main), ("multiprocessing", lambda p: p.start())):
            here, there = ctx.Pipe()
            child = ctx.Process(target=__import__("probe").main_seen, args=(there,))
            start(child)
            found["seen"][how] = here.recv()
            child.join()
            found.setdefault("start method", multiprocessing.get_start_method(allow_none=True))
        described = spawn.get_preparation_data("probe")
        found["keys"] = [key for key in MAIN_KEYS if key in described]
        print(json.dumps(found))
"""


def test_children_run_no_main_module_where_multiprocessing_would(tmp_path):
    (tmp_path / "probe.py").write_text(
        "import sys\n\n\ndef main_seen(conn):  # the file of the child's main module, if any\n"
        "    conn.send(getattr(sys.modules['__main__'], '__file__', None))\n"
    )
    caller = python(tmp_path, CHILDREN, "file", name="children")
    code, out, err = caller.finish()
    assert code == 0, out + err
    lines = out.splitlines()
    # multiprocessing's own start runs the script again in its child (the detail children.py undoes)...
    assert lines.count("the main module ran again") == 1, out
    assert json.loads(lines[-1]) == {
        "seen": {"ours": None, "multiprocessing": str(tmp_path / "children.py")},
        # ... and starting ours leaves multiprocessing's start method for the caller to choose.
        "start method": None,
        "keys": ["init_main_from_path"],
    }


# --- the caller's process, as the sweep found it ----------------------------------------------

SEARCH = """\
name: search
data: {kind: seed_toy}
model: {kind: linear, bias: false}
loss: {kind: l1, reduction: mean}
optimizer: {kind: sgd, lr: 0.1}
train: {steps: 200, batch_size: full}
eval: {every: 50}
search: {method: random, trials: 2, seed: 0, metric: final/weight_distance}
sweep:
  optimizer.lr: {loguniform: [0.001, 1.0]}
"""

KEPT = """\
    import json
    import logging
    import os
    import random
    import sys

    import numpy as np
    import torch

    import trainer


    def state():
        return {
            "sys.path": list(sys.path),
            "os.environ": dict(os.environ),
            "cwd": os.getcwd(),
            "torch threads": torch.get_num_threads(),
            "optuna level": logging.getLogger("optuna").getEffectiveLevel(),
            "random": random.getstate(),
            "numpy random": np.random.get_state()[1].tolist(),
            "torch random": torch.get_rng_state().tolist(),
        }


    def changed(before):
        after = state()
        return sorted(key for key in before if after[key] != before[key])


    # Guarded, so that this test holds on its own whether or not children run this script again.
    if __name__ == "__main__":
        torch.set_num_threads(2)
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        before = state()
        trainer.sweep("search.yaml", logdir="logs", quiet=True)  # Optuna's first import is the sweep's
        import optuna

        # The level of Optuna's logger is its import's own (INFO), not the sweep's (ERROR).
        found = {
            "first": [key for key in changed(before) if key != "optuna level"],
            "optuna's own level": optuna.logging.get_verbosity(),
        }
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        before = state()
        trainer.sweep("toy.yaml", logdir="logs", quiet=True)  # user code, trained here
        found["user code"] = changed(before)
        trainer.sweep("search.yaml", logdir="logs", quiet=True, force=True)
        found["search"] = changed(before)
        try:
            trainer.sweep("toy.yaml", logdir="logs", quiet=True, overrides={"model.depth": 2})
        except trainer.UserError as exc:
            found["error"] = str(exc)
        found["after the error"] = changed(before)
        print(json.dumps(found))
"""


def test_a_sweep_in_this_process_leaves_the_caller_s_process_as_it_found_it(tmp_path):
    user_spec(tmp_path, "train.seed: [0, 1]")
    (tmp_path / "search.yaml").write_text(SEARCH)
    caller = python(tmp_path, KEPT, "file", name="kept")
    code, out, err = caller.finish()
    assert code == 0, out + err
    found = json.loads(out.splitlines()[-1])
    assert found == {
        "error": "--set model.depth=2: model.depth: unknown key 'depth' for kind 'mymodel:Net'; its "
        "settings: none",
        "first": [],
        "optuna's own level": 20,  # INFO
        "user code": [],
        "search": [],
        "after the error": [],
    }


# --- Ctrl-C inside trainer.sweep --------------------------------------------------------------

INTERRUPTED = """\
    import trainer

    if __name__ == "__main__":
        try:
            trainer.sweep("toy.yaml", logdir="logs", workers={workers}, quiet=True)
        except KeyboardInterrupt as exc:
            print(f"KeyboardInterrupt: {{exc}}", flush=True)
            raise
        print("the script went on", flush=True)
"""


@pytest.mark.parametrize("workers", [0, 2], ids=["in-this-process", "workers"])
def test_ctrl_c_in_a_sweep_records_the_run_interrupted_and_raises_keyboard_interrupt(
    tmp_path, sweeps, workers
):
    toy_spec(tmp_path, f"train.steps: [{LONG_STEPS}]", every=1000)
    logdir = tmp_path / "logs"
    caller = python(tmp_path, INTERRUPTED.format(workers=workers), "file", name="interrupted")
    sweeps.append(caller)
    run = logdir / "toy" / f"steps={LONG_STEPS}"
    wait_until(lambda: event_files(run), "the run has started", caller)
    os.killpg(caller.process.pid, signal.SIGINT)
    code, out, err = caller.finish()
    assert code == -signal.SIGINT, out + err  # Python's own end on an uncaught KeyboardInterrupt
    assert (
        "KeyboardInterrupt: the sweep into logs was interrupted; its stopped runs are recorded as "
        "interrupted, and the same sweep again goes on from their checkpoints\n"
    ) in out
    assert "the script went on" not in out
    assert err.rstrip().splitlines()[-1].startswith("KeyboardInterrupt: the sweep into logs"), err
    stopped = record(logdir, f"toy/steps={LONG_STEPS}")
    assert stopped["status"] == "interrupted"
    assert 0 < stopped["steps_done"] < LONG_STEPS
    assert (run / "resume.pt").is_file()


# --- a run killed before it could record itself -----------------------------------------------

# The run waits at the gate once its progress reaches step 2000, before the checkpoint at 2000: the
# last one it took is at step 1000.
HOLD_AT_2000 = """\
    import dataclasses

    import trainer.training.loop

    real_train = trainer.training.loop.train

    def train(run, sink, context, *more):
        def progress(steps):
            context.on_progress(steps)
            if steps >= 2000:
                hold()
        return real_train(run, sink, dataclasses.replace(context, on_progress=progress), *more)

    trainer.training.loop.train = train
"""


def test_a_run_killed_after_ctrl_c_is_recorded_at_its_last_checkpoint_with_its_time(tmp_path, sweeps):
    spec = toy_spec(tmp_path, "train.seed: [0]", steps=5000)
    logdir = tmp_path / "logs"
    script, waiting, _ = gated_script(tmp_path, HOLD_AT_2000)
    args = ["sweep", spec, "--logdir", logdir, "--workers", 1]
    args += ["--set", "train.engine=loop", "--set", "log.checkpoint_every=1000"]

    def killed(name: str) -> tuple[dict, str, str]:
        """The sweep, stopped by two Ctrl-Cs while its run waits: the second kills the run."""
        waiting.unlink(missing_ok=True)
        sweep = start(tmp_path, args, script=script, name=name)
        sweeps.append(sweep)
        wait_until(waiting.exists, "the run waits past its checkpoint at step 1000", sweep)
        os.killpg(sweep.process.pid, signal.SIGINT)
        wait_until(lambda: "Interrupted: stopping" in sweep.output(), "the sweep asks its run to stop", sweep)
        os.killpg(sweep.process.pid, signal.SIGINT)
        code, out, err = sweep.finish()
        assert code == 130, out + err
        status_code, status, _ = trainer(tmp_path, "status", logdir, name=f"{name}-status")
        assert status_code == 0
        return record(logdir, "toy/seed=0"), err, status

    first, err, status = killed("first")
    assert first["status"] == "interrupted" and first["steps_done"] == 1000
    assert first["duration_s"] > 0
    line = re.search(r"\] interrupted\s+toy/seed=0\s+at step 1,000 \((\d+\.\d) s\)", err)
    assert line and float(line[1]) == round(first["duration_s"], 1), err
    assert re.search(rf"^toy/seed=0\s+interrupted\s.*\s1000\s+{first['duration_s']:.1f} s$", status, re.M), (
        status
    )

    # Again: it goes on from step 1000, and is killed before its next checkpoint.
    again, err, status = killed("again")
    assert again["status"] == "interrupted" and again["steps_done"] == 1000
    assert again["duration_s"] > first["duration_s"]  # its time, the first attempt's included
    assert re.search(r"\] interrupted\s+toy/seed=0\s+at step 1,000 \(", err), err
    assert re.search(rf"^toy/seed=0\s+interrupted\s.*\s1000\s+{again['duration_s']:.1f} s$", status, re.M), (
        status
    )


# --- a sweep killed by SIGKILL ----------------------------------------------------------------


def test_a_sweep_killed_by_sigkill_leaves_no_leaked_semaphores(tmp_path, sweeps):
    spec = toy_spec(tmp_path, "train.seed: [0, 1]", steps=LONG_STEPS, every=1000)
    logdir = tmp_path / "logs"
    sweep = start(tmp_path, ["sweep", spec, "--logdir", logdir, "--workers", 2], name="killed")
    sweeps.append(sweep)
    wait_until(
        lambda: all(event_files(logdir / "toy" / f"seed={s}") for s in (0, 1)), "both runs train", sweep
    )
    family = descendants(sweep.process.pid)  # the workers, their fork server, the resource tracker
    os.kill(sweep.process.pid, signal.SIGKILL)
    assert sweep.process.wait(TIMEOUT) == -signal.SIGKILL
    # The resource tracker warns of what is left as the last process holding it exits.
    wait_until(lambda: not any(alive(pid) for pid in family), "every process of the sweep is gone")
    err = sweep.stderr.read_text()
    assert "leaked" not in err and "resource_tracker" not in err, err
