"""Which rows a list of segments serves: the `assets` view's rule applied across segments.

Rows of a batch that a later segment re-indexed (its entry's `replaces`) are gone; then per id a
row without error beats an error row, then the newest `processed_at`, then the newest batch. Rows
of a removed id (deleted assets: uploaded at or before the id's deletion) are never served; a
re-upload of the same bytes after the delete is a new asset and is served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dam_core.index.manifest import SegmentEntry
from dam_core.index.segments import Segment
from dam_core.tombstones import is_deleted


def deleted_rows(table: pa.Table, removed: Mapping[str, datetime]) -> np.ndarray:
    """Which rows a deletion hides: the id was deleted at or after the row's upload (a re-upload
    made after the delete is a new asset and stays)."""
    if not removed or not table.num_rows:
        return np.zeros(table.num_rows, bool)
    hit = np.asarray(pc.is_in(table.column("id"), pa.array(sorted(removed))).to_numpy(zero_copy_only=False), bool)
    rows = np.flatnonzero(hit)
    if len(rows):
        sub = table.take(pa.array(rows)).select(["id", "uploaded_at"]).to_pylist()
        hit[rows] = [is_deleted(removed, r["id"], r["uploaded_at"]) for r in sub]
    return hit


def drop_deleted(table: pa.Table, removed: Mapping[str, datetime]) -> pa.Table:
    """`table` without the rows a deletion hides."""
    gone = deleted_rows(table, removed)
    return table.filter(pa.array(~gone)) if gone.any() else table


def live_rows(
    segs: Sequence[Segment], entries: Sequence[SegmentEntry], removed: Mapping[str, datetime]
) -> list[np.ndarray]:
    """Per segment (oldest first, with its manifest entry), which item rows are served."""
    n = [s.items.num_rows for s in segs]
    alive = [np.ones(k, bool) for k in n]
    # Rows of a batch that a later segment re-indexed are gone, whatever they held.
    later: set[str] = set()
    for i in range(len(segs) - 1, -1, -1):
        if later and n[i]:
            stale = pc.is_in(segs[i].items.column("batch"), pa.array(sorted(later))).to_numpy(zero_copy_only=False)
            alive[i] &= ~np.asarray(stale, dtype=bool)
        later |= set(entries[i].replaces)
    if removed:
        for i, s in enumerate(segs):
            if n[i]:
                alive[i] &= ~deleted_rows(s.items, removed)
    if not segs:
        return alive
    # Ids held by more than one live row: the view's rule picks one. No segment holds an id twice,
    # so a duplicate involves one of the smaller segments: their ids are checked against the rest,
    # never the largest segment's against itself (a swap stays cheap next to a big base segment).
    big = max(range(len(segs)), key=lambda i: n[i])
    seen: dict[str, int] = {}
    dup: set[str] = set()
    for i, s in enumerate(segs):
        if i == big:
            continue
        for asset_id in s.ids:
            if asset_id in seen:
                dup.add(asset_id)
            seen[asset_id] = i
    if seen and n[big]:
        hit = pc.is_in(segs[big].items.column("id"), pa.array(list(seen))).to_numpy(zero_copy_only=False)
        dup |= {segs[big].ids[r] for r in np.flatnonzero(hit)}
    if not dup:
        return alive
    dupes = pa.array(sorted(dup))
    best: dict[str, tuple[tuple[bool, datetime, str, int], int, int]] = {}  # id -> (rank, segment, row)
    for i, s in enumerate(segs):
        if not n[i]:
            continue
        hit = np.flatnonzero(alive[i] & pc.is_in(s.items.column("id"), dupes).to_numpy(zero_copy_only=False))
        if not len(hit):
            continue
        sub = s.items.take(pa.array(hit)).select(["id", "error", "processed_at", "batch"]).to_pylist()
        for r, row in zip(hit, sub, strict=True):
            alive[i][r] = False
            key = (row["error"] is None, row["processed_at"] or datetime.min.replace(tzinfo=UTC), row["batch"] or "", i)
            if row["id"] not in best or key > best[row["id"]][0]:
                best[row["id"]] = (key, i, int(r))
    for _, seg, row in best.values():
        alive[seg][row] = True
    return alive
