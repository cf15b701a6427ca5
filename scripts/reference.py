"""The spec reference of the documentation (docs/reference.md), generated from the schema so the two
cannot drift apart.

    python scripts/reference.py docs/reference.md   # rewrites the page's reference in place

The page holds the reference between its spec-reference markers; `make docs` fails while it is stale.
"""

from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from typing import Any, get_type_hints

from trainer.kinds import registry as kinds
from trainer.spec.schema import Config, describe


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


def _rows(cls: type, prefix: str, skip: set[str] = frozenset()) -> list[str]:
    hints = get_type_hints(cls)
    rows = []
    for f in fields(cls):
        if f.name == "kind" or f.name in skip:
            continue
        allowed = describe(hints[f.name]).replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | {_default(f)} | {allowed} | {f.metadata.get('doc', '')} |")
    return rows


HEADER = ["| key | default | allowed | meaning |", "|---|---|---|---|"]


def reference_markdown() -> str:
    """One table per section; sections with kinds get one table per kind (from the kind registry),
    the settings every kind of the family shares, and what a kind of the user's own must be."""
    hints = get_type_hints(Config)
    out = list(HEADER)
    for f in fields(Config):
        if f.name in ("data", "model", "loss", "optimizer", "schedule", "train", "eval", "log"):
            continue
        out.append(
            f"| `{f.name}` | {_default(f) if f.name != 'name' else 'the file name'} | "
            f"{describe(hints[f.name])} | {f.metadata.get('doc', '')} |"
        )
    sections = []
    for f in fields(Config):
        if f.name not in kinds.FAMILIES and not is_dataclass(hints[f.name]):
            continue
        sections.append(f"\n**{f.name}** — {f.metadata.get('doc', '')}")
        if f.name not in kinds.FAMILIES:
            sections += ["", *HEADER, *_rows(hints[f.name], f"{f.name}.")]
            continue
        family = kinds.family(f.name)
        common = {c.name for c in fields(family.common)} if family.common else set()
        if family.common:
            sections += ["\nEvery kind, your own included:\n", *HEADER, *_rows(family.common, f"{f.name}.")]
        default_kind = next(iter(kinds.builtin(f.name)))
        for kind, cls in kinds.builtin(f.name).items():
            note = " (the default)" if kind == default_kind else ""
            sections.append(f"\n`{f.name}.kind: {kind}`{note} — {cls.__doc__}\n")
            rows = _rows(cls, f"{f.name}.", common)
            sections += (
                [*HEADER, *rows] if rows else ["(no settings of its own)" if common else "(no settings)"]
            )
        sections.append(
            f"\n`{f.name}.kind: module:attribute` — your own: {family.what}. Its other keys are its "
            f"keyword arguments, checked against its signature."
        )
    sections += _spec_level()
    return "\n".join(out + sections) + "\n"


def _spec_level() -> list[str]:
    """The sections of a spec that are no setting of a run: how it searches, how it is reported."""
    from trainer.spec.pruners import Prune
    from trainer.spec.schema import ReportSettings
    from trainer.spec.search import SearchSettings

    kind = next(f for f in fields(Prune) if f.name == "kind")
    prune_kind = (
        f"| `search.prune.kind` | {_default(kind)} | {describe(get_type_hints(Prune)['kind'])} | "
        f"{kind.metadata.get('doc', '')} |"
    )
    return [
        "\nThe sections below belong to the spec, not to a run: changing them changes no run.",
        f"\n**search** — {' '.join(SearchSettings.__doc__.split())} ([Searching](search.md))",
        "",
        *HEADER,
        *_rows(SearchSettings, "search.", {"prune"}),
        prune_kind,
        *_rows(Prune, "search.prune."),
        f"\n**report** — {' '.join(ReportSettings.__doc__.split())}",
        "",
        *HEADER,
        *_rows(ReportSettings, "report."),
    ]


START, END = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"


def with_reference(text: str) -> str:
    """A Markdown text with the spec reference between its markers regenerated."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{reference_markdown()}{END}{tail}"


if __name__ == "__main__":
    import pathlib
    import sys

    path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "docs/reference.md")
    path.write_text(with_reference(path.read_text()))
