"""The spec reference in the README, generated from the schema so the two cannot drift apart."""
from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from typing import Any, get_type_hints

from trainer.schema import Config, describe, variants


def _default(f: Any) -> str:
    if f.default is MISSING:
        return "required"
    value = f.default
    if isinstance(value, tuple):
        value = list(value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`" if value != "" else '`""`'


def _rows(cls: type, prefix: str) -> list[str]:
    hints = get_type_hints(cls)
    rows = []
    for f in fields(cls):
        if f.name == "kind":
            continue
        allowed = describe(hints[f.name]).replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | {_default(f)} | {allowed} | {f.metadata.get('doc', '')} |")
    return rows


def reference_markdown() -> str:
    """One table per section; sections with kinds get one table per kind."""
    hints = get_type_hints(Config)
    out = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for f in fields(Config):
        if f.name in ("data", "model", "loss", "optimizer", "schedule", "train", "eval", "log"):
            continue
        out.append(f"| `{f.name}` | {_default(f) if f.name != 'name' else 'the file name'} | "
                   f"{describe(hints[f.name])} | {f.metadata.get('doc', '')} |")
    sections = []
    for f in fields(Config):
        kinds = variants(hints[f.name])
        if kinds is None and not is_dataclass(hints[f.name]):
            continue
        sections.append(f"\n**{f.name}** — {f.metadata.get('doc', '')}")
        if kinds is None:
            sections += ["| key | default | allowed | meaning |", "|---|---|---|---|", *_rows(hints[f.name], f"{f.name}.")]
            continue
        default_kind = next(iter(kinds))
        for kind, cls in kinds.items():
            note = " (the default)" if kind == default_kind else ""
            sections.append(f"\n`{f.name}.kind: {kind}`{note} — {cls.__doc__}\n")
            rows = _rows(cls, f"{f.name}.")
            sections += ["| key | default | allowed | meaning |", "|---|---|---|---|", *rows] if rows else \
                ["(no settings)"]
    return "\n".join(out + sections) + "\n"


START, END = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"


def with_reference(readme: str) -> str:
    """The README text with its spec reference section regenerated."""
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{reference_markdown()}{END}{tail}"


if __name__ == "__main__":
    import pathlib
    import sys

    path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(with_reference(path.read_text()))
