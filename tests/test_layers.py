"""The package's layers, read from its import graph (imports inside functions included): the
contract in pyproject.toml holds, it catches an upward import, and no module imports itself back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_layers_contract_holds():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "trainer", tmp_path / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    status = tmp_path / "trainer" / "core" / "status.py"
    status.write_text(
        status.read_text() + "\n\ndef _upward():\n    from trainer.reporting import tables  # noqa\n"
    )
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "trainer.core is not allowed to import trainer.reporting" in result.stdout
    assert "trainer.core.status -> trainer.reporting.tables" in result.stdout


def test_no_module_imports_itself_back():
    graph = grimp.build_graph("trainer", cache_dir=None)
    modules = sorted(graph.modules)
    cycles = []
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain is not None:
                cycles.append(" -> ".join((module, *chain)))
    assert cycles == []
