"""Data in the Markdown that Dagster's UI renders (materialization previews): the one escaper.

Filenames, captions and error texts are data, never markup. Each value becomes one line of plain
text: line breaks and other control characters turn into a space; `&`, `<` and `>` into HTML
entities (no raw tag or entity reaches the renderer); every other ASCII punctuation character is
backslash-escaped, which CommonMark and GFM define for exactly this (so `|` cannot end a table
cell, and `*`, `_`, `` ` ``, `[`, `]`, `(`, `)`, `!`, `#`, `~`, `:` cannot start emphasis, code,
links, images, headings, strikethrough or autolinks). It renders as the original text.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterable, Sequence

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ESCAPES = {ord(c): _ENTITIES.get(c, "\\" + c) for c in string.punctuation}


def _one_line(text: str) -> str:
    """Control characters and line or paragraph separators to one space each, runs collapsed."""
    out: list[str] = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            if not out or out[-1] != " ":
                out.append(" ")
        else:
            out.append(ch)
    return "".join(out).strip()


def md_text(value: object, limit: int | None = None) -> str:
    """`value` as inline Markdown that renders as its text, on one line (first `limit` characters)."""
    text = "" if value is None else str(value)
    text = _one_line(text)
    if limit is not None and len(text) > limit:
        text = text[:limit].rstrip() + "…"
    return text.translate(_ESCAPES)


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]], limit: int | None = None) -> str:
    """A GFM table: every cell escaped by md_text, every row with exactly the header's columns."""
    width = len(header)
    lines = [
        "| " + " | ".join(md_text(h) for h in header) + " |",
        "|" + "---|" * width,
    ]
    for row in rows:
        cells = [md_text(c, limit) for c in list(row)[:width]]
        cells += [""] * (width - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["md_table", "md_text"]
