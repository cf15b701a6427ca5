"""A teammate's log folder is data: what status, compare, merge, index and report print or export
from it drives no terminal (escape sequences and newlines in names are shown escaped) and runs no
spreadsheet formula (CSV text cells that would begin one get a quote); and `status` of large
records holds one at a time. Each folder here is a real run's, copied and edited on disk."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainer.run.rundir import MAX_RECORD_BYTES, RECORD, write_record

REPO = Path(__file__).resolve().parents[1]
ESC, BEL, RLO = "\x1b", "\x07", "\u202e"
RAW = (ESC, BEL, RLO, "\r")

TOY = """\
    name: toy
    data: {kind: seed_toy}
    loss: {kind: mse}
    optimizer: {kind: sgd, lr: 0.05}
    train: {steps: 20, batch_size: full}
    eval: {every: 10}
    log: {every: 10, histograms_every: 0}
"""


def trainer(cwd: Path, *args: str, **options) -> subprocess.CompletedProcess:
    """The command line, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **options,
    )


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """One run, run by the trainer: the folder every hostile copy is made from."""
    folder = tmp_path_factory.mktemp("real")
    (folder / "toy.yaml").write_text(textwrap.dedent(TOY))
    done = trainer(folder, "run", "toy.yaml", "--logdir", "logs", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "logs" / "toy" / "base"


def copy_run(real: Path, logdir: Path, name: str, experiment: str = "toy", **changes) -> Path:
    """The real run copied under another name, its record saying so, with `changes` to its record
    (hparams and swept are merged into the real ones)."""
    folder = logdir / experiment / name
    shutil.copytree(real, folder)
    record = json.loads((folder / RECORD).read_text())
    record.update(experiment=experiment, run=name)
    for part in ("hparams", "swept"):
        record[part] = {**record.get(part, {}), **changes.pop(part, {})}
    record.update(changes)
    write_record(folder, record)
    return folder


def test_status_table_escapes_control_characters_and_a_newline_forges_no_row(real_run, tmp_path):
    logs = tmp_path / "logs"
    names = [
        f"seed=0{ESC}]0;owned{BEL}",
        "seed=1\ntoy-fake,seed=3  complete  0.0001",
        f"seed=2{RLO}gpj.exe",
        "seed=4\tx",
    ]
    for name in names:
        copy_run(real_run, logs, name)
    done = trainer(tmp_path, "status", "logs")
    # No run of this tool has such a name: each is damaged, its name shown escaped wherever it is.
    assert done.returncode == 1, done.stderr
    assert not any(c in done.stdout for c in RAW) and "\t" not in done.stdout
    assert (
        "  toy/seed=4\\tx: record.json is not a run record: its run 'seed=4\\tx' is not a name this tool writes"
        in done.stdout
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith("toy/")]
    assert [row.split("  ")[0] for row in rows] == [
        "toy/seed=0\\x1b]0;owned\\x07",
        "toy/seed=1\\ntoy-fake,seed=3",
        "toy/seed=2\\u202egpj.exe",
        "toy/seed=4\\tx",
    ]
    assert "4 runs: 4 damaged" in done.stdout
    # The table's columns line up on the escaped names.
    column = done.stdout.splitlines()[0].index("status")
    assert [row[column:].split()[0] for row in rows] == ["damaged"] * 4
    # JSON keeps the names exactly, escaped as JSON escapes them.
    done = trainer(tmp_path, "status", "logs", "--format", "json", "--columns", "run")
    assert done.returncode == 1 and not any(c in done.stdout for c in RAW)
    assert sorted(json.loads(line)["run"] for line in done.stdout.splitlines()) == sorted(names)


def test_status_csv_quotes_what_a_spreadsheet_would_evaluate(real_run, tmp_path):
    logs = tmp_path / "logs"
    copy_run(real_run, logs, "=2+5")  # no name of this tool's: a damaged run, its name a cell still
    copy_run(
        real_run,
        logs,
        "base",
        hparams={
            "model.note": "=cmd|' /C calc'!A0",
            "model.minus": "-x",
            "model.at": "@SUM(A1)",
            "model.plus": "+1",
            "model.color": f"{ESC}[31mred",
            "model.momentum": -0.5,
            "@evil": 1.0,
        },
    )
    done = trainer(tmp_path, "status", "logs", "--format", "csv")
    assert done.returncode == 1, done.stderr
    assert ESC not in done.stdout
    damaged, row = list(csv.DictReader(io.StringIO(done.stdout)))
    assert (damaged["run"], damaged["state"], row["run"]) == ("'=2+5", "damaged", "base")
    assert row["model.note"] == "'=cmd|' /C calc'!A0"
    assert (row["model.minus"], row["model.at"], row["model.plus"]) == ("'-x", "'@SUM(A1)", "'+1")
    assert row["model.color"] == "\\x1b[31mred"
    assert row["model.momentum"] == "-0.5"  # a number stays one
    assert row["'@evil"] == "1.0"  # a header cell is text too
    assert float(row["final/train/loss"]) > 0


def test_compare_csv_and_table_show_a_hostile_group_safely(real_run, tmp_path):
    copy_run(real_run, tmp_path / "a", "base")
    copy_run(
        real_run,
        tmp_path / "b",
        "base",
        hparams={"=2+5": f"{ESC}[2Jred\nfake"},
        swept={"=2+5": f"{ESC}[2Jred\nfake"},
    )
    done = trainer(tmp_path, "compare", "a", "b", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert ESC not in done.stdout
    groups = {r["group"] for r in csv.DictReader(io.StringIO(done.stdout))}
    assert groups == {"base", "'=2+5=\\x1b[2Jred\\nfake"}
    done = trainer(tmp_path, "compare", "a", "b")
    assert done.returncode == 0, done.stderr
    assert ESC not in done.stdout
    assert "only in b: toy/=2+5=\\x1b[2Jred\\nfake" in done.stdout.splitlines()
    assert not any(line.startswith("fake") for line in done.stdout.splitlines())


def test_report_shows_a_hostile_setting_escaped(real_run, tmp_path):
    hostile = f"{ESC}[2Jred\nfake|x"
    for number, value in enumerate((hostile, "blue")):
        for seed in (0, 1):
            copy_run(
                real_run,
                tmp_path / "logs",
                f"c={number},seed={seed}",
                hparams={"model.c": value, "train.seed": float(seed)},
                swept={"model.c": value, "train.seed": seed},
            )
    done = trainer(tmp_path, "report", "logs", "--out", "report")
    assert done.returncode == 0, done.stderr
    assert ESC not in done.stdout and "best c=\\x1b[2Jred\\nfake|x " in done.stdout
    for name in ("report.md", "summary.md"):
        text = (tmp_path / "report" / name).read_text()
        assert ESC not in text and not any(line.startswith("fake") for line in text.splitlines())
    table = [
        line
        for line in (tmp_path / "report" / "report.md").read_text().splitlines()
        if line.startswith("| 1 |")
    ]
    assert table and table[0].startswith("| 1 | `c=\\x1b[2Jred\\nfake\\|x` | 2 |")


def test_errors_and_merge_lines_quote_names_escaped(real_run, tmp_path):
    logs = tmp_path / "logs"
    copy_run(real_run, logs, "base", hparams={f"a{ESC}[2J.lr": 0.1, "b.lr": 0.2})
    done = trainer(tmp_path, "status", "logs", "--sort", "lr")
    assert done.returncode == 2
    assert ESC not in done.stderr
    assert (
        "several settings end in 'lr' (a\\x1b[2J.lr, b.lr, optimizer.lr); give the whole key" in done.stderr
    )
    for number, lr in enumerate((0.1, 0.2)):
        key = f"a{ESC}[2J.lr"
        copy_run(real_run, tmp_path / "swept", f"seed={number}", hparams={key: lr}, swept={key: lr})
    done = trainer(tmp_path, "index", "swept")
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout == "swept: HParams record rebuilt for 2 runs; hparam columns: a\\x1b[2J.lr, experiment\n"
    )
    # merge refuses a run folder whose name is not a run name, and says so without running it.
    copy_run(real_run, tmp_path / "alice", f"seed=0{ESC}]0;owned{BEL}\nfake")
    done = trainer(tmp_path, "merge", "alice", "--into", "merged")
    assert done.returncode == 1, done.stderr
    assert not any(c in done.stdout for c in RAW)
    refused = [line for line in done.stdout.splitlines() if line.startswith("  refused:")]
    assert refused == [
        "  refused: alice/toy/seed=0\\x1b]0;owned\\x07\\nfake: "
        "'seed=0\\x1b]0;owned\\x07\\nfake' is not a run folder name"
    ]


def vm_peak(logdir: Path, cwd: Path) -> int:
    """The most address space `status` of a log folder took, in bytes (Linux's VmPeak)."""
    script = (
        "import sys; from trainer.cli.commands import main; main(['status', sys.argv[1]]); "
        "print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(logdir)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return int(done.stdout.splitlines()[-1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmPeak")
def test_status_of_large_records_takes_the_memory_of_one(real_run, tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    runs = 8
    for number in range(runs):
        copy_run(real_run, small, f"seed={number}")
        # Just under the cap, in the shape that takes the most memory per byte read: empty mappings.
        folder = copy_run(real_run, large, f"seed={number}")
        record = json.loads((folder / RECORD).read_text())
        room = MAX_RECORD_BYTES - (folder / RECORD).stat().st_size - 1024
        record["report"] = {"padding": [{}] * (room // 3)}
        (folder / RECORD).write_text(json.dumps(record, separators=(",", ":")))
        assert MAX_RECORD_BYTES - 2048 < (folder / RECORD).stat().st_size <= MAX_RECORD_BYTES
    over = copy_run(real_run, large, "seed=over")
    (over / RECORD).write_text((over / RECORD).read_text() + " " * MAX_RECORD_BYTES)
    # Reading one such record takes about 25 times its size; all of them at once would take 8 times that.
    limit = vm_peak(small, tmp_path) + 48 * MAX_RECORD_BYTES

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = trainer(tmp_path, "status", "large", preexec_fn=capped)
    assert done.returncode == 1, done.stderr  # 1: a run is damaged
    rows = [line.split()[:2] for line in done.stdout.splitlines() if line.startswith("toy/")]
    assert rows == [[f"toy/seed={n}", "complete"] for n in range(runs)] + [["toy/seed=over", "damaged"]]
    size = (over / RECORD).stat().st_size
    assert (
        f"  toy/seed=over: record.json is {size:,} bytes, more than such a file may hold (4,194,304)"
        in done.stdout
    )


def test_report_page_makes_no_html_link_or_picture_of_a_name(real_run, tmp_path):
    """report.html is a page a teammate may open in a browser: a setting that is HTML, a link to a
    script or a picture of a file beside the folder is shown as text; only the report's own
    pictures are embedded."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG the user's own picture")
    hostile = "<script>alert(1)</script>[click](javascript:alert(2))![s](../secret.png)"
    for number, value in enumerate((hostile, "blue")):
        for seed in (0, 1):
            copy_run(
                real_run,
                tmp_path / "logs",
                f"c={number},seed={seed}",
                hparams={"model.c": value, "train.seed": float(seed)},
                swept={"model.c": value, "train.seed": seed},
            )
    done = trainer(tmp_path, "report", "logs", "--out", "report")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "javascript:" not in page.replace("[click](javascript:alert(2))", "")  # only as text
    assert 'href="javascript' not in page and "<a " not in page
    assert 'src="../secret.png"' not in page
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    assert page.count('<img alt="') == page.count("data:image/png;base64,") >= 1  # the report's own
