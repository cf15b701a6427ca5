"""The README's spec reference is the schema's, and its examples are valid specs."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

from trainer.spec.sweep import plan

README = Path(__file__).parents[1] / "README.md"
sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from reference import with_reference  # noqa: E402


def test_spec_reference_is_up_to_date():
    text = README.read_text()
    assert with_reference(text) == text, "run: python -m trainer.reference README.md"


def test_readme_example_spec_is_valid(tmp_path):
    example = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S).group(1)
    path = tmp_path / "example.yaml"
    path.write_text(example)
    runs = plan([str(path)])
    assert [r.name for r in runs] == [
        "batch_size=1,weight_decay=0.0",
        "batch_size=1,weight_decay=0.1",
        "batch_size=full,weight_decay=0.0",
        "batch_size=full,weight_decay=0.1",
    ]


def test_comparison_set_is_valid():
    specs = sorted(str(p) for p in (Path(__file__).parents[1] / "experiments").glob("*.yaml"))
    assert len(plan(specs)) == 126


@pytest.mark.slow
def test_readme_findings_are_the_reports_of_a_fresh_sweep(tmp_path):
    """The README's findings block is `report`'s summary of a fresh sweep of the comparison set
    (runs are bit-identical on CPU), word for word."""
    from trainer.cli.commands import main
    from trainer.report.writeup import START, SUMMARY, with_findings

    specs = sorted(str(p) for p in (Path(__file__).parents[1] / "experiments").glob("*.yaml"))
    logs, out = tmp_path / "logs", tmp_path / "report"
    assert main(["sweep", *specs, "--logdir", str(logs), "--quiet"]) == 0
    assert main(["report", str(logs), "--out", str(out)]) == 0
    summary = (out / SUMMARY).read_text().splitlines()
    text = README.read_text()
    assert START in text
    fresh = with_findings(text, summary, "README.md")
    assert agree(fresh, text), (
        "run: make sweep && python -m trainer report logs --out docs/report --readme README.md"
    )


NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def agree(fresh: str, committed: str) -> bool:
    """The same words, and the same numbers to within 1%: a value a few float32 roundings above the
    report's floor may differ in its third digit between CPUs (vectorized kernels add in other orders)."""
    a, b = NUMBER.split(fresh), NUMBER.split(committed)
    if len(a) != len(b):
        return False
    words = all(x == y for x, y in zip(a[::2], b[::2]))
    numbers = all(math.isclose(float(x), float(y), rel_tol=0.01) for x, y in zip(a[1::2], b[1::2]))
    return words and numbers


def test_findings_agree_only_when_their_words_and_numbers_do():
    assert agree("loss 0.0361 ± 0.0292, t = 245", "loss 0.0361 ± 0.0292, t = 245")
    assert agree("distance 9.24e-06 with mse", "distance 9.28e-06 with mse")
    assert not agree("distance 9.24e-06 with mse", "distance 9.98e-06 with mse")
    assert not agree("they cannot be told apart", "they can be told apart")
    assert not agree("ranks first, 4 groups", "ranks first, 5 groups")
