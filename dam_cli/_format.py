"""How `dam sql` prints a result: an aligned table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime


def _cell(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        if len(v) > 4 and all(isinstance(x, (int, float)) for x in v):
            return "[" + ", ".join(f"{x:.4g}" for x in v[:3]) + f", … ({len(v)} values)]"
        return json.dumps(list(v), default=str, ensure_ascii=False)
    if isinstance(v, datetime):
        return v.isoformat()
    return "" if v is None else str(v)


def format_result(rel, fmt: str = "table", max_width: int = 60) -> str:
    """Render a DuckDB relation as an aligned table, CSV or JSON lines."""
    names = rel.columns
    rows = rel.fetchall()
    if fmt == "json":
        return json.dumps([dict(zip(names, r, strict=True)) for r in rows], default=str, ensure_ascii=False, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")  # the csv module's default is CRLF
        w.writerow(names)
        for r in rows:
            w.writerow([json.dumps(list(v)) if isinstance(v, (list, tuple)) else ("" if v is None else v) for v in r])
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(v).replace("\n", " ")[:max_width] for v in r] for r in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]

    def line(vals: list[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()

    out = [line(names), "-+-".join("-" * w for w in widths)] + [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)
