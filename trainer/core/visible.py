"""Text read from a log folder, made safe to show: a teammate's folder is data, and its names and
values (run and experiment folder names, settings, error messages that quote them) must neither
drive the reader's terminal (escape sequences, bells), nor forge lines of a table (newlines), nor
reorder what is shown (bidirectional overrides), nor run as a formula in a spreadsheet.

The rule, the same in every table, line and CSV cell we print: each character that Python's repr
escapes (str.isprintable is false: the control and format characters, Unicode categories Cc and
Cf, which hold ESC, BEL, newline, tab, carriage return and the bidi overrides such as U+202E;
line and paragraph separators; surrogates, private-use and unassigned code points; every space
but the plain one) is shown as repr writes it: \\x1b, \\n, \\t, \\u202e. Everything else,
backslashes included, is shown as it is. JSON output escapes them itself (json.dumps).
"""

from __future__ import annotations

from typing import Any

# The first characters with which a spreadsheet reads a cell as a formula (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def visible(text: Any) -> str:
    """text (or str of a value) with each character that is not printable escaped as repr would."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def visible_lines(text: Any) -> str:
    """visible, but for a message whose own newlines separate its lines (a paragraph we wrote): every
    other unprintable character is escaped."""
    return "\n".join(visible(line) for line in str(text).split("\n"))


def csv_cell(value: Any) -> Any:
    """A CSV cell: a number (int, float, bool) as it is, None as empty, and text as visible shows
    it, with a single quote before it where it would begin a spreadsheet formula: `'=2+5`, `'-cmd`
    are read as text, while -0.5 written from a float stays a number. Every CSV we write uses it."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return value
    text = visible(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text
