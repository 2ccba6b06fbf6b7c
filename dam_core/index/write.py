"""The index's write side: every change is a new version published over the head.

Each batch run adds one segment with its own rows (work proportional to the batch); segments are
merged, newest first, when MERGE_FACTOR of a size pile up (LSM tiers, so a row is rewritten about
log8(n / 64) times). A full rebuild (a repair) snapshots the whole `assets` view as segments of at
most MAX_MERGED_ROWS; deleted ids are published as removed.

One index per embedding model: vectors of two models never share one. Every index lists every
row; a row embedded by another model is listed without a vector. When the pipeline's embedding
model changes, the first batch embedded by the new model starts the new model's index beside the
served one (the NEXT chain: a full build of the table, then every batch as a segment), the served
index keeps serving (new batches listed in it without vectors), and the moment the new index has
a vector for every row without an error it becomes the served index in one publish (`promote`).
Deletions are published to both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from itertools import pairwise

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dam_core.index.manifest import NEXT, SERVED, IndexManifest, SegmentEntry, clear_chain, publish, read_head
from dam_core.index.resolve import drop_deleted, live_rows
from dam_core.index.segments import ITEM_COLUMNS, load_segment, split_vectors, with_item_columns, write_segment
from dam_core.index.watermark import advance_low_watermark
from dam_core.store import ObjectStore
from dam_core.tombstones import list_tombstones, read_tombstones

log = logging.getLogger(__name__)

MERGE_FACTOR = 8
TIER_BASE_ROWS = 64
# Segments at this size are never merged further: a merge's cost (and its HNSW build) stays bounded.
MAX_MERGED_ROWS = 262_144


# ----------------------------------------------------------------------------- full build


def build_index(
    store: ObjectStore,
    con: duckdb.DuckDBPyConnection,
    exact_max: int,
    model: str | None = None,
    chain: str = SERVED,
) -> IndexManifest:
    """Snapshot the whole `assets` view of a DuckDB connection as new segments; returns the manifest.

    Every row is listed; the vectors are `model`'s (default: the chain's own model, else the
    newest row's). The full rebuild (a repair, or a new model's index). Batches indexed while it
    ran stay on top of it.
    """
    head = read_head(store, chain)
    if model is None and head is not None:
        model = head.model
    previous = head.low_watermark if head else None
    seen = {s.name for s in head.segments} if head else set()
    # The batches are read before the rows (a local table is globbed anew by every query): a
    # batch landing in between may be in the snapshot before the low watermark passes it, which
    # is harmless, but is never passed by the low watermark while missing from the snapshot.
    after = "WHERE batch > $after" if previous else ""
    in_table = {
        b
        for (b,) in con.execute(
            f"SELECT DISTINCT batch FROM assets_all {after}", {"after": previous} if previous else {}
        ).fetchall()
    }
    # A table written before a column existed (EXIF) lacks it: it is added as nulls.
    present = set(con.sql("SELECT * FROM assets").columns)
    cols = ", ".join(c for c in ITEM_COLUMNS if c in present)
    table: pa.Table = con.sql(f"SELECT {cols}, embedding FROM assets ORDER BY uploaded_at DESC, id").to_arrow_table()
    if model is None:
        model = _newest_model(table)
    table = _vectors_of(table, model)
    table = drop_deleted(table, list_tombstones(store))
    items, vectors, valid = split_vectors(table)
    return write_index(store, items, vectors, valid, exact_max, model, in_table=in_table, _since=seen, chain=chain)


def write_index(
    store: ObjectStore,
    items: pa.Table,
    vectors: np.ndarray,
    valid: np.ndarray,
    exact_max: int,
    model: str | None,
    low_watermark: str | None = None,
    in_table: set[str] | None = None,
    _since: set[str] | None = None,
    max_rows: int | None = None,
    chain: str = SERVED,
) -> IndexManifest:
    """Publish a version whose segments hold `items` (newest first; vectors where `valid`).

    The rows are cut into segments of at most `max_rows` (default MAX_MERGED_ROWS, the size merges
    stop at): a rebuild at 1M rows is searched as four graphs like the incremental index, not one
    graph of a million (recall@10 0.938 there at ef 512, 0.975-0.98 in segments at ef 256).
    With `in_table` (the batches the items came from) the low watermark advances over them from
    the head's; else it is `low_watermark` (None: no manifest is known to be fully indexed).
    Segments published by others since `_since` was read (batches indexed meanwhile) stay on top.
    """
    items = with_item_columns(items)
    entries = [
        write_segment(store, items.slice(a, b - a), vectors[va:vb], valid[a:b], exact_max)
        for a, b, va, vb in _row_slices(valid, items.num_rows, max_rows or MAX_MERGED_ROWS)
    ]
    entries.reverse()  # segments are listed oldest first; the items are newest first
    batches = set(pc.unique(items.column("batch")).to_pylist()) - {None} if items.num_rows else set()

    def change(m: IndexManifest) -> IndexManifest:
        # Batches indexed meanwhile stay on top, when their vectors are this model's.
        same = m.model is None or m.model == model
        newer = tuple(s for s in m.segments if same and _since is not None and s.name not in _since)
        low: str | None = low_watermark
        pending: list[str] = []
        if in_table is not None:
            low, pending = advance_low_watermark(store, m.low_watermark, in_table | set(m.pending))
        return m.model_copy(
            update={
                "segments": (*entries, *newer),
                "removed": {},
                "model": model,
                "watermark": max(batches | ({m.watermark} if newer and m.watermark else set()), default=None),
                "low_watermark": low,
                "pending": tuple(pending),
            }
        )

    return publish(store, change, chain=chain)


def _row_slices(valid: np.ndarray, rows: int, size: int) -> list[tuple[int, int, int, int]]:
    """(first row, end row, first vector, end vector) of consecutive slices of at most `size` rows
    (one empty slice for no rows); vector i belongs to the i-th row where `valid`."""
    before = np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])  # vectors before each row
    bounds = list(range(0, rows, size)) + [rows] if rows else [0, 0]
    return [(a, b, int(before[a]), int(before[b])) for a, b in pairwise(bounds)]


def _newest_model(table: pa.Table) -> str | None:
    """Vectors are comparable only within one model: the newest row's (rows are newest first)."""
    with_vec = table.filter(pc.is_valid(table.column("embedding")))
    return with_vec.column("embedding_model")[0].as_py() if with_vec.num_rows else None


def _vectors_of(table: pa.Table, model: str | None) -> pa.Table:
    """Every row, with its embedding (and embedding_model) only where `model` made it: a row
    embedded by another model is listed without a vector, never dropped."""
    if model is None or not table.num_rows or "embedding_model" not in table.column_names:
        return table
    other = pc.fill_null(pc.not_equal(table.column("embedding_model"), model), False)
    if not pc.any(other).as_py():
        return table
    for name in ("embedding", "embedding_model"):
        col = table.column(name)
        at = table.schema.get_field_index(name)
        table = table.set_column(at, name, pc.if_else(other, pa.nulls(table.num_rows, col.type), col))
    return table


# ----------------------------------------------------------------------------- incremental


def update_index(store: ObjectStore, con: duckdb.DuckDBPyConnection, batch: str, exact_max: int) -> IndexManifest:
    """Add one batch's table rows to the index as a new segment (then merge if segments piled up);
    returns the served index's manifest.

    A batch embedded by a model other than the served index's goes to that model's index (built
    first from the table when it is new), and to the served index as rows without vectors when the
    served one does not list its batch yet; the new index is promoted once it covers every row.
    """
    rows = _batch_rows(con, batch)
    model = _newest_model(rows.sort_by([("processed_at", "descending")])) if rows.num_rows else None
    served = read_head(store)
    if served is None or served.model is None or model is None or model == served.model:
        current = add_batch(store, batch, rows, exact_max)
        following = read_head(store, NEXT)
        if following is not None and following.model not in (None, current.model):
            add_batch(store, batch, rows, exact_max, chain=NEXT)  # its listing stays complete
        return current
    following = read_head(store, NEXT)
    if following is None or following.model != model:
        log.info(
            "index: batch %s embedded with %s, served index with %s: building its index", batch, model, served.model
        )
        build_index(store, con, exact_max, model=model, chain=NEXT)
    else:
        add_batch(store, batch, rows, exact_max, chain=NEXT)
    if not _lists_batch(served, batch):
        add_batch(store, batch, rows, exact_max)  # listed (without vectors) until the new index is served
    promoted = promote_when_complete(store, con, model)
    now = read_head(store)
    if promoted is None and now is not None and now.model == model:
        # Promoted by another writer after this batch reached the new index: it may have copied
        # an older version of it, so the batch goes to the served index too (a re-index is harmless).
        add_batch(store, batch, rows, exact_max)
    result = read_head(store)
    assert result is not None
    return result


def _batch_rows(con: duckdb.DuckDBPyConnection, batch: str) -> pa.Table:
    """The batch's own rows with their embeddings; a redelivered id twice in one batch keeps the row the view keeps."""
    present = set(con.sql("SELECT * FROM assets_all LIMIT 0").columns)
    cols = ", ".join(c for c in ITEM_COLUMNS if c in present)
    table: pa.Table = con.sql(
        f"""SELECT {cols}, embedding FROM (
              SELECT *, row_number() OVER (PARTITION BY id ORDER BY (error IS NULL) DESC, processed_at DESC) AS _r
              FROM assets_all WHERE batch = $batch
            ) WHERE _r = 1 ORDER BY uploaded_at DESC, id""",
        params={"batch": batch},
    ).to_arrow_table()
    return table


def _lists_batch(m: IndexManifest, batch: str) -> bool:
    """Whether the index `m` already lists `batch`'s rows (indexed at or before its low watermark, or after it)."""
    return bool(m.low_watermark and batch <= m.low_watermark) or batch in m.pending


def add_batch(store: ObjectStore, batch: str, rows: pa.Table, exact_max: int, chain: str = SERVED) -> IndexManifest:
    """Publish a version of `chain` with `rows` (one batch, with `embedding`) as a new segment; returns the manifest.

    The vectors kept are the index's model's (the batch's own for an index without one yet);
    rows of another model are listed without a vector.
    """
    batch_model = _newest_model(rows.sort_by([("processed_at", "descending")])) if rows.num_rows else None
    gone = read_tombstones(store, rows.column("id").to_pylist())
    rows = drop_deleted(rows, gone)
    for _ in range(10):
        head = read_head(store, chain)
        model = (head.model if head else None) or batch_model
        items, vectors, valid = split_vectors(_vectors_of(rows, model))
        entry = write_segment(store, items, vectors, valid, exact_max)

        current = publish(store, _with_segment(store, batch, entry, model, gone), chain=chain)
        if current is not None:
            merged = merge_segments(store, exact_max, chain)
            return merged or current
    raise RuntimeError(f"index: batch {batch} could not be published: the index kept changing model")


def _with_segment(
    store: ObjectStore, batch: str, entry: SegmentEntry, model: str | None, gone: Mapping[str, datetime]
) -> Callable[[IndexManifest], IndexManifest | None]:
    """The change that adds one batch's segment (vectors of `model`); none when the index changed model meanwhile."""

    def change(m: IndexManifest) -> IndexManifest | None:
        if m.model is not None and m.model != model:
            return None  # the caller writes the segment again for the index's model
        # A batch at or before the newest indexed one may be a re-run: its rows in older segments are stale.
        rerun = bool(m.watermark and batch <= m.watermark)
        low, pending = advance_low_watermark(store, m.low_watermark, set(m.pending) | {batch})
        return m.model_copy(
            update={
                "segments": (*m.segments, entry.model_copy(update={"replaces": (batch,) if rerun else ()})),
                "model": m.model or model,
                "removed": m.removed_with(gone),
                "watermark": max(filter(None, [m.watermark, batch])),
                "low_watermark": low,
                "pending": tuple(pending),
            }
        )

    return change


def promote_when_complete(store: ObjectStore, con: duckdb.DuckDBPyConnection, model: str) -> IndexManifest | None:
    """Serve `model`'s index once it has a vector for every row without an error; the served manifest, or None."""
    stale = con.execute(
        "SELECT count(*) FROM assets WHERE error IS NULL AND embedding_model IS DISTINCT FROM $m", {"m": model}
    ).fetchone()
    if stale is None or stale[0]:
        return None  # the table still holds rows of another model: the re-embedding goes on
    following = read_head(store, NEXT)
    if following is None or following.model != model or missing_vectors(store, following):
        return None
    return promote(store, following)


def missing_vectors(store: ObjectStore, m: IndexManifest) -> int:
    """How many rows that `m` serves have no vector and no error (embedded by another model, or not yet)."""
    segs = [load_segment(store, e) for e in m.segments]
    missing = 0
    for seg, keep in zip(segs, live_rows(segs, m.segments, m.removed), strict=True):
        if not seg.items.num_rows:
            continue
        no_vector = seg.items.column("vector_row").to_numpy() < 0
        no_error = np.asarray(pc.is_null(seg.items.column("error")).to_numpy(zero_copy_only=False), bool)
        missing += int((keep & no_vector & no_error).sum())
    return missing


def promote(store: ObjectStore, following: IndexManifest) -> IndexManifest:
    """Serve the NEXT chain's index (`following`, read before): one publish, then the chain is cleared.

    Versions the chain gained after `following` was read are served too (their segments appended)
    before the chain is cleared; a batch published to it later sees the new served model and is
    indexed there as well (update_index).
    """
    copied = {s.name for s in following.segments}

    def swap(m: IndexManifest) -> IndexManifest:
        return m.model_copy(
            update={
                "segments": following.segments,
                "model": following.model,
                "removed": m.removed_with(following.removed),
                "watermark": following.watermark,
                "low_watermark": following.low_watermark,
                "pending": following.pending,
            }
        )

    served = publish(store, swap)
    log.info("index: %s now served (%d rows, %d vectors)", following.model, served.rows, served.vectors)
    while (later := read_head(store, NEXT)) is not None and later.model == following.model:
        extra = tuple(s for s in later.segments if s.name not in copied)
        if not extra:
            break
        copied |= {s.name for s in extra}
        served = publish(store, _with_later(store, extra, later))
    clear_chain(store, NEXT)
    return served


def _with_later(
    store: ObjectStore, extra: tuple[SegmentEntry, ...], later: IndexManifest
) -> Callable[[IndexManifest], IndexManifest]:
    """The change that appends segments the NEXT chain (`later`) gained while it was promoted."""

    def change(m: IndexManifest) -> IndexManifest:
        low, pending = advance_low_watermark(store, m.low_watermark, set(m.pending) | set(later.pending))
        return m.model_copy(
            update={
                "segments": (*m.segments, *extra),
                "removed": m.removed_with(later.removed),
                "watermark": max(filter(None, [m.watermark, later.watermark])),
                "low_watermark": low,
                "pending": tuple(pending),
            }
        )

    return change


def remove_from_index(store: ObjectStore, deleted: Mapping[str, datetime]) -> int:
    """Publish a version that no longer serves these ids (id -> deleted_at: uploads made up to then;
    a row uploaded after its id's deletion, the same bytes uploaded again, stays); returns how many
    were newly removed from the served index (an id already removed at that time or later does not
    count). A new model's index being built gets the same removals."""
    added = 0

    def change(m: IndexManifest) -> IndexManifest | None:
        nonlocal added
        fresh = m.not_yet_removed(deleted)
        added = len(fresh)
        if not added or not m.segments:
            return None
        return m.model_copy(update={"removed": m.removed_with(fresh)})

    publish(store, change)
    served = added
    publish(store, change, chain=NEXT)
    return served


# ----------------------------------------------------------------------------- merge


def _tier(rows: int) -> int:
    t, size = 0, TIER_BASE_ROWS * MERGE_FACTOR
    while rows >= size:
        t, size = t + 1, size * MERGE_FACTOR
    return t


def merge_run(rows: Sequence[int]) -> int:
    """How many of the newest segments (their row counts, oldest first) to merge now (0: none):
    MERGE_FACTOR of one tier below the cap."""
    if len(rows) < MERGE_FACTOR:
        return 0
    tail = rows[-MERGE_FACTOR:]
    if len({_tier(r) for r in tail}) != 1 or sum(tail) > MAX_MERGED_ROWS or any(r >= MAX_MERGED_ROWS for r in tail):
        return 0
    return MERGE_FACTOR


def merge_segments(store: ObjectStore, exact_max: int, chain: str = SERVED) -> IndexManifest | None:
    """Merge the newest segments while MERGE_FACTOR of one tier pile up; returns the last manifest published."""
    published: IndexManifest | None = None
    while True:
        head = read_head(store, chain)
        n = merge_run([s.rows for s in head.segments]) if head else 0
        if head is None or not n:
            return published
        parts = head.segments[-n:]
        removed = head.removed
        segs = [load_segment(store, s) for s in parts]
        alive = live_rows(segs, parts, removed)
        tables: list[pa.Table] = []
        vecs: list[np.ndarray] = []
        valids: list[np.ndarray] = []
        for seg, keep in zip(segs, alive, strict=True):
            t = seg.items.filter(pa.array(keep))
            vr = t.column("vector_row").to_numpy()
            tables.append(t.drop(["vector_row"]))
            vecs.append(np.asarray(seg.vectors[vr[vr >= 0]]) if len(seg.vectors) else np.zeros((0, 0), np.float32))
            valids.append(vr >= 0)
        items = pa.concat_tables(tables, promote_options="default")
        order = pc.sort_indices(items, [("uploaded_at", "descending"), ("id", "ascending")]).to_numpy()
        valid = np.concatenate(valids)
        dims = {v.shape[1] for v in vecs if len(v)}
        allv = np.concatenate([v for v in vecs if len(v)]) if dims else np.zeros((0, 0), np.float32)
        # Vector rows follow the item order: vector i of `allv` belongs to the i-th valid item before sorting.
        vec_of_item = np.where(valid, np.cumsum(valid) - 1, -1)[order]
        entry = write_segment(
            store,
            items.take(pa.array(order)),
            allv[vec_of_item[vec_of_item >= 0]] if dims else allv,
            valid[order],
            exact_max,
        )
        entry = entry.model_copy(update={"replaces": tuple(sorted({b for s in parts for b in s.replaces}))})
        result = publish(store, _replace_merged([s.name for s in parts], entry, removed), chain=chain)
        if result is None:  # another writer merged these meanwhile
            return published
        published = result


def _replace_merged(
    names: list[str], entry: SegmentEntry, removed: Mapping[str, datetime]
) -> Callable[[IndexManifest], IndexManifest | None]:
    """The change that puts `entry` in place of the segments `names` it merged (`removed`: the
    removed ids the merge resolved); it publishes nothing when another writer merged them meanwhile."""
    n = len(names)

    def change(m: IndexManifest) -> IndexManifest | None:
        have = [s.name for s in m.segments]
        try:
            at = have.index(names[0])
        except ValueError:
            return None  # merged by another writer meanwhile
        if have[at : at + n] != names:
            return None
        segments = (*m.segments[:at], entry, *m.segments[at + n :])
        if len(segments) == 1:  # every row was resolved against the set: it is done
            # Deletions published meanwhile (or newer ones of the same ids) stay.
            return m.model_copy(update={"segments": segments, "removed": m.removed_without(removed)})
        return m.model_copy(update={"segments": segments})

    return change
