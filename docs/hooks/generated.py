"""MkDocs hook: the build fails when a generated page is out of date.

docs/reference.md holds the spec reference that scripts/reference.py generates from the schema,
between its markers; a page that no longer matches the schema stops the build (strict or not).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def on_pre_build(config) -> None:
    sys.path.insert(0, str(SCRIPTS))
    try:
        from reference import with_reference
    finally:
        sys.path.remove(str(SCRIPTS))
    text = (Path(config["docs_dir"]) / "reference.md").read_text()
    if with_reference(text) != text:
        raise PluginError(
            "docs/reference.md is out of date: run python scripts/reference.py docs/reference.md"
        )
