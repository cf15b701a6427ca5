"""The CLI as a Unix tool: help and version, --quiet, status tables, closed pipes, and the commands it
prints, each run as printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainer import __version__
from trainer.cli.commands import EXIT_CLOSED_PIPE, main
from trainer.core import hints
from trainer.run.rundir import RECORD_FORMAT, write_record

REPO = Path(__file__).resolve().parents[1]
BIN = Path(os.path.abspath(sys.executable)).parent

TOY = """\
    name: toy
    data: {kind: seed_toy}
    loss: {kind: mse}
    optimizer: {kind: sgd, lr: 0.05}
    train: {steps: STEPS, batch_size: full}
    eval: {every: 10}
    log: {every: 10, histograms_every: 0}
"""


def toy(folder: Path, steps: int = 30) -> str:
    path = folder / "toy.yaml"
    path.write_text(textwrap.dedent(TOY.replace("STEPS", str(steps))))
    return str(path)


def cli(capsys, *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def shell(command: str, path: str | None = None) -> subprocess.CompletedProcess:
    """A command as a user would paste it into a shell started in the repository, with this PATH."""
    env = {**os.environ, "PATH": os.environ["PATH"] if path is None else path}
    return subprocess.run(
        ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


# --- help and version ---------------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out == f"hparam-trainer {__version__}\n"


def help_of(capsys, command: str) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_each_command_is_described_in_its_own_terms(capsys):
    run = help_of(capsys, "run")
    assert "an experiment spec file" in run and "override a setting in the spec" in run
    assert "spec files" not in run and "every spec" not in run and "--allow-large" not in run
    sweep = help_of(capsys, "sweep")
    assert "experiment spec files" in sweep and "override a setting in every spec" in sweep
    assert "print only errors and the one-line summary" in sweep
    status = help_of(capsys, "status")
    assert "--sort COLUMN" in status and "--filter KEY=VALUE" in status and "stopped_at" in status


# --- quiet and hints ----------------------------------------------------------------------------


def test_quiet_prints_only_the_one_line_summary(tmp_path, capsys):
    code, out, err = cli(capsys, "run", toy(tmp_path), "--logdir", tmp_path / "logs", "--quiet")
    assert code == 0
    assert out == "1 run: 1 complete (1 run now, 0 already done)\n" and err == ""


def test_the_summary_ends_with_a_tensorboard_command_that_works_here(tmp_path, capsys):
    code, out, _ = cli(capsys, "run", toy(tmp_path), "--logdir", tmp_path / "logs")
    assert code == 0
    assert "toy/base  complete" in out
    command = out.splitlines()[-1].removeprefix("Open TensorBoard:  ")
    assert command == hints.tensorboard_command(tmp_path / "logs")
    assert shell(command.replace("--logdir", "--version_tb --logdir")).returncode == 0


@pytest.mark.parametrize(
    "path, trainer, tensorboard",
    [
        pytest.param(
            "/usr/bin:/bin", f"{BIN}/python -m trainer", f"{BIN}/tensorboard", id="environment-not-active"
        ),
        pytest.param(f"{BIN}:/usr/bin:/bin", "python -m trainer", "tensorboard", id="environment-active"),
    ],
)
def test_printed_commands_work_in_the_shell_that_ran_them(monkeypatch, tmp_path, path, trainer, tensorboard):
    monkeypatch.setenv("PATH", path)
    monkeypatch.chdir(tmp_path)  # outside the environment's folder: paths stay absolute
    assert hints.trainer_command() == trainer
    assert hints.tensorboard_command("logs") == f"{tensorboard} --logdir logs"
    ran = shell(
        f"{hints.trainer_command()} --version && {hints.tensorboard_command('logs')} --version_tb", path
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"hparam-trainer {__version__}\n")


def test_a_command_inside_the_current_folder_is_given_relative_to_it(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(BIN.parent.parent)
    assert hints.trainer_command() == f"{BIN.parent.name}/bin/python -m trainer"


# --- status -------------------------------------------------------------------------------------


def fake_run(logdir: Path, name: str, status: str, hparams: dict, swept: dict, **metrics) -> None:
    folder = logdir / "grid" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("name: grid\n")
    (folder / "events.out.tfevents.0.host.1.0").write_bytes(b"")
    steps_done = metrics.pop("steps_done", 100)
    tags = {
        "eval_loss": "final/train/loss",
        "converged": "final/converged",
        "converged_step": "final/converged_step",
        "diverged": "final/diverged",
    }
    metrics = {tags.get(k, k): v for k, v in metrics.items()}
    write_record(
        folder,
        {
            "format": RECORD_FORMAT,
            "experiment": "grid",
            "run": name,
            "status": status,
            "config_digest": "x",
            "swept": swept,
            "hparams": {"experiment": "grid", **hparams},
            "metrics": metrics,
            "steps": 100,
            "steps_done": steps_done,
            "duration_s": 1.0,
        },
    )


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    logdir = tmp_path / "logs"
    for batch, lr, loss in [(128, 0.1, 0.3), (32, 0.1, 0.2), (8, 0.01, 0.1), ("full", 0.01, None)]:
        size = 1000.0 if batch == "full" else float(batch)
        name = f"batch_size={batch},lr={lr}"
        swept = {"train.batch_size": batch, "optimizer.lr": lr}
        hparams = {"train.batch_size": size, "optimizer.lr": lr, "train.seed": 0.0, "data.seed": 0.0}
        if loss is None:
            fake_run(
                logdir,
                name,
                "diverged",
                hparams,
                swept,
                eval_loss=None,
                converged=False,
                diverged=True,
                diverged_step=57,
                steps_done=58,
            )
        else:
            fake_run(
                logdir,
                name,
                "complete",
                hparams,
                swept,
                eval_loss=loss,
                converged=loss < 0.25,
                converged_step=40 if loss < 0.25 else None,
                diverged=False,
            )
    (logdir / "grid" / "unfinished").mkdir()
    return logdir


def runs_listed(out: str) -> list[str]:
    return [
        line.split()[0].removeprefix("grid/") for line in out.splitlines()[1:] if line.startswith("grid/")
    ]


def test_status_sorts_numbers_by_value_and_shows_where_a_run_stopped(grid, capsys):
    code, out, _ = cli(capsys, "status", grid)
    assert code == 0
    assert runs_listed(out) == [
        "batch_size=8,lr=0.01",
        "batch_size=32,lr=0.1",
        "batch_size=128,lr=0.1",
        "batch_size=full,lr=0.01",
        "unfinished",
    ]
    header, *rows = out.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "run",
        "status",
        "final train/loss",
        "distance",
        "converged at",
        "stopped at",
        "time",
    ]
    diverged = next(r for r in rows if "full" in r)
    assert re.split(r"\s{2,}", diverged)[1:6] == ["diverged", "-", "-", "-", "57"]
    assert out.splitlines()[-1] == "5 runs: 3 complete, 1 diverged, 1 unfinished"


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(
            ["--sort", "final_loss"],
            [
                "batch_size=8,lr=0.01",
                "batch_size=32,lr=0.1",
                "batch_size=128,lr=0.1",
                "batch_size=full,lr=0.01",
                "unfinished",
            ],
            id="sort-missing-last",
        ),
        pytest.param(
            ["--sort", "final loss", "--reverse"],
            [
                "batch_size=128,lr=0.1",
                "batch_size=32,lr=0.1",
                "batch_size=8,lr=0.01",
                "batch_size=full,lr=0.01",
                "unfinished",
            ],
            id="sort-by-header-reversed",
        ),
        pytest.param(
            ["--sort", "lr"],
            [
                "batch_size=8,lr=0.01",
                "batch_size=full,lr=0.01",
                "batch_size=32,lr=0.1",
                "batch_size=128,lr=0.1",
                "unfinished",
            ],
            id="sort-by-setting",
        ),
        pytest.param(
            ["--filter", "lr=0.1"], ["batch_size=32,lr=0.1", "batch_size=128,lr=0.1"], id="filter-number"
        ),
        pytest.param(["--filter", "batch_size=full"], ["batch_size=full,lr=0.01"], id="filter-as-swept"),
        pytest.param(
            ["--filter", "train.batch_size=1000"], ["batch_size=full,lr=0.01"], id="filter-as-resolved"
        ),
        pytest.param(["--filter", "status=diverged"], ["batch_size=full,lr=0.01"], id="filter-status"),
        pytest.param(
            ["--filter", "lr=0.01", "--filter", "status=complete"], ["batch_size=8,lr=0.01"], id="filters"
        ),
        pytest.param(
            ["--filter", "train.seed=0", "--sort", "stopped_at"],
            [
                "batch_size=full,lr=0.01",
                "batch_size=8,lr=0.01",
                "batch_size=32,lr=0.1",
                "batch_size=128,lr=0.1",
            ],
            id="filter-whole-key-sort-by-step",
        ),
    ],
)
def test_status_sorts_and_filters(grid, capsys, args, expected):
    code, out, err = cli(capsys, "status", grid, *args)
    assert (code, err) == (0, "")
    assert runs_listed(out) == expected


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(
            ["--sort", "final_los"],
            "--sort final_los: no column, setting or metric of that name (did you mean 'final_loss'?)",
            id="typo",
        ),
        pytest.param(
            ["--filter", "seed=0"],
            "--filter seed: several settings end in 'seed' (data.seed, train.seed); give the whole key",
            id="ambiguous",
        ),
        pytest.param(["--filter", "lr"], "--filter lr: expected KEY=VALUE", id="no-value"),
    ],
)
def test_status_options_that_name_nothing_are_one_error(grid, capsys, args, message):
    code, out, err = cli(capsys, "status", grid, *args)
    assert code == 2 and out == "" and err.startswith(f"error: {message}")


def test_the_last_part_of_a_swept_key_names_it_when_others_share_it(grid, capsys):
    fake_run(
        grid, "seed=1", "complete", {"train.seed": 1.0, "data.seed": 0.0}, {"train.seed": 1}, eval_loss=0.1
    )
    code, out, err = cli(capsys, "status", grid, "--filter", "seed=1")
    assert (code, err) == (0, "") and runs_listed(out) == ["seed=1"]


# --- closed pipes -------------------------------------------------------------------------------


@pytest.fixture
def many_runs(tmp_path: Path) -> tuple[str, Path]:
    """A spec of 3,000 runs, and a log folder of 3,000 unfinished ones: more output than a pipe holds."""
    spec = toy(tmp_path)
    Path(spec).write_text(
        Path(spec).read_text() + "sweep:\n  train.seed: [" + ", ".join(map(str, range(3000))) + "]\n"
    )
    logdir = tmp_path / "logs"
    for seed in range(3000):
        (logdir / "toy" / f"seed={seed}").mkdir(parents=True)
    return spec, logdir


@pytest.mark.parametrize("command", ["status LOGDIR", "sweep SPEC --logdir LOGDIR --dry-run"])
def test_a_closed_pipe_ends_a_command_quietly(many_runs, command):
    spec, logdir = many_runs
    args = command.replace("SPEC", spec).replace("LOGDIR", str(logdir)).split()
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline()  # it has begun writing; now the reader goes away
    process.stdout.close()
    _, err = process.communicate(timeout=300)
    assert (process.returncode, err) == (EXIT_CLOSED_PIPE, "")


# --- a changed spec -----------------------------------------------------------------------------


def test_a_changed_spec_says_how_to_continue_and_both_ways_work(tmp_path, capsys):
    logdir = tmp_path / "logs"
    spec = toy(tmp_path, steps=30)
    assert cli(capsys, "run", spec, "--logdir", logdir, "--quiet")[0] == 0
    toy(tmp_path, steps=40)
    code, out, err = cli(capsys, "run", spec, "--logdir", logdir)
    assert code == 2 and out == ""
    paragraph, replace, keep = err.rstrip("\n").split("\n")
    assert paragraph == (
        f"error: toy: 1 finished run in {logdir}/toy was logged with a different configuration "
        f"(train.steps: 30 -> 40); nothing was run. To continue, either"
    )
    command = f"{hints.trainer_command()} run {spec} --logdir {logdir}"
    assert replace == f"  replace it:  {command} --force"
    assert keep == f"  or keep both:  {command} --set name=toy-2"

    kept = shell(keep.removeprefix("  or keep both:  "))
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert json.loads((logdir / "toy-2/base/record.json").read_text())["steps"] == 40
    assert json.loads((logdir / "toy/base/record.json").read_text())["steps"] == 30
    replaced = shell(replace.removeprefix("  replace it:  "))
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert json.loads((logdir / "toy/base/record.json").read_text())["steps"] == 40


def test_one_paragraph_per_changed_experiment(tmp_path, capsys):
    logdir = tmp_path / "logs"
    specs = []
    for name in ("one", "two"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            textwrap.dedent(TOY.replace("STEPS", "30")).replace("name: toy", f"name: {name}")
            + "sweep:\n  train.seed: [0, 1, 2]\n"
        )
        specs.append(path)
    assert cli(capsys, "sweep", *specs, "--logdir", logdir, "--workers", 1, "--quiet")[0] == 0
    for path in specs:
        path.write_text(path.read_text().replace("lr: 0.05", "lr: 0.02"))
    code, out, err = cli(capsys, "sweep", *specs, "--logdir", logdir, "--workers", 1)
    assert code == 2
    paragraphs = [line for line in err.splitlines() if line.startswith("error: ")]
    assert [p.split(":")[1].strip() for p in paragraphs] == ["one", "two"]
    assert all("3 finished runs in" in p and "(optimizer.lr: 0.05 -> 0.02)" in p for p in paragraphs)
    assert len(err.splitlines()) == 6


def test_a_sweep_leaves_torch_to_its_workers(tmp_path):
    """The sweep's own process plans, claims, indexes and reports without importing torch (seconds
    of start-up, and memory): what the workers send back is plain data."""
    spec = toy(tmp_path)
    Path(spec).write_text(
        Path(spec).read_text() + "sweep:\n  train.seed: [0, 1, 2]\n  optimizer.lr: [0.05, 0.1]\n"
    )
    script = (
        "import sys\nfrom trainer.cli import main\n"
        f"code = main(['sweep', {spec!r}, '--logdir', {str(tmp_path / 'logs')!r}, '--workers', '2', '--quiet'])\n"
        "print('torch' in sys.modules, code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.stdout.splitlines()[-1] == "False 0", done.stdout + done.stderr
    assert "6 runs: 6 complete" in done.stdout


def test_the_command_line_starts_light():
    """Before it knows its command, the command line imports none of numpy, yaml, tqdm or torch: a
    sweep starts its workers' fork server first, so that torch's import there overlaps the rest."""
    script = (
        "import sys\nimport trainer.cli\nprint(sorted({'numpy', 'yaml', 'tqdm', 'torch'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
