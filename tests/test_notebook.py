"""docs/notebook.ipynb, the seed notebook redone through the Python API, executed top to bottom on a
real kernel; the answer it states is checked against the runs it made."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import trainer

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebook.ipynb"
ANSWER = re.compile(
    r"ANSWER: with a mean loss, (?P<winner>batch size 1|the full batch) ends nearer \[0, 1, 2, 3\]: "
    r"batch size 1 at a distance of (?P<one>[\d.]+) ± (?P<one_std>[\d.]+), the full batch at "
    r"(?P<full>[\d.]+) ± (?P<full_std>[\d.]+) \(mean ± standard deviation over 5 seeds each\)"
)


def test_the_notebook_runs_top_to_bottom_and_its_answer_is_the_datas(tmp_path):
    shutil.copy(NOTEBOOK, tmp_path / "notebook.ipynb")
    notebook = nbformat.read(tmp_path / "notebook.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, where one fails
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    found = ANSWER.search(printed)
    assert found, printed
    assert any(
        "image/png" in o.get("data", {}) for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )

    runs = trainer.runs(tmp_path / "notebook-logs")
    assert len(runs) == 10 and set(runs["state"]) == {"complete"}
    distance = runs.groupby("train.batch_size")["final/weight_distance"]
    means, stds = distance.mean(), distance.std()
    assert float(found["one"]) == pytest.approx(means[1.0], abs=5e-5)
    assert float(found["full"]) == pytest.approx(means[10.0], abs=5e-5)
    assert float(found["one_std"]) == pytest.approx(stds[1.0], abs=5e-5)
    assert float(found["full_std"]) == pytest.approx(stds[10.0], abs=5e-5)
    assert found["winner"] == ("batch size 1" if means[1.0] < means[10.0] else "the full batch")
