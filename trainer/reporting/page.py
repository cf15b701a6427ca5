"""report.html: the report as one self-contained page, its pictures embedded, with nothing of a
name from the folder made into HTML, a link or an image."""

from __future__ import annotations

import re
from pathlib import Path

# A picture line of the report: ![what](file.png), the file one the report drew.
_PICTURE = re.compile(r"!\[([^\]]*)\]\(([A-Za-z0-9._-]+\.png)\)")
# What Markdown would make of a name from the folder that the report's own text never needs: raw
# HTML (a <script>), links and images (javascript: URLs, ![x](../secret.png)), entities.
_UNSAFE_MARKDOWN = (
    ("html_block",),
    (
        "reference",
        "link",
        "image_link",
        "image_reference",
        "short_reference",
        "short_image_ref",
        "autolink",
        "automail",
        "html",
        "entity",
    ),
)


def page(lines: list[str], out: Path, drawn: set[str]) -> str:
    """report.md as one HTML page, its pictures embedded, so that it can be mailed or opened anywhere.
    (Markdown comes with TensorBoard.) Only the pictures the report drew (`drawn`) are embedded;
    Markdown makes no raw HTML, link or image of any other text, so that a name from the folder
    (`<script>`, `[x](javascript:...)`, `![x](../secret.png)`) is shown as it is written."""
    import base64
    import html
    import uuid

    import markdown

    converter = markdown.Markdown(extensions=["tables"])
    for name in _UNSAFE_MARKDOWN[0]:
        converter.preprocessors.deregister(name)
    for name in _UNSAFE_MARKDOWN[1]:
        converter.inlinePatterns.deregister(name)
    token = f"picture{uuid.uuid4().hex}n"
    pictures: list[str] = []
    shown = []
    for line in lines:
        picture = _PICTURE.fullmatch(line)
        if picture is not None and picture.group(2) in drawn:
            data = base64.b64encode((out / picture.group(2)).read_bytes()).decode()
            pictures.append(f'<img alt="{html.escape(picture.group(1))}" src="data:image/png;base64,{data}">')
            shown.append(f"{token}{len(pictures) - 1}")
        else:
            shown.append(line)
    body = converter.convert("\n".join(shown))
    body = re.sub(rf"{token}(\d+)", lambda m: pictures[int(m.group(1))], body)
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
    title = html.escape(lines[0][2:])
    return f"<!doctype html>\n<meta charset=utf-8>\n<title>{title}</title>\n<style>{style}</style>\n{body}\n"
