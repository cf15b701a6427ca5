"""The report: seed groups, their statistics, the pictures and the seed bands, recomputed here from
the runs' record.json files and from tensorboard's own event reader."""

from __future__ import annotations

import json
import statistics
import struct
from pathlib import Path

import pytest
from conftest import read_events, scalars

from trainer.cli.commands import main
from trainer.reporting import bands, index
from trainer.reporting.stats import stats, t_critical, welch
from trainer.reporting.writeup import REPORT, SUMMARY, num
from trainer.run import rundir
from trainer.tensorboard import curves

SEEDED = """
    name: seeded
    data: {kind: seed_toy}
    model: {kind: linear}
    loss: {kind: l1, reduction: mean}
    optimizer: {kind: sgd, lr: 0.05}
    train: {steps: 60, batch_size: 1}
    log: {histograms_every: 0}
    sweep:
      train.batch_size: [1, full]
      train.seed: [0, 1, 2]
"""
SINGLE = """
    name: single
    data: {kind: seed_toy}
    loss: {kind: mse, reduction: mean}
    optimizer: {kind: sgd, lr: 0.05}
    train: {steps: 40}
    log: {histograms_every: 0}
    sweep:
      optimizer.lr: [0.05, 0.01]
"""


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    """A sweep of a seeded experiment (one seed of one group failed) and one without seeds."""
    root = tmp_path_factory.mktemp("report")
    specs = []
    for name, text in (("seeded", SEEDED), ("single", SINGLE)):
        path = root / f"{name}.yaml"
        path.write_text(text.replace("\n    ", "\n"))
        specs.append(str(path))
    logs = root / "logs"
    assert main(["sweep", *specs, "--logdir", str(logs), "--workers", "1", "--quiet"]) == 0
    # A run that failed: its record as a crashed run writes it, without final values.
    failed = logs / "seeded" / "batch_size=full,seed=2"
    record = json.loads((failed / rundir.RECORD).read_text())
    record.update(status="failed", metrics={}, error="RuntimeError: out of memory")
    (failed / rundir.RECORD).write_text(json.dumps(record))
    assert main(["index", str(logs)]) == 0
    return logs


@pytest.fixture(scope="module")
def report(logdir: Path) -> Path:
    out = logdir.parent / "report"
    assert main(["report", str(logdir), "--out", str(out)]) == 0
    return out


def _records(logdir: Path, experiment: str, prefix: str) -> list[dict]:
    return [
        json.loads((run / rundir.RECORD).read_text())
        for run in sorted((logdir / experiment).iterdir())
        if run.name.startswith(prefix) and (run / rundir.RECORD).exists()
    ]


def _row(text: str, *cells: str) -> str:
    rows = [line for line in text.splitlines() if all(f"| {c} |" in line for c in cells)]
    assert len(rows) == 1, (cells, rows)
    return rows[0]


def test_group_statistics_match_the_records_and_the_event_files(logdir, report):
    text = (report / REPORT).read_text()
    runs = _records(logdir, "seeded", "batch_size=1,")
    from_records = [r["metrics"]["final/train/loss"] for r in runs]
    from_events = [
        scalars(logdir / "seeded" / r["run"])["train/loss"][r["steps"]] for r in runs
    ]  # tensorboard's reader: the last evaluation of each seed
    assert from_events == pytest.approx(from_records, rel=1e-6)
    mean, std = statistics.mean(from_events), statistics.stdev(from_events)
    half = t_critical(2) * std / 3**0.5
    row = _row(text, "`batch_size=1`", "final/train/loss")
    assert f"| 3 | {num(mean)} ± {num(std)} | {num(min(from_events))}–{num(max(from_events))} |" in row
    assert f"[{num(mean - half)}, {num(mean + half)}]" in row
    distances = [r["metrics"]["final/weight_distance"] for r in runs]
    row = _row(text, "`batch_size=1`", "final/weight_distance")
    assert f"{num(statistics.mean(distances))} ± {num(statistics.stdev(distances))}" in row


def test_a_failed_seed_is_counted_not_averaged(logdir, report):
    text = (report / REPORT).read_text()
    survivors = [r["metrics"]["final/train/loss"] for r in _records(logdir, "seeded", "batch_size=full,")[:2]]
    row = _row(text, "`batch_size=full`", "final/train/loss")
    assert f"| 2 | {num(statistics.mean(survivors))} ± {num(statistics.stdev(survivors))} |" in row
    ranking = [line for line in text.splitlines() if line.startswith("| ") and "`batch_size=full`" in line][0]
    assert "2 of 3 (1 failed)" in ranking
    assert "[" not in ranking.split("|")[-2]  # two runs: no 95% interval


def test_one_run_has_no_spread_rather_than_a_zero_one(logdir, report):
    text = (report / REPORT).read_text()
    value = _records(logdir, "single", "lr=0.05")[0]["metrics"]["final/train/loss"]
    row = _row(text, "`lr=0.05`", "final/train/loss")
    assert f"| 1 | {num(value)} (1 run, no spread) |" in row
    assert not [line for line in text.splitlines() if "`lr=" in line and "±" in line]
    assert "with one run in a group there is no spread to test them against" in text


def test_the_summary_and_the_weights_question_come_from_the_numbers(logdir, report):
    summary = (report / SUMMARY).read_text()
    assert summary in (report / REPORT).read_text()
    by_size: dict[str, list[float]] = {}
    for record in _records(logdir, "seeded", "batch_size"):
        if record["status"] == "complete":
            by_size.setdefault(record["swept"]["train.batch_size"], []).append(
                record["metrics"]["final/weight_distance"]
            )
    one, full = statistics.mean(by_size[1]), statistics.mean(by_size["full"])
    assert (
        f"`train.batch_size` changes the distance by {num(abs(one - full))} "
        f"({num(one)} with 1, {num(full)} with full" in summary
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_every_picture_is_a_png_of_the_expected_size(report):
    text = (report / REPORT).read_text()
    pictures = sorted(report.glob("*.png"))
    assert {p.name for p in pictures} == {
        f"{name}-{kind}.png" for name in ("seeded", "single") for kind in ("curves", "settings", "weights")
    }
    for picture in pictures:
        assert f"]({picture.name})" in text
    assert _png_size(report / "seeded-curves.png") == (800, 450)
    assert _png_size(report / "single-settings.png") == (400, 450)
    assert _png_size(report / "seeded-weights.png") == (800, 300)  # a panel per group, two groups
    assert b"data:image/png;base64," in (report / "report.html").read_bytes()


def test_the_curve_reader_agrees_with_tensorboards(logdir):
    run = logdir / "seeded" / "batch_size=1,seed=1"
    ours = curves.run_scalars(run, ["train/loss", "w/2"])
    theirs = scalars(run)
    for tag in ("train/loss", "w/2"):
        assert ours[tag] == [(step, pytest.approx(v)) for step, v in sorted(theirs[tag].items())]
    kept = curves.run_scalars(run, ["w/2"], curves.stride_for(60, 6))["w/2"]
    assert [step for step, _ in kept] == list(range(0, 61, 10))


def test_a_record_keeps_its_main_curve_as_the_event_file_holds_it(logdir):
    """Seed bands are drawn from the records' curves: the same steps and the same float32 values
    as the event files hold (for 200 points)."""
    for record in index.records(logdir):
        if record["status"] != "complete":
            continue
        tag = record["curve"]["tag"]
        assert tag == "train/loss"
        keep = curves.stride_for(record["steps"])
        from_file = curves.run_scalars(logdir / record["folder"], [tag], keep)
        assert curves.recorded(record, [tag], curves.POINTS) == from_file
        assert len(from_file[tag]) > 2
    assert curves.recorded(record, ["train/loss"], 50) == {}  # other points: read from the file


def test_seed_bands_are_runs_of_their_own_that_status_does_not_count(logdir, capsys):
    band = logdir / rundir.BANDS / "seeded" / "batch_size=1"
    values = scalars(band)
    mean, low, high = bands.tags("seeded", "train/loss")
    seeds = [scalars(logdir / "seeded" / f"batch_size=1,seed={s}")["train/loss"] for s in range(3)]
    for step in (0, 30, 60):
        at = [seed[step] for seed in seeds]
        assert values[mean][step] == pytest.approx(statistics.mean(at), rel=1e-6)
        assert (values[low][step], values[high][step]) == pytest.approx((min(at), max(at)))
    # The failed seed is not in its group's band.
    assert not (logdir / rundir.BANDS / "single").exists()  # one run per group: no band
    assert len(index.records(logdir)) == 8
    assert main(["status", str(logdir)]) == 0
    assert "8 runs:" in capsys.readouterr().out
    layout = read_events(logdir / rundir.BANDS)
    assert layout.Tags()["tensors"] == ["custom_scalars__config__"]


def test_stats_and_welch():
    assert stats([2.0]).std is None and stats([2.0]).half_width is None
    two = stats([1.0, 3.0])
    assert two.std == pytest.approx(2**0.5) and two.half_width is None
    assert t_critical(4) == 2.776 and t_critical(4.5) == pytest.approx(
        2.776 - (2.776 - 2.571) * (1 / 4 - 1 / 4.5) / (1 / 4 - 1 / 5)
    )
    apart = welch(stats([1.0, 1.1, 0.9]), stats([2.0, 2.1, 1.9]))
    assert apart.separable and apart.t == pytest.approx(12.247, rel=1e-3) and apart.df == pytest.approx(4)
    assert not welch(stats([1.0, 2.0, 3.0]), stats([1.5, 2.5, 3.5])).separable
    assert welch(stats([1.0]), stats([2.0, 3.0])).separable is None


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["seeed"], "seeed: no experiment of that name in", id="unknown-experiment"),
        pytest.param(
            ["--out", "/proc/report"], "/proc/report: cannot create the report folder", id="unwritable-out"
        ),
    ],
)
def test_bad_report_requests_are_one_sentence(logdir, args, message, capsys):
    assert main(["report", str(logdir), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "(did you mean" in err or "cannot create" in err
    assert "Traceback" not in err


def test_a_spec_report_section_is_checked(write_spec, capsys):
    path = write_spec("bad", "name: bad\nreport:\n  replicates: [train.sede]\n  metric: final/vall\n")
    assert main(["check", path]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:4: report.metric: 'final/vall' is not a metric a run records" in err
    path = write_spec("bad2", "name: bad2\nreport:\n  replicates: [train.sede]\n")
    assert main(["check", path]) == 2
    assert (
        "bad2.yaml:3: report.replicates[0]: unknown key 'train.sede' (did you mean 'seed'?)"
        in capsys.readouterr().err
    )
