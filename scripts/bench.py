"""`make bench`: what logging costs, how sweeps scale, and how big the logs are, measured side by side.

Every timing is the median of repeated runs taken in turn (A, B, A, B, ...), so a noisy neighbour
slows both sides alike. Nothing here is asserted: the table shows each figure next to its target.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from trainer.reporting import index
from trainer.run import rundir
from trainer.spec.sweep import plan
from trainer.tensorboard.sink import TensorBoardSink
from trainer.training.loop import train
from trainer.training.resume import Checkpoints, read, resumed
from trainer.training.sink import NullSink

ROOT = Path(__file__).resolve().parents[1]

NOTEBOOK = {
    "name": "bench-notebook",
    "data": {"kind": "seed_toy"},
    "model": {"kind": "linear", "bias": False},
    "loss": {"kind": "l1", "reduction": "sum"},
    "optimizer": {"kind": "sgd", "lr": 0.1},
    "train": {"steps": 1000, "batch_size": 1, "device": "cpu"},
    "log": {"every": 1, "histograms_every": 10},
}
MLP = {
    "name": "bench-mlp",
    "data": {"kind": "synthetic", "rows": 4000, "features": 16, "noise": 0.1},
    "model": {"kind": "mlp", "hidden": [32, 32]},
    "loss": {"kind": "mse"},
    "optimizer": {"kind": "adam", "lr": 0.003},
    "train": {"steps": 1000, "batch_size": 32, "device": "cpu"},
    "eval": {"every": 100},  # a pass over 4,000 rows costs several steps; the hand loop makes none
    "log": {"every": 1, "histograms_every": 10},
}


def timed(fn: Callable[[], object]) -> float:
    """Seconds for one call, after collecting the garbage an earlier measurement left behind."""
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each function in each of `repeats` rounds, after one warm-up each. Every round
    runs them all, in a fresh random order, so no function always follows the same neighbour."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = random.Random(0)
    for _ in range(repeats):
        names = list(fns)
        order.shuffle(names)
        for name in names:
            times[name].append(timed(fns[name]))
    return times


def paired_ratio(times: dict[str, list[float]], top: str, bottom: str) -> float:
    """The median over rounds of top / bottom, each pair taken within one round: the machine's
    speed drifts between rounds, much less within one."""
    return statistics.median(a / b for a, b in zip(times[top], times[bottom]))


# --- the hand-written references ---------------------------------------------------------------


def hand_loop(problem: dict, writer_dir: Path | None) -> None:
    """A plain torch loop as people write it; with writer_dir, the usual SummaryWriter logging."""
    torch.manual_seed(0)
    random.seed(0)
    run = plan_one(problem)
    from trainer.kinds import data

    dataset = data.load(run.config.data, Path(run.data_folder))
    x, y = dataset.train.x, dataset.train.y
    if problem is NOTEBOOK:
        model = torch.nn.Sequential(torch.nn.Linear(4, 1, bias=False))
        criterion = torch.nn.L1Loss(reduction="sum")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        model = torch.nn.Sequential(
            torch.nn.Linear(16, 32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, 32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, 1),
        )
        criterion = torch.nn.MSELoss()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    writer = None
    if writer_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(writer_dir))
    batch = run.batch_size
    for step in range(run.steps):
        if batch == 1:
            i = random.choice(range(x.shape[0]))
            xb, yb = x[i : i + 1], y[i : i + 1]
        else:
            idx = torch.randint(0, x.shape[0], (batch,))
            xb, yb = x[idx], y[idx]
        loss = criterion(model(xb).view(-1), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if writer is not None:
            writer.add_scalar("loss", loss.item(), step)
            if problem is NOTEBOOK:
                for j, w in enumerate(model[0].weight.view(-1).tolist()):
                    writer.add_scalar(f"weight/{j}", w, step)
                if step % 10 == 0:  # as often as the trainer's histograms
                    writer.add_histogram("grad", model[0].weight.grad, step)
            else:
                for name, p in model.named_parameters():
                    writer.add_scalar(f"norm/{name}", p.detach().norm().item(), step)
                if step % 10 == 0:
                    for name, p in model.named_parameters():
                        writer.add_histogram(f"grad/{name}", p.grad, step)
    if writer is not None:
        writer.add_hparams(
            {"lr": optimizer.param_groups[0]["lr"], "batch_size": batch}, {"final_loss": loss.item()}
        )
        writer.close()


def plan_one(problem: dict):
    folder = Path(tempfile.mkdtemp(prefix="bench-spec-"))
    path = folder / f"{problem['name']}.yaml"
    path.write_text(yaml.safe_dump(problem))
    (run,) = plan([str(path)])
    return run


def trainer_run(run, logdir: Path | None) -> None:
    if logdir is None:
        train(run, NullSink())
        return
    shutil.rmtree(logdir, ignore_errors=True)
    sink = TensorBoardSink(logdir, run.config.log, {"lr": 0.1}, "bench")
    try:
        train(run, sink)
    finally:
        sink.close()


def measure_logging(problem: dict, repeats: int, scratch: Path) -> dict[str, float]:
    run = plan_one(problem)
    times = interleaved(
        {
            "hand, no logging": lambda: hand_loop(problem, None),
            "trainer, logging off": lambda: trainer_run(run, None),
            "trainer, full logging": lambda: trainer_run(run, scratch / "trainer-run"),
        },
        repeats,
    )
    # Measured apart: its heavy allocations slowed whatever ran right after it.
    heavy = interleaved(
        {"hand, SummaryWriter logging": lambda: hand_loop(problem, Path(tempfile.mkdtemp(dir=scratch)))},
        max(3, repeats // 3),
    )
    medians = {k: statistics.median(v) for k, v in {**times, **heavy}.items()}
    order = [
        "hand, no logging",
        "hand, SummaryWriter logging",
        "trainer, logging off",
        "trainer, full logging",
    ]
    return {
        "seconds": {k: medians[k] for k in order},
        "full / off, paired": paired_ratio(times, "trainer, full logging", "trainer, logging off"),
        "full / hand, paired": paired_ratio(times, "trainer, full logging", "hand, no logging"),
    }


def measure_digits(repeats: int, scratch: Path) -> dict[str, float]:
    """The digits experiment's best-configured run (a user's CNN, data, metric and hook): logging off
    against full logging, which includes the confusion-matrix hook at every evaluation."""
    runs = plan(
        [str(ROOT / "experiments/digits.yaml")], ["optimizer.lr=0.003", "model.channels=16", "train.seed=0"]
    )
    (run,) = runs
    times = interleaved(
        {
            "trainer, logging off": lambda: trainer_run(run, None),
            "trainer, full logging": lambda: trainer_run(run, scratch / "digits-run"),
        },
        repeats,
    )
    return {
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "steps": run.steps,
        "full / off, paired": paired_ratio(times, "trainer, full logging", "trainer, logging off"),
    }


# --- checkpoints --------------------------------------------------------------------------------

# A run long enough for the default (log.checkpoint_every: auto) to take checkpoints: the MLP
# problem for 40,000 steps (about half a minute on one core).
LONG_STEPS = 40_000


def with_checkpoints(run, every):
    """The run with log.checkpoint_every set to `every`."""
    import dataclasses

    log = dataclasses.replace(run.config.log, checkpoint_every=every)
    return dataclasses.replace(run, config=dataclasses.replace(run.config, log=log))


def checkpointed_run(run, folder: Path, resume=None) -> list[float]:
    """Train the run with full logging and its checkpoints written (atomically, made durable) into
    `folder`, as a sweep's worker does; the seconds each checkpoint took."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    taken: list[float] = []

    def save(data: bytes) -> None:
        began = time.perf_counter()
        rundir.write_atomic(folder / rundir.RESUME, data, durable=True)
        taken.append(time.perf_counter() - began)

    sink = TensorBoardSink(folder, run.config.log, {"lr": 0.1}, "bench")
    try:
        train(run, sink, checkpoints=Checkpoints(run.config.log.checkpoint_every, save, {}), resume=resume)
    finally:
        sink.close()
    return taken


def measure_checkpoints(repeats: int, scratch: Path) -> dict[str, object]:
    """What checkpoints cost: the default setting against none, on the notebook and digits runs (too
    short for a checkpoint by wall time) and on a long run (which takes them); what one costs; and
    how much of a killed long run a resume saves."""
    digits = plan(
        [str(ROOT / "experiments/digits.yaml")], ["optimizer.lr=0.003", "model.channels=16", "train.seed=0"]
    )[0]
    results: dict[str, object] = {}
    for name, run, rounds in (
        ("notebook", plan_one(NOTEBOOK), repeats),
        ("digits", digits, max(5, repeats // 3)),
        ("long MLP", plan_one({**MLP, "train": {**MLP["train"], "steps": LONG_STEPS}}), 5),
    ):
        counts: list[int] = []
        every = run.steps // 10

        spent: list[float] = []  # of the default's runs: the share of their time in checkpoints

        def default(run=run, counts=counts, spent=spent) -> None:
            began = time.perf_counter()
            taken = checkpointed_run(with_checkpoints(run, "auto"), scratch / "ckpt")
            counts.append(len(taken))
            spent.append(sum(taken) / (time.perf_counter() - began))

        costs: list[float] = []
        times = interleaved(
            {
                "none": lambda run=run: checkpointed_run(with_checkpoints(run, 0), scratch / "ckpt"),
                "default (auto)": default,
                f"every {every} steps": lambda run=run, every=every, costs=costs: costs.extend(
                    checkpointed_run(with_checkpoints(run, every), scratch / "ckpt")
                ),
            },
            rounds,
        )
        checkpointed_run(with_checkpoints(run, every), scratch / "size")
        results[name] = {
            "steps": run.steps,
            "rounds": rounds,
            "seconds": {k: statistics.median(v) for k, v in times.items()},
            "default / none, paired": paired_ratio(times, "default (auto)", "none"),
            "checkpoints taken by default": statistics.median(counts),
            "share of the default's time in checkpoints": statistics.median(spent),
            "one checkpoint (ms, median)": 1000 * statistics.median(costs),
            "checkpoint size (bytes)": (scratch / "size" / rundir.RESUME).stat().st_size,
        }
    # A long run killed at 55% of its steps (as 7,800 of 14,100): the rerun from its last checkpoint
    # against a rerun from step 0.
    long = with_checkpoints(
        plan_one({**MLP, "train": {**MLP["train"], "steps": LONG_STEPS}}), LONG_STEPS * 55 // 100
    )
    checkpointed_run(long, scratch / "killed")
    state = (scratch / "killed" / rundir.RESUME).read_bytes()
    again = interleaved(
        {
            "from step 0": lambda: checkpointed_run(with_checkpoints(long, 0), scratch / "again"),
            "from its checkpoint": lambda: checkpointed_run(
                with_checkpoints(long, 0), scratch / "again", resumed(read(state))
            ),
        },
        3,
    )
    medians = {k: statistics.median(v) for k, v in again.items()}
    results["resume"] = {
        "steps": LONG_STEPS,
        "killed at": LONG_STEPS * 55 // 100,
        "seconds": medians,
        "saved": 1 - medians["from its checkpoint"] / medians["from step 0"],
    }
    return results


def _checkpoint_lines(results: dict) -> list[str]:
    found = results["checkpoints"]
    lines = ["", "checkpoints (log.checkpoint_every), full logging, written and made durable as in a sweep"]
    for name in ("notebook", "digits", "long MLP"):
        c = found[name]
        t = c["seconds"]
        lines.append(f"  {name}: {c['steps']} steps, median of {c['rounds']} runs")
        for label, seconds in t.items():
            lines.append(f"    {label:28} {seconds:9.3f} s")
        share = c["share of the default's time in checkpoints"]
        lines.append(
            f"    default: {c['checkpoints taken by default']:.0f} checkpoints, {100 * share:.2f}% of the run's "
            f"time in them (target <= 3%: {_ok(share <= 0.03)}); one checkpoint "
            f"{c['one checkpoint (ms, median)']:.1f} ms, {c['checkpoint size (bytes)'] / 1000:.0f} KB; "
            f"default / none = {c['default / none, paired']:.3f} (paired wall times, within this machine's noise)"
        )
    r = found["resume"]
    lines.append(
        f"  a {r['steps']}-step run killed at step {r['killed at']}: rerun from step 0 "
        f"{r['seconds']['from step 0']:.1f} s, from its checkpoint {r['seconds']['from its checkpoint']:.1f} s "
        f"({100 * r['saved']:.0f}% of the run's time saved)"
    )
    return lines


# --- sizes ------------------------------------------------------------------------------------


def log_sizes(scratch: Path) -> dict[str, float]:
    """Bytes on disk for a 1000-step notebook run with full logging, and per histogram event."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    run = plan_one(NOTEBOOK)
    folder = scratch / "sizes"
    trainer_run(run, folder)
    event_file = next(folder.glob("events.out.tfevents.*"))
    histogram_bytes = []
    for raw in RawEventFileLoader(str(event_file)).Load():
        event = event_pb2.Event.FromString(raw)
        if event.HasField("summary") and any(v.HasField("histo") for v in event.summary.value):
            histogram_bytes.append(len(raw) + 16)  # plus the record's framing
    disk = sum(p.stat().st_blocks * 512 for p in folder.iterdir())
    return {
        "run folder on disk (bytes)": disk,
        "event file (bytes)": event_file.stat().st_size,
        "histogram event (bytes, median)": statistics.median(histogram_bytes),
        "histograms per event": 2,
    }


# --- sweeps -----------------------------------------------------------------------------------


class TreeMemory:
    """Samples the resident memory of a process and its children until stopped."""

    def __init__(self, pid: int):
        self.pid = pid
        self.parent: list[int] = []
        self.total: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        found = []
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
        return found

    def _sample(self) -> None:
        while not self.done.wait(0.2):
            pids, queue = [], [self.pid]
            while queue:
                pid = queue.pop()
                pids.append(pid)
                queue += self._children(pid)
            self.parent.append(self._rss(self.pid))
            self.total.append(sum(self._rss(p) for p in pids))

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def timed_sweep(
    specs: list[str], logdir: Path, workers: int, extra: list[str] = ()
) -> tuple[float, TreeMemory]:
    shutil.rmtree(logdir, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainer",
            "sweep",
            *specs,
            "--logdir",
            str(logdir),
            "--workers",
            str(workers),
            "--quiet",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    memory = TreeMemory(proc.pid)
    _, err = proc.communicate()
    elapsed = time.perf_counter() - start
    memory.stop()
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}): {err.decode()[-2000:]}")
    return elapsed, memory


def run_phase(logdir: Path) -> float:
    """Seconds from the first run's start to the last run's end, from the runs' records."""
    import datetime

    records = index.records(logdir)
    starts = [datetime.datetime.fromisoformat(r["started"]).timestamp() for r in records]
    ends = [datetime.datetime.fromisoformat(r["ended"]).timestamp() for r in records]
    return max(ends) - min(starts)


def worker_startup() -> float:
    """What a fresh worker pays before its first run: importing torch and making an optimizer."""
    code = "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)"
    return timed(lambda: subprocess.run([sys.executable, "-c", code], check=True))


def measure_scaling(repeats: int, scratch: Path) -> dict[str, float]:
    specs = [str(p) for p in sorted((ROOT / "experiments").glob("*.yaml"))]
    times: dict[int, list[float]] = {1: [], 2: []}
    phases: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for workers in (1, 2):
            logdir = scratch / f"compare-{workers}"
            times[workers].append(timed_sweep(specs, logdir, workers)[0])
            phases[workers].append(run_phase(logdir))
    result = {
        f"comparison set, {w} worker{'s' if w > 1 else ''} (s)": statistics.median(t)
        for w, t in times.items()
    }
    result.update(
        {f"runs phase, {w} worker{'s' if w > 1 else ''} (s)": statistics.median(t) for w, t in phases.items()}
    )
    result["worker start-up (s)"] = statistics.median(worker_startup() for _ in range(3))
    return result


def measure_ray(repeats: int, scratch: Path) -> dict[str, float]:
    """The comparison set on a Ray instance started by the sweep with 2 CPUs against the local pool
    with 2 workers, alternated; the per-run overhead is the extra runs phase spread over the runs."""
    specs = [str(p) for p in sorted((ROOT / "experiments").glob("*.yaml"))]
    runs = len(plan(specs))
    times: dict[str, list[float]] = {"local": [], "ray": []}
    phases: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(repeats):
        for executor in ("local", "ray"):
            logdir = scratch / f"executor-{executor}"
            times[executor].append(timed_sweep(specs, logdir, 2, ["--executor", executor])[0])
            phases[executor].append(run_phase(logdir))
    local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
    local_phase, ray_phase = statistics.median(phases["local"]), statistics.median(phases["ray"])
    return {
        "runs": runs,
        "comparison set, local pool, 2 workers (s)": local,
        "comparison set, Ray, 2 CPUs (s)": ray,
        "runs phase, local pool (s)": local_phase,
        "runs phase, Ray (s)": ray_phase,
        "Ray start-up and shutdown (s)": (ray - ray_phase) - (local - local_phase),
        "per-run overhead of Ray (ms)": 1000 * 2 * (ray_phase - local_phase) / runs,
        "Ray / local": ray / local,
    }


def seeds_spec(scratch: Path, name: str, runs: int) -> Path:
    """A spec of `runs` notebook runs of 200 steps that differ only in their seeds."""
    spec = scratch / f"{name}.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                **NOTEBOOK,
                "name": name,
                "train": {**NOTEBOOK["train"], "steps": 200},
                "sweep": {"train.seed": list(range(runs))},
            }
        )
    )
    return spec


def measure_large_sweep(scratch: Path, runs: int) -> dict[str, float]:
    """A sweep of `runs` notebook runs of 200 steps: time, memory, and the end-of-sweep work."""
    spec = seeds_spec(scratch, "many", runs)
    quarter = seeds_spec(scratch, "quarter", runs // 4)
    small_time, _ = timed_sweep([str(quarter)], scratch / "quarter-logs", 2)
    single, _ = timed_sweep([str(spec)], scratch / "many-logs", 1)
    elapsed, memory = timed_sweep([str(spec)], scratch / "many-logs", 2)
    logdir = scratch / "many-logs"
    start = time.perf_counter()
    records = index.records(logdir)
    index.rebuild(logdir, records)
    index_time = time.perf_counter() - start
    samples = memory.parent
    early = statistics.median(samples[len(samples) // 10 : len(samples) // 5 + 1]) if len(samples) > 10 else 0
    late = statistics.median(samples[-max(1, len(samples) // 10) :]) if samples else 0
    return {
        f"{runs // 4}-run sweep (s)": small_time,
        f"{runs}-run sweep, 1 worker (s)": single,
        f"{runs}-run sweep (s)": elapsed,
        f"time per run, {runs // 4} runs (ms)": 1000 * small_time / (runs // 4),
        f"time per run, {runs} runs (ms)": 1000 * elapsed / runs,
        "sweep process memory early (MB)": early / 2**20,
        "sweep process memory late (MB)": late / 2**20,
        "peak memory, sweep and workers (MB)": max(memory.total or [0]) / 2**20,
        f"index of {runs} runs (s)": index_time,
    }


def measure_report(scratch: Path, runs: int) -> dict[str, float]:
    """`report` of `runs` notebook runs of 200 steps (one group over their seeds), and `index`,
    which rebuilds the seed band of the group."""
    from trainer.reporting.writeup import write

    spec = seeds_spec(scratch, "report", runs)
    logdir = scratch / "report-logs"
    timed_sweep([str(spec)], logdir, 2)
    start = time.perf_counter()
    write(logdir, scratch / "report-out")
    report_time = time.perf_counter() - start
    start = time.perf_counter()
    index.rebuild(logdir)
    return {
        f"report of {runs} runs (s)": report_time,
        f"index of {runs} runs, with bands (s)": time.perf_counter() - start,
    }


def _report_lines(results: dict) -> list[str]:
    runs = results["report_runs"]
    took = results["report"][f"report of {runs} runs (s)"]
    index_time = results["report"][f"index of {runs} runs, with bands (s)"]
    return [
        "",
        f"report of {runs} runs (one group of {runs} seeds, 200 steps each): {took:.2f} s "
        f"(target < 5 s: {_ok(took < 5)}); index with the seed band: {index_time:.2f} s",
    ]


def grid_spec(scratch: Path, seeds: int) -> Path:
    """The notebook problem as a grid: 5 learning rates x 2 weight decays x 4 batch sizes x seeds."""
    spec = scratch / f"grid-{seeds}.yaml"
    grid = {
        "optimizer.lr": [0.01, 0.02, 0.05, 0.1, 0.2],
        "optimizer.weight_decay": [0.0, 0.001],
        "train.batch_size": [1, 2, 5, 10],
        "train.seed": list(range(seeds)),
    }
    spec.write_text(yaml.safe_dump({**NOTEBOOK, "name": f"grid{seeds}", "sweep": grid}))
    return spec


def folder_bytes(logdir: Path) -> float:
    """Mean bytes on disk of a run folder."""
    sizes = [
        sum(f.stat().st_blocks * 512 for f in run.iterdir()) for run in logdir.glob("*/*") if run.is_dir()
    ]
    return statistics.mean(sizes)


def measure_batched(scratch: Path, repeats: int, large: bool) -> dict[str, float]:
    """A 1,000-run grid of the notebook problem (1,000 steps each, full logging) as whole sweeps,
    engine loop against engine batched; and 10,000 runs batched, with the peak memory."""
    spec = str(grid_spec(scratch, 25))
    times: dict[str, list[float]] = {"loop": [], "batched": []}
    for _ in range(repeats):
        for engine in times:
            logdir = scratch / f"grid-{engine}"
            times[engine].append(timed_sweep([spec], logdir, 2, ["--set", f"train.engine={engine}"])[0])
    result = {f"1000 runs, engine {k} (s)": statistics.median(v) for k, v in times.items()}
    result["run folder, engine loop (KB)"] = folder_bytes(scratch / "grid-loop") / 1000
    result["run folder, engine batched (KB)"] = folder_bytes(scratch / "grid-batched") / 1000
    if large:
        logdir = scratch / "grid-large"
        elapsed, memory = timed_sweep(
            [str(grid_spec(scratch, 250))], logdir, 2, ["--set", "train.engine=batched"]
        )
        result["10000 runs, engine batched (s)"] = elapsed
        result["10000 runs, peak memory (MB)"] = max(memory.total or [0]) / 2**20
    return result


def _batched_lines(results: dict) -> list[str]:
    figures = results["batched"]
    loop, batched = figures["1000 runs, engine loop (s)"], figures["1000 runs, engine batched (s)"]
    lines = [
        "",
        f"notebook grid, 1000 runs x 1000 steps, full logging, 2 workers, whole sweeps "
        f"(median of {results['batched_repeats']}):",
        f"  {'engine':10} {'seconds':>9} {'ms per run':>11} {'run folder KB':>14}",
    ]
    for engine, seconds in (("loop", loop), ("batched", batched)):
        size = figures[f"run folder, engine {engine} (KB)"]
        lines.append(f"  {engine:10} {seconds:9.2f} {seconds:11.2f} {size:14.0f}")
    lines.append(
        f"  batched: {loop / batched:.1f}x faster (target < 6 s: {_ok(batched < 6)}); run folder "
        f"{figures['run folder, engine batched (KB)']:.0f} KB (target < 200 KB: "
        f"{_ok(figures['run folder, engine batched (KB)'] < 200)})"
    )
    if "10000 runs, engine batched (s)" in figures:
        took, peak = figures["10000 runs, engine batched (s)"], figures["10000 runs, peak memory (MB)"]
        lines.append(
            f"  10000 runs batched: {took:.1f} s (target < 40 s: {_ok(took < 40)}), peak memory "
            f"{peak:.0f} MB (target < 2048 MB: {_ok(peak < 2048)})"
        )
    return lines


# --- searches ---------------------------------------------------------------------------------

# The notebook's problem as its search examples write it: mean reduction, an evaluation every 50
# steps (what a pruner compares), 1000 steps.
SEARCH_PROBLEM = {
    "name": "bench-search",
    "data": {"kind": "seed_toy"},
    "model": {"kind": "linear", "bias": False},
    "loss": {"kind": "l1", "reduction": "mean"},
    "optimizer": {"kind": "sgd", "lr": 0.1},
    "train": {"steps": 1000, "batch_size": 1, "seed": 0, "device": "cpu"},
    "eval": {"every": 50},
}
SEARCH_METRIC = "final/train/loss"
SEARCH_TRIALS = 200
DRIVER_TRIALS = 100
# Pruners besides the measured ASHA, (kind, min_steps, reduction_factor): how late ASHA's first rung
# must lie, and Hyperband, which runs halvings from several first rungs at once.
PRUNE_SETTINGS = (
    ("asha", 250, 2),
    ("asha", 300, 3),
    ("asha", 400, 2),
    ("hyperband", 100, 2),
)


def search_spec(scratch: Path, name: str, trials: int, prune: dict, sweep: dict) -> Path:
    """The search problem as a random search (seed 0) of `trials` trials over `sweep`, minimizing
    the final training loss, pruned by `prune`."""
    spec = scratch / f"{name}.yaml"
    search = {
        "method": "random",
        "trials": trials,
        "seed": 0,
        "metric": SEARCH_METRIC,
        "direction": "minimize",
        "prune": prune,
    }
    spec.write_text(yaml.safe_dump({**SEARCH_PROBLEM, "name": name, "search": search, "sweep": sweep}))
    return spec


def search_outcome(logdir: Path) -> dict[str, object]:
    """What a search's runs did, from their records: the steps they trained and planned, and its
    best trial (the lowest mean over its seeds of the metric, among trials whose runs all
    completed) with the spread (standard deviation) of its seeds."""
    records = index.records(logdir)
    trials: dict[int, list[dict]] = {}
    for record in records:
        trials.setdefault(record["trial"]["number"], []).append(record)
    complete = {
        number: [r["metrics"][SEARCH_METRIC] for r in runs]
        for number, runs in trials.items()
        if all(r["status"] == "complete" for r in runs)
    }
    best = min(complete, key=lambda n: statistics.mean(complete[n]))
    values = complete[best]
    return {
        "runs": len(records),
        "runs complete": sum(r["status"] == "complete" for r in records),
        "runs pruned": sum(r["status"] == "pruned" for r in records),
        "trials complete": len(complete),
        "steps trained": sum(int(r["steps_done"]) for r in records),
        "steps planned": sum(int(r["steps"]) for r in records),
        "best trial": best,
        "best params": trials[best][0]["trial"]["params"],
        "best mean": statistics.mean(values),
        "best spread": statistics.stdev(values) if len(values) > 1 else 0.0,
        "runs phase (s)": run_phase(logdir),
    }


def trial_steps(logdir: Path, number: int) -> list[int]:
    """The steps each run of trial `number` trained, by seed."""
    runs = [r for r in index.records(logdir) if r["trial"]["number"] == number]
    return [int(r["steps_done"]) for r in sorted(runs, key=lambda r: r["seed"])]


def fresh_sweeps(
    spec: Path, scratch: Path, name: str, workers: int, folders: list[Path]
) -> Callable[[], object]:
    """A function that sweeps `spec` into a new log folder each call, kept in `folders` to be read
    after the timing."""

    def sweep() -> None:
        logdir = scratch / f"{name}-{len(folders)}"
        folders.append(logdir)
        timed_sweep([str(spec)], logdir, workers)

    return sweep


def measure_search(repeats: int, scratch: Path) -> dict[str, object]:
    """Pruning: a random search of 200 trials x 2 seeds over the learning rate, weight decay and
    batch size, with ASHA and without pruning (the same seed, so the same trials): the steps each
    trains, its wall time and the best trial it finds. The driver: a 100-trial random search over
    the learning rate against a plain grid of the very rates it drew. Whole sweeps with a worker a
    core, each into a fresh log folder."""
    workers = os.cpu_count() or 1
    space = {
        "optimizer.lr": {"loguniform": [0.001, 0.3]},
        "optimizer.weight_decay": {"uniform": [0.0, 0.1]},
        "train.batch_size": [1, 5, "full"],
        "train.seed": [0, 1],
    }
    prunes = {
        "asha": {"kind": "asha", "min_steps": 100, "reduction_factor": 3},
        "hyperband": {"kind": "hyperband", "min_steps": 100, "reduction_factor": 3},
        "none": {"kind": "none"},
    }
    folders: dict[str, list[Path]] = {k: [] for k in prunes}
    times = interleaved(
        {
            k: fresh_sweeps(
                search_spec(scratch, f"search-{k}", SEARCH_TRIALS, prune, space),
                scratch,
                f"search-{k}",
                workers,
                folders[k],
            )
            for k, prune in prunes.items()
        },
        repeats,
    )
    pruning: dict[str, object] = {"trials": SEARCH_TRIALS, "workers": workers, "repeats": repeats}
    for k in ("none", "asha", "hyperband"):
        outcomes = [search_outcome(f) for f in folders[k][1:]]  # the timed sweeps', not the warm-up's
        middle = sorted(outcomes, key=lambda o: o["best mean"])[len(outcomes) // 2]
        pruning[k] = {
            **middle,  # the sweep whose best trial is the median of the sweeps' best
            "seconds": statistics.median(times[k]),
            "seconds, each sweep": times[k],
            "runs phase (s)": statistics.median(o["runs phase (s)"] for o in outcomes),
            "steps trained": statistics.median(o["steps trained"] for o in outcomes),
            "runs pruned": statistics.median(o["runs pruned"] for o in outcomes),
            "each sweep": [
                {
                    key: o[key]
                    for key in ("steps trained", "runs pruned", "best trial", "best mean", "best spread")
                }
                for o in outcomes
            ],
        }
    # Asynchronous halving depends on the order the workers' trials report in: where the unpruned
    # study's best trial stopped in each ASHA sweep.
    pruning["asha"]["unpruned best's steps, each sweep"] = [
        trial_steps(f, pruning["none"]["best trial"]) for f in folders["asha"][1:]
    ]
    for f in (*folders["none"], *folders["asha"]):
        shutil.rmtree(f, ignore_errors=True)
    for k in ("asha", "hyperband"):
        pruning[f"{k} / none, steps"] = pruning[k]["steps trained"] / pruning["none"]["steps trained"]
        pruning[f"{k} / none, seconds, paired"] = paired_ratio(times, k, "none")
    # Where the first rung lies decides what ASHA keeps; Hyperband hedges over several: one sweep of
    # each setting, the same trials.
    pruning["rungs"] = []
    for kind, min_steps, factor in PRUNE_SETTINGS:
        name = f"rungs-{kind}-{min_steps}-{factor}"
        prune = {"kind": kind, "min_steps": min_steps, "reduction_factor": factor}
        spec = search_spec(scratch, name, SEARCH_TRIALS, prune, space)
        logdir = scratch / name
        timed_sweep([str(spec)], logdir, workers)
        outcome = search_outcome(logdir)
        pruning["rungs"].append({**prune, **outcome})
        shutil.rmtree(logdir, ignore_errors=True)

    # The driver: the rates a search draws, then a grid of exactly those rates.
    lr_only = {"optimizer.lr": {"loguniform": [0.001, 0.3]}}
    searched = search_spec(scratch, "driver-search", DRIVER_TRIALS, {"kind": "none"}, lr_only)
    drawn = scratch / "driver-drawn"
    timed_sweep([str(searched)], drawn, workers)
    records = sorted(index.records(drawn), key=lambda r: r["trial"]["number"])
    rates = [r["trial"]["params"]["optimizer.lr"] for r in records]
    grid = scratch / "driver-grid.yaml"
    grid.write_text(
        yaml.safe_dump({**SEARCH_PROBLEM, "name": "driver-grid", "sweep": {"optimizer.lr": rates}})
    )
    gridded: list[Path] = []
    plain: list[Path] = []
    times = interleaved(
        {
            "search": fresh_sweeps(searched, scratch, "driver-search", workers, plain),
            "grid": fresh_sweeps(grid, scratch, "driver-grid", workers, gridded),
        },
        repeats,
    )
    grid_rates = sorted(r["hparams"]["optimizer.lr"] for r in index.records(gridded[-1]))
    for f in (drawn, *plain, *gridded):
        shutil.rmtree(f, ignore_errors=True)
    search_s, grid_s = statistics.median(times["search"]), statistics.median(times["grid"])
    driver = {
        "trials": DRIVER_TRIALS,
        "workers": workers,
        "repeats": repeats,
        "grid holds the drawn rates": grid_rates == sorted(rates),
        "search (s)": search_s,
        "grid (s)": grid_s,
        "seconds, each sweep": times,
        "search / grid, paired": paired_ratio(times, "search", "grid"),
        "search / grid": search_s / grid_s,
        "overhead per trial (ms)": 1000 * (search_s - grid_s) / DRIVER_TRIALS,
    }
    return {"pruning": pruning, "driver": driver}


def _search_lines(results: dict) -> list[str]:
    pruning, driver = results["search"]["pruning"], results["search"]["driver"]
    asha, none = pruning["asha"], pruning["none"]
    pruners = (("asha", asha), ("hyperband", pruning["hyperband"]), ("none", none))
    lines = [
        "",
        f"random search, {pruning['trials']} trials x 2 seeds ({none['runs']} runs of the notebook's problem, "
        f"1000 steps, evaluated every 50), {pruning['workers']} workers, median of {pruning['repeats']} sweeps",
        f"  {'prune':9} {'seconds':>8} {'runs phase s':>13} {'steps trained':>14} {'of planned':>11} "
        f"{'runs pruned':>12} {'best trial':>11} {SEARCH_METRIC + ' (± seeds std)':>34}",
    ]
    for name, s in pruners:
        lines.append(
            f"  {name:9} {s['seconds']:8.2f} {s['runs phase (s)']:13.2f} {s['steps trained']:14,.0f} "
            f"{s['steps trained'] / s['steps planned']:11.1%} {s['runs pruned']:12.0f} {s['best trial']:11} "
            f"{s['best mean']:>21.5f} ± {s['best spread']:.5f}"
        )
    lines.append(
        "  (steps and runs pruned: medians over the sweeps; best trial: the sweep with the median best)"
    )
    for name in ("asha", "hyperband"):
        share = pruning[f"{name} / none, steps"]
        lines.append(
            f"  {name} trained {share:.1%} of the unpruned study's steps (target <= 50%: {_ok(share <= 0.5)})"
        )
    for name, s in pruners:
        each = s["each sweep"]
        lines.append(
            f"  {name}, each sweep: steps trained "
            + ", ".join(f"{e['steps trained']:,}" for e in each)
            + "; best trial "
            + ", ".join(f"{e['best trial']} ({e['best mean']:.5f})" for e in each)
        )
    spread = none["best spread"]
    for name, s in pruners[:2]:
        gap = abs(s["best mean"] - none["best mean"])
        lines.append(
            f"  {name}'s best trial {s['best mean']:.5f} against the unpruned best {none['best mean']:.5f} ± "
            f"{spread:.5f}: a gap of {gap / spread:.2f} times that seed spread (target <= 1: {_ok(gap <= spread)})"
        )
    stopped = asha["unpruned best's steps, each sweep"]
    lines.append(
        f"  the unpruned best trial ({none['best trial']}) under ASHA trained "
        + ", ".join("/".join(str(n) for n in steps) for steps in stopped)
        + " steps (per seed, each sweep)"
    )
    for name in ("asha", "hyperband"):
        lines.append(
            f"  wall time {name} / none = {pruning[f'{name} / none, seconds, paired']:.3f} "
            f"(median of the rounds' ratios)"
        )
    for r in pruning.get("rungs", []):
        gap = abs(r["best mean"] - none["best mean"])
        lines.append(
            f"  {r['kind']} min_steps {r['min_steps']}, reduction_factor {r['reduction_factor']} (one sweep): "
            f"{r['steps trained'] / r['steps planned']:.1%} of the steps, best trial {r['best trial']} "
            f"{r['best mean']:.5f} ({gap / spread:.2f} times the unpruned best's seed spread away)"
        )
    paired = driver["search / grid, paired"]
    lines += [
        "",
        f"search driver: random search of {driver['trials']} trials over the learning rate against a grid of the "
        f"same {driver['trials']} rates (grid holds them: {driver['grid holds the drawn rates']}), "
        f"{driver['workers']} workers, median of {driver['repeats']} sweeps",
        f"  search {driver['search (s)']:.2f} s, grid {driver['grid (s)']:.2f} s, "
        f"{driver['overhead per trial (ms)']:.1f} ms a trial",
        f"  search / grid = {paired:.3f} (median of the rounds' ratios; {driver['search / grid']:.3f} from the "
        f"medians)   (target <= 1.1: {_ok(paired <= 1.1)})",
    ]
    return lines


# --- the table --------------------------------------------------------------------------------


def report(results: dict) -> list[str]:
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, device cpu"
    ]
    for problem in ("notebook", "mlp"):
        if problem not in results:
            continue
        t = results[problem]["seconds"]
        ref = t["hand, no logging"]
        lines.append("")
        lines.append(f"{problem}: 1000 steps, median of {results['repeats']} runs")
        lines.append(f"  {'':32} {'seconds':>9} {'x hand loop':>12}")
        for name, seconds in t.items():
            lines.append(f"  {name:32} {seconds:9.3f} {seconds / ref:12.2f}")
        for label, key, of_medians, target in (
            (
                "full logging / logging off",
                "full / off, paired",
                t["trainer, full logging"] / t["trainer, logging off"],
                1.15,
            ),
            ("full logging / hand, no logging", "full / hand, paired", t["trainer, full logging"] / ref, 1.0),
        ):
            paired = results[problem][key]
            lines.append(
                f"  {label} = {paired:.3f} (median of the rounds' ratios; {of_medians:.3f} from the "
                f"medians)   (target <= {target}: {_ok(paired <= target)})"
            )
    if "digits" in results:
        lines += _digits_lines(results)
    if "scaling" in results:
        lines += _scaling_lines(results)
    if "checkpoints" in results:
        lines += _checkpoint_lines(results)
    if "sizes" in results:
        lines += _size_lines(results)
    if "large" in results:
        lines += _large_lines(results)
    if "report" in results:
        lines += _report_lines(results)
    if "batched" in results:
        lines += _batched_lines(results)
    if "ray" in results:
        lines += _ray_lines(results)
    if "search" in results:
        lines += _search_lines(results)
    return lines


def _ray_lines(results: dict) -> list[str]:
    ray = results["ray"]
    lines = [
        "",
        f"comparison set ({ray['runs']} runs) on Ray against the local pool, median of {results['ray_repeats']} sweeps each",
    ]
    for name, value in ray.items():
        if name.endswith("(s)") or name.endswith("(ms)"):
            lines.append(f"  {name:44} {value:9.2f}")
    lines.append(
        f"  Ray / local = {ray['Ray / local']:.2f}   (target <= 1.3: {_ok(ray['Ray / local'] <= 1.3)})"
    )
    return lines


def _digits_lines(results: dict) -> list[str]:
    lines = []
    digits = results["digits"]
    t = digits["seconds"]
    lines.append("")
    lines.append(
        f"digits (a user's CNN, data, metric and hook): {digits['steps']} steps, median of "
        f"{results['digits_repeats']} runs"
    )
    for name, seconds in t.items():
        lines.append(f"  {name:32} {seconds:9.3f}")
    paired = digits["full / off, paired"]
    lines.append(
        f"  full logging / logging off = {paired:.3f} (median of the rounds' ratios; "
        f"{t['trainer, full logging'] / t['trainer, logging off']:.3f} from the medians)   "
        f"(target <= 1.15: {_ok(paired <= 1.15)})"
    )
    return lines


def _scaling_lines(results: dict) -> list[str]:
    lines = []
    scaling = results["scaling"]
    one, two = scaling["comparison set, 1 worker (s)"], scaling["comparison set, 2 workers (s)"]
    lines.append("")
    lines.append(
        f"comparison set ({results['comparison_runs']} runs): 1 worker {one:.1f} s, 2 workers {two:.1f} s,"
        f" speed-up {one / two:.2f}   (target >= 1.8: {_ok(one / two >= 1.8)})"
    )
    p1, p2 = scaling["runs phase, 1 worker (s)"], scaling["runs phase, 2 workers (s)"]
    lines.append(
        f"  from the first run's start to the last run's end: {p1:.1f} s and {p2:.1f} s, speed-up "
        f"{p1 / p2:.2f}; each worker first spends {scaling['worker start-up (s)']:.1f} s importing torch"
    )
    return lines


def _size_lines(results: dict) -> list[str]:
    lines = []
    sizes = results["sizes"]
    lines.append(
        f"notebook run, 1000 steps, full logging: {sizes['run folder on disk (bytes)'] / 1000:.0f} KB on "
        f"disk (target < 200 KB: {_ok(sizes['run folder on disk (bytes)'] < 200_000)}); histogram event "
        f"{sizes['histogram event (bytes, median)']:.0f} bytes for two histograms "
        f"(target < 1 KB: {_ok(sizes['histogram event (bytes, median)'] < 1000)})"
    )
    return lines


def _large_lines(results: dict) -> list[str]:
    lines = []
    lines.append("")
    for name, value in results["large"].items():
        lines.append(f"  {name:40} {value:10.2f}")
    big = results["large"]
    peak = big["peak memory, sweep and workers (MB)"]
    lines.append(f"  peak memory target < 2048 MB: {_ok(peak < 2048)}")
    early, late = big["sweep process memory early (MB)"], big["sweep process memory late (MB)"]
    lines.append(
        f"  sweep process memory {early:.1f} MB early, {late:.1f} MB late "
        f"(target: flat, under 10 MB of growth: {_ok(late - early < 10)})"
    )
    runs = results["large_runs"]
    took = big[f"index of {runs} runs (s)"]
    lines.append(f"  HParams index of every run rebuilt in {took:.2f} s (target: seconds: {_ok(took < 10)})")
    few, many = big[f"time per run, {runs // 4} runs (ms)"], big[f"time per run, {runs} runs (ms)"]
    lines.append(
        f"  time per run: {few:.1f} ms over {runs // 4} runs, {many:.1f} ms over {runs} "
        f"(target: proportional to the runs, no growth per run: {_ok(many <= 1.1 * few)})"
    )
    speedup = big[f"{runs}-run sweep, 1 worker (s)"] / big[f"{runs}-run sweep (s)"]
    lines.append(
        f"  {runs}-run sweep, 2 workers against 1: speed-up {speedup:.2f} (no target: its runs are "
        f"short, so the workers' start-up weighs more than in the comparison set)"
    )
    return lines


def _ok(flag: bool) -> str:
    return "met" if flag else "MISSED"


# The parts of `make bench`, each measured on its own with --only.
SECTIONS = (
    "logging",
    "digits",
    "checkpoints",
    "sizes",
    "scaling",
    "large",
    "report",
    "batched",
    "ray",
    "search",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--repeats", type=int, default=31, help="timed runs per measurement (median reported)"
    )
    parser.add_argument(
        "--sweep-repeats", type=int, default=3, help="timed comparison-set sweeps per worker count"
    )
    parser.add_argument("--large-runs", type=int, default=1000, help="runs in the scale test (0 to skip)")
    parser.add_argument("--out", default="bench-out/results.json", help="where to write the figures as JSON")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="measure only this part (repeatable; default: every part)",
    )
    args = parser.parse_args(argv)
    wanted = args.only or list(SECTIONS)
    torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        results: dict = {"repeats": args.repeats}
        if "logging" in wanted:
            results["notebook"] = measure_logging(NOTEBOOK, args.repeats, scratch)
            results["mlp"] = measure_logging(MLP, args.repeats, scratch)
        if "digits" in wanted:
            results["digits_repeats"] = max(5, args.repeats // 3)
            results["digits"] = measure_digits(results["digits_repeats"], scratch)
        if "checkpoints" in wanted:
            results["checkpoints"] = measure_checkpoints(max(5, args.repeats // 3), scratch)
        if "sizes" in wanted:
            results["sizes"] = log_sizes(scratch)
        if "scaling" in wanted:
            results["comparison_runs"] = len(
                plan([str(p) for p in sorted((ROOT / "experiments").glob("*.yaml"))])
            )
            results["scaling"] = measure_scaling(args.sweep_repeats, scratch)
        if "large" in wanted and args.large_runs:
            results["large"] = measure_large_sweep(scratch, args.large_runs)
            results["large_runs"] = args.large_runs
        if "report" in wanted and args.large_runs:
            results["report"] = measure_report(scratch, args.large_runs)
            results["report_runs"] = args.large_runs
        if "batched" in wanted:
            results["batched_repeats"] = args.sweep_repeats
            results["batched"] = measure_batched(scratch, args.sweep_repeats, bool(args.large_runs))
        if "ray" in wanted:
            results["ray_repeats"] = args.sweep_repeats
            results["ray"] = measure_ray(args.sweep_repeats, scratch)
        if "search" in wanted:
            results["search"] = measure_search(args.sweep_repeats, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lines = report(results)
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
