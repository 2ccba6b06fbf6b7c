"""The search index: versioned snapshots of the `assets` table with its vectors, kept up to date
batch by batch by the pipeline and loaded by the API, which swaps to a new version without a restart.

Layout in the object store:
    index/segments/{segment}/items.parquet  one row per asset (no embeddings), newest first
    index/segments/{segment}/vectors.npy    float32 (m, dim), L2-normalized, one per row with a vector
    index/segments/{segment}/hnsw.usearch   approximate index, only when m > DAM_EXACT_SEARCH_MAX
    index/versions/{seq}.json               the manifest of version `seq`, created exclusively
    index/CURRENT.json                      a copy of the newest manifest, written last

A manifest lists segments, oldest first, and a removed-id set:
    {"version", "seq", "model", "watermark": newest batch in it, "low_watermark": see below,
     "pending": batches indexed after the low watermark, "removed": {id: deleted_at},
     "segments": [{"name", "prefix", "rows", "vectors", "dim", "hnsw", "replaces": [batches]}], ...}
Segments never change once written. Each batch run adds one segment with its own rows (work
proportional to the batch); segments are merged, newest first, when MERGE_FACTOR of a size pile
up (LSM tiers, so a row is rewritten about log8(n / 64) times). A reader resolves rows exactly as
the `assets` view does: rows of a batch that a later segment re-indexed (`replaces`) are gone,
then per id a row without error beats an error row, then the newest `processed_at`, then the
newest batch; rows in `removed` (deleted assets: uploaded at or before the id's deletion) are never served;
a re-upload of the same bytes after the delete is a new asset and is served.

Versions are published by compare-and-swap: `versions/{seq+1}.json` is created exclusively (a
concurrent writer that lost retries on the new head), so parallel batch runs never lose an
update. The segment files are written before the manifest and CURRENT.json last: a crash in
between leaves the previous version served, and its orphans are pruned later.

The low watermark is the newest manifest key K such that every manifest at or before K has its
batch in the index (or holds no uploads). Manifests after it may still hold uploads that are not
in the snapshot: the API lists those as queued. A newer batch indexed before an older one
therefore never hides the older one's uploads.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from dam_core.exif import EXIF_COLUMNS
from dam_core.layout import (
    CURRENT_INDEX_KEY,
    INDEX_PREFIX,
    INDEX_SEGMENTS_PREFIX,
    INDEX_VERSIONS_PREFIX,
    index_manifest_key,
    index_segment_prefix,
    index_version_prefix,
    manifest_key,
)
from dam_core.manifests import batches_after
from dam_core.messages import BatchManifest
from dam_core.store import KeyNotFound, LocalStore, ObjectStore
from dam_core.table import schema
from dam_core.tombstones import is_deleted, list_tombstones, read_tombstones

if TYPE_CHECKING:
    from dam_core.settings import Settings

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3
# Segment files younger than this are never pruned unreferenced: a writer may not have published them yet.
ORPHAN_GRACE = timedelta(minutes=30)
MERGE_FACTOR = 8
TIER_BASE_ROWS = 64
# Segments at this size are never merged further: a merge's cost (and its HNSW build) stays bounded.
MAX_MERGED_ROWS = 262_144
ITEM_COLUMNS = [
    "id", "filename", "caption", "tags", "mime_type", "width", "height", "error",
    "uploaded_at", "processed_at", "batch", "embedding_model", *EXIF_COLUMNS,
]


# ----------------------------------------------------------------------------- rows -> segment


def with_item_columns(table: pa.Table) -> pa.Table:
    """``table`` with every ITEM_COLUMNS column: the ones it lacks (older tables, older snapshots) as nulls."""
    types = schema(None)
    for name in ITEM_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(types.field(name), pa.nulls(table.num_rows, types.field(name).type))
    return table


def split_vectors(table: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows with an `embedding` column -> (items without it, unit float32 vectors, which rows have one)."""
    emb = table.column("embedding").combine_chunks()
    valid = np.asarray(emb.is_valid(), dtype=bool) if len(emb) else np.zeros(0, bool)
    if valid.any():
        picked = emb.filter(pa.array(valid))
        dim = picked.type.list_size if pa.types.is_fixed_size_list(picked.type) else len(picked[0])
        vectors = np.array(picked.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.where(norms == 0, 1, norms)
    else:
        vectors = np.zeros((0, 0), np.float32)
    return with_item_columns(table.drop(["embedding"])), vectors, valid


def _new_segment_name() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{os.urandom(3).hex()}"


def _segment_time(name: str) -> datetime | None:
    try:
        return datetime.strptime(name.split("-", 1)[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def write_segment(store: ObjectStore, items: pa.Table, vectors: np.ndarray, valid: np.ndarray, exact_max: int) -> dict:
    """Write one immutable segment (items newest first; vectors for the rows where `valid`); returns its entry."""
    name = _new_segment_name()
    prefix = index_segment_prefix(name)
    items = items.append_column("vector_row", pa.array(
        np.where(valid, np.cumsum(valid) - 1, -1).astype(np.int64) if len(valid) else np.zeros(0, np.int64)
    ))
    buf = io.BytesIO()
    pq.write_table(items, buf, compression="zstd")
    store.put(prefix + "items.parquet", buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, vectors)
    store.put(prefix + "vectors.npy", buf.getvalue())
    hnsw = len(vectors) > exact_max
    if hnsw:
        idx = _new_hnsw(vectors.shape[1])
        idx.add(np.arange(len(vectors), dtype=np.uint64), vectors)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "hnsw.usearch")
            idx.save(path)
            with open(path, "rb") as f:
                store.put(prefix + "hnsw.usearch", f)
    return {
        "name": name, "prefix": prefix, "rows": items.num_rows, "vectors": int(len(vectors)),
        "dim": int(vectors.shape[1]) if len(vectors) else 0, "hnsw": hnsw, "replaces": [],
    }


# ----------------------------------------------------------------------------- HNSW

# Measured (bench/search.py, CLIP-like clustered vectors, text-like queries): at 100k vectors
# M=16/ef_add=128 searched at ef=96 gave recall@10 0.81 and the search asked for only k keys; at
# M=32/ef_add=200 recall@10 is 0.975 at ef=256 and 0.99 at ef=512 (usearch searches max(ef, count)
# candidates; asking for more keys than ef does not widen it). Inner product on unit vectors is the
# cosine without a normalization per distance. At 1M vectors in the product's segments (3 graphs of
# 262,144 and the tiers below) ef=256 gives recall@10 0.98 and ef=512 0.99 at about twice the time.
HNSW_CONNECTIVITY = 32
HNSW_EXPANSION_ADD = 200
HNSW_EXPANSION_SEARCH = 256
# A small graph (a 32,768-row tier segment) keeps its recall at ef=64 (the per-segment candidate
# count, usearch's floor): at 1M rows a query searches up to 7 of them beside the big graphs, and
# their cost is per graph, not per row (bench/NOTES.md: 0.978 at ~21 ms p50 against 0.979 at ~30).
HNSW_EXPANSION_SEARCH_SMALL = 64
HNSW_SMALL_GRAPH = 131_072

HNSW_CANDIDATES = 64  # keys re-scored exactly per segment (at least k + removed rows of the segment)


def expansion_search(vectors: int) -> int:
    """The search-time expansion for a graph of this many vectors."""
    return HNSW_EXPANSION_SEARCH if vectors >= HNSW_SMALL_GRAPH else HNSW_EXPANSION_SEARCH_SMALL


def _new_hnsw(dim: int):
    from usearch.index import Index

    # f16 storage halves memory; the candidates are re-scored from the float32 vectors.
    return Index(ndim=dim, metric="ip", dtype="f16", connectivity=HNSW_CONNECTIVITY,
                 expansion_add=HNSW_EXPANSION_ADD, expansion_search=HNSW_EXPANSION_SEARCH)


# ----------------------------------------------------------------------------- manifests


def read_head(store: ObjectStore) -> dict | None:
    """The newest published manifest: CURRENT.json, or a newer version a writer published after it."""
    try:
        current = json.loads(store.get(CURRENT_INDEX_KEY))
    except KeyNotFound:
        current = None
    if current is not None and "segments" not in current:
        current = _legacy_manifest(current)
    seq = current["seq"] if current else 0
    newest = None
    for newest in store.list(INDEX_VERSIONS_PREFIX, start_after=index_manifest_key(seq)):
        pass
    if newest is not None:
        try:
            return json.loads(store.get(newest))
        except KeyNotFound:  # pruned meanwhile: a newer one exists, look again
            return read_head(store)
    return current


def _legacy_manifest(current: dict) -> dict:
    """A pointer written before segments: its one version folder becomes the only segment."""
    version = current["version"]
    return {
        **current, "seq": 0, "pending": [], "removed": {},
        "low_watermark": current["low_watermark"] if "low_watermark" in current else current.get("watermark"),
        "segments": [{
            "name": f"legacy-{version}", "prefix": index_version_prefix(version), "rows": current.get("rows", 0),
            "vectors": current.get("vectors", 0), "dim": current.get("dim", 0), "hnsw": bool(current.get("hnsw")),
            "replaces": [],
        }],
    }


def _empty_manifest() -> dict:
    return {"seq": 0, "model": None, "watermark": None, "low_watermark": None, "pending": [], "removed": {}, "segments": []}


class PublishConflict(RuntimeError):
    """Another writer kept winning the next version."""


def publish(store: ObjectStore, change: Callable[[dict], dict | None], attempts: int = 100) -> dict | None:
    """Apply `change` to the newest manifest and publish the result as the next version (compare-and-swap).

    `change` gets a copy of the head (an empty manifest before the first) and returns the new one,
    or None to publish nothing; it is called again on the new head when another writer won the race.
    """
    for _ in range(attempts):
        head = read_head(store)
        new = change(json.loads(json.dumps(head or _empty_manifest())))
        if new is None:
            return None
        seq = (head["seq"] if head else 0) + 1
        segs = new["segments"]
        new.update(
            seq=seq, version=f"{seq:012d}",
            rows=sum(s["rows"] for s in segs), vectors=sum(s["vectors"] for s in segs),
            dim=max((s["dim"] for s in segs), default=0), hnsw=any(s["hnsw"] for s in segs),
            built_at=datetime.now(UTC).isoformat(),
        )
        body = json.dumps(new).encode()
        if store.create(index_manifest_key(seq), body, content_type="application/json"):
            # The pointer is written last: readers only ever see complete versions. A slower
            # writer may put an older pointer after a newer one: read_head looks past it.
            store.put(CURRENT_INDEX_KEY, body, content_type="application/json")
            _prune(store)
            return new
    raise PublishConflict(f"no index version published after {attempts} attempts")


def _prune(store: ObjectStore) -> None:
    """Drop manifests older than the last KEEP_VERSIONS and the segments none of those lists."""
    try:
        manifests = sorted(store.list(INDEX_VERSIONS_PREFIX))
        keep = manifests[-KEEP_VERSIONS:]
        referenced: set[str] = set()
        for key in keep:
            referenced |= {s["prefix"] for s in json.loads(store.get(key))["segments"]}
        for key in manifests[:-KEEP_VERSIONS]:
            store.delete(key)
        now = datetime.now(UTC)
        for key in list(store.list(INDEX_PREFIX)):
            if key == CURRENT_INDEX_KEY or key.startswith(INDEX_VERSIONS_PREFIX) or key.count("/") < 2:
                continue
            if key.startswith(INDEX_SEGMENTS_PREFIX):
                name = key[len(INDEX_SEGMENTS_PREFIX):].split("/", 1)[0]
                prefix = index_segment_prefix(name)
                born = _segment_time(name)
                if prefix in referenced or born is None or now - born < ORPHAN_GRACE:
                    continue
            else:  # a version folder from before segments
                prefix = index_version_prefix(key[len(INDEX_PREFIX):].split("/", 1)[0])
                if prefix in referenced:
                    continue
            store.delete(key)
    except Exception as err:  # a reader may still hold a file, or a writer raced us: the next publish retries
        log.debug("index prune incomplete: %s", err)


# ----------------------------------------------------------------------------- full build


def build_index(store: ObjectStore, con, exact_max: int, model: str | None = None) -> dict:
    """Snapshot the whole `assets` view of a DuckDB connection as new segments; returns the manifest.

    The full rebuild (a model change, a repair). Batches indexed while it ran stay on top of it.
    """
    head = read_head(store)
    previous = head.get("low_watermark") if head else None
    seen = {s["name"] for s in head["segments"]} if head else set()
    # The batches are read before the rows (a local table is globbed anew by every query): a
    # batch landing in between may be in the snapshot before the low watermark passes it, which
    # is harmless, but is never passed by the low watermark while missing from the snapshot.
    after = "WHERE batch > $after" if previous else ""
    in_table = {b for (b,) in con.execute(
        f"SELECT DISTINCT batch FROM assets_all {after}", {"after": previous} if previous else {}
    ).fetchall()}
    # A table written before a column existed (EXIF) lacks it: it is added as nulls.
    present = set(con.sql("SELECT * FROM assets").columns)
    cols = ", ".join(c for c in ITEM_COLUMNS if c in present)
    where = "" if model is None else "WHERE embedding_model = $model OR embedding IS NULL"
    params = {} if model is None else {"model": model}
    table: pa.Table = con.sql(
        f"SELECT {cols}, embedding FROM assets {where} ORDER BY uploaded_at DESC, id", params=params
    ).to_arrow_table()
    if model is None:
        model = _newest_model(table)
    table = _of_model(table, model)
    table = _drop_deleted(table, list_tombstones(store))
    items, vectors, valid = split_vectors(table)
    return write_index(store, items, vectors, valid, exact_max, model, in_table=in_table, _since=seen)


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
) -> dict:
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
    batches = set(pa.compute.unique(items.column("batch")).to_pylist()) - {None} if items.num_rows else set()

    def change(m: dict) -> dict:
        newer = [s for s in m["segments"] if _since is not None and s["name"] not in _since]
        low, pending = low_watermark, []
        if in_table is not None:
            low, pending = _advance(store, m.get("low_watermark"), (in_table | set(m.get("pending", []))))
        return {
            **m, "segments": [*entries, *newer], "removed": {}, "model": model,
            "watermark": max(batches | ({m["watermark"]} if newer and m.get("watermark") else set()), default=None),
            "low_watermark": low, "pending": pending,
        }

    return publish(store, change)


def _row_slices(valid: np.ndarray, rows: int, size: int) -> list[tuple[int, int, int, int]]:
    """(first row, end row, first vector, end vector) of consecutive slices of at most `size` rows
    (one empty slice for no rows); vector i belongs to the i-th row where `valid`."""
    before = np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])  # vectors before each row
    bounds = list(range(0, rows, size)) + [rows] if rows else [0, 0]
    return [(a, b, int(before[a]), int(before[b])) for a, b in zip(bounds, bounds[1:])]


def _newest_model(table: pa.Table) -> str | None:
    """Vectors are comparable only within one model: the newest row's (rows are newest first)."""
    with_vec = table.filter(pa.compute.is_valid(table.column("embedding")))
    return with_vec.column("embedding_model")[0].as_py() if with_vec.num_rows else None


def _of_model(table: pa.Table, model: str | None) -> pa.Table:
    if model is None:
        return table
    keep = pa.compute.or_(
        pa.compute.is_null(table.column("embedding")), pa.compute.equal(table.column("embedding_model"), model)
    )
    return table.filter(pa.compute.fill_null(keep, False))


def _deleted_rows(table: pa.Table, removed: Mapping[str, datetime]) -> np.ndarray:
    """Which rows a deletion hides: the id was deleted at or after the row's upload (a re-upload
    made after the delete is a new asset and stays)."""
    if not removed or not table.num_rows:
        return np.zeros(table.num_rows, bool)
    hit = np.asarray(pa.compute.is_in(table.column("id"), pa.array(sorted(removed))).to_numpy(zero_copy_only=False), bool)
    rows = np.flatnonzero(hit)
    if len(rows):
        sub = table.take(pa.array(rows)).select(["id", "uploaded_at"]).to_pylist()
        hit[rows] = [is_deleted(removed, r["id"], r["uploaded_at"]) for r in sub]
    return hit


def _drop_deleted(table: pa.Table, removed: Mapping[str, datetime]) -> pa.Table:
    gone = _deleted_rows(table, removed)
    return table.filter(pa.array(~gone)) if gone.any() else table


def removed_of(manifest: dict) -> dict[str, datetime]:
    """The manifest's removed ids with their deletion times (an old manifest's plain list: forever)."""
    removed = manifest.get("removed") or {}
    if isinstance(removed, list):
        return {i: datetime.max.replace(tzinfo=UTC) for i in removed}
    return {i: datetime.fromisoformat(when) for i, when in removed.items()}


def _removed_json(removed: Mapping[str, datetime]) -> dict[str, str]:
    return {i: when.isoformat() for i, when in sorted(removed.items())}


def _union(a: Mapping[str, datetime], b: Mapping[str, datetime]) -> dict[str, datetime]:
    out = dict(a)
    for i, when in b.items():
        out[i] = max(when, out.get(i, when))
    return out


# ----------------------------------------------------------------------------- low watermark


def advance_low_watermark(store: ObjectStore, previous: str | None, in_table: set[str]) -> str | None:
    """Move the low watermark forward over manifests, oldest first, while their batch is indexed."""
    return _advance(store, previous, in_table)[0]


def _advance(store: ObjectStore, previous: str | None, indexed: set[str]) -> tuple[str | None, list[str]]:
    """The new low watermark and the indexed batches after it (still to be passed)."""
    low = previous
    for batch in batches_after(store, after=previous):
        if batch in indexed:
            low = batch
        elif _holds_uploads(store, batch):
            break
        # Else a stray, unreadable or empty object: it holds nothing queued, so it does not stop
        # the watermark (stopping would make the API re-list everything after it forever), but
        # it never becomes the watermark either: a stray name sorting after every batch key
        # would hide all later batches.
    return low, sorted(b for b in indexed if low is None or b > low)


def _holds_uploads(store: ObjectStore, batch: str) -> bool:
    try:
        return bool(BatchManifest.model_validate_json(store.get(manifest_key(batch))).uploads)
    except (KeyNotFound, ValueError):
        return False


# ----------------------------------------------------------------------------- incremental


def update_index(store: ObjectStore, con, batch: str, exact_max: int) -> dict:
    """Add one batch's table rows to the index as a new segment (then merge if segments piled up)."""
    present = set(con.sql("SELECT * FROM assets_all LIMIT 0").columns)
    cols = ", ".join(c for c in ITEM_COLUMNS if c in present)
    # The batch's own rows only; a redelivered id twice in one batch keeps the row the view keeps.
    rows = con.sql(
        f"""SELECT {cols}, embedding FROM (
              SELECT *, row_number() OVER (PARTITION BY id ORDER BY (error IS NULL) DESC, processed_at DESC) AS _r
              FROM assets_all WHERE batch = $batch
            ) WHERE _r = 1 ORDER BY uploaded_at DESC, id""",
        params={"batch": batch},
    ).to_arrow_table()
    return add_batch(store, batch, rows, exact_max, rebuild=lambda: build_index(store, con, exact_max))


def add_batch(store: ObjectStore, batch: str, rows: pa.Table, exact_max: int, rebuild: Callable[[], dict] | None = None) -> dict:
    """Publish a version with `rows` (one batch, with `embedding`) as a new segment; returns the manifest."""
    head = read_head(store)
    model = head.get("model") if head else None
    batch_model = _newest_model(rows.sort_by([("processed_at", "descending")])) if rows.num_rows else None
    if model is not None and batch_model is not None and batch_model != model and rebuild is not None:
        # Vectors of two models do not compare: the whole index follows the newest model.
        log.info("index: batch %s embedded with %s, index with %s: full rebuild", batch, batch_model, model)
        return rebuild()
    rows = _of_model(rows, model or batch_model)
    gone = read_tombstones(store, rows.column("id").to_pylist())
    rows = _drop_deleted(rows, gone)
    items, vectors, valid = split_vectors(rows)
    entry = write_segment(store, items, vectors, valid, exact_max)

    def change(m: dict) -> dict:
        indexed = set(m.get("pending", []))
        # A batch at or before the newest indexed one may be a re-run: its rows in older segments are stale.
        if m.get("watermark") and batch <= m["watermark"]:
            entry["replaces"] = [batch]
        low, pending = _advance(store, m.get("low_watermark"), indexed | {batch})
        return {
            **m, "segments": [*m["segments"], entry], "model": m.get("model") or batch_model,
            "removed": _removed_json(_union(removed_of(m), gone)),
            "watermark": max(filter(None, [m.get("watermark"), batch])),
            "low_watermark": low, "pending": pending,
        }

    current = publish(store, change)
    merged = merge_segments(store, exact_max)
    return merged or current


def remove_from_index(store: ObjectStore, ids: "Iterable[str] | Mapping[str, datetime]") -> int:
    """Publish a version that no longer serves these ids (deleted assets); returns how many were
    newly removed. With deletion times (id -> deleted_at), a row uploaded after its id's deletion
    (the same bytes uploaded again) stays; plain ids hide every upload made until now."""
    plain = not isinstance(ids, Mapping)
    if plain:
        now = datetime.now(UTC)
        ids = {i: now for i in ids}
    added = 0

    def change(m: dict) -> dict | None:
        nonlocal added
        before = removed_of(m)
        fresh = {i: w for i, w in ids.items() if i not in before or (not plain and before[i] < w)}
        added = len(fresh)
        if not added or not m["segments"]:
            return None
        return {**m, "removed": _removed_json(_union(before, fresh))}

    publish(store, change)
    return added


def _tier(rows: int) -> int:
    t, size = 0, TIER_BASE_ROWS * MERGE_FACTOR
    while rows >= size:
        t, size = t + 1, size * MERGE_FACTOR
    return t


def _merge_run(segments: list[dict]) -> int:
    """How many of the newest segments to merge now (0: none): MERGE_FACTOR of one tier below the cap."""
    if len(segments) < MERGE_FACTOR:
        return 0
    tail = segments[-MERGE_FACTOR:]
    tiers = {_tier(s["rows"]) for s in tail}
    if len(tiers) != 1 or sum(s["rows"] for s in tail) > MAX_MERGED_ROWS or any(s["rows"] >= MAX_MERGED_ROWS for s in tail):
        return 0
    return MERGE_FACTOR


def merge_segments(store: ObjectStore, exact_max: int) -> dict | None:
    """Merge the newest segments while MERGE_FACTOR of one tier pile up; returns the last manifest published."""
    published = None
    while True:
        head = read_head(store)
        n = _merge_run(head["segments"]) if head else 0
        if not n:
            return published
        parts = head["segments"][-n:]
        removed = removed_of(head)
        segs = [_load_segment(store, s) for s in parts]
        alive = _resolve(segs, parts, removed)
        tables, vecs, valids = [], [], []
        for seg, keep in zip(segs, alive):
            t = seg.items.filter(pa.array(keep))
            vr = t.column("vector_row").to_numpy()
            tables.append(t.drop(["vector_row"]))
            vecs.append(np.asarray(seg.vectors[vr[vr >= 0]]) if len(seg.vectors) else np.zeros((0, 0), np.float32))
            valids.append(vr >= 0)
        items = pa.concat_tables(tables, promote_options="default")
        order = pa.compute.sort_indices(items, [("uploaded_at", "descending"), ("id", "ascending")]).to_numpy()
        valid = np.concatenate(valids)
        dims = {v.shape[1] for v in vecs if len(v)}
        allv = np.concatenate([v for v in vecs if len(v)]) if dims else np.zeros((0, 0), np.float32)
        # Vector rows follow the item order: vector i of `allv` belongs to the i-th valid item before sorting.
        vec_of_item = np.where(valid, np.cumsum(valid) - 1, -1)[order]
        entry = write_segment(store, items.take(pa.array(order)), allv[vec_of_item[vec_of_item >= 0]] if dims else allv,
                              valid[order], exact_max)
        entry["replaces"] = sorted({b for s in parts for b in s.get("replaces", [])})
        names = [s["name"] for s in parts]

        def change(m: dict) -> dict | None:
            have = [s["name"] for s in m["segments"]]
            try:
                at = have.index(names[0])
            except ValueError:
                return None  # merged by another writer meanwhile
            if have[at:at + n] != names:
                return None
            segments = m["segments"][:at] + [entry] + m["segments"][at + n:]
            out = {**m, "segments": segments}
            if len(segments) == 1:  # every row was resolved against the set: it is done
                now = removed_of(m)  # deletions published meanwhile stay
                out["removed"] = _removed_json({i: w for i, w in now.items() if removed.get(i) != w})
            return out

        result = publish(store, change)
        if result is None:  # another writer merged these meanwhile
            return published
        published = result


# ----------------------------------------------------------------------------- read


class Rows:
    """The items of a snapshot, kept columnar in Arrow; a row becomes a dict only when asked for.

    At a million assets a list of dicts costs gigabytes; a page or a top-k needs a few dozen rows.
    """

    def __init__(self, table: pa.Table):
        self.table = table.combine_chunks()
        self.ids: list[str] = self.table.column("id").to_pylist()
        self.vector_row = self.table.column("vector_row").to_numpy().astype(np.int64)
        us = pa.compute.cast(self.table.column("uploaded_at"), pa.int64()).to_numpy(zero_copy_only=False)
        self.uploaded_ts = np.nan_to_num(us.astype(np.float64) / 1e6)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict:
        row = self.table.slice(int(i), 1).to_pylist()[0]
        row.pop("_seg", None)
        return row

    @classmethod
    def from_dicts(cls, rows: list[dict]) -> "Rows":
        return cls(pa.Table.from_pylist(rows))


# Up to this many vectors a segment is scanned in float32 by numpy; above, the int8 scan (a quarter
# of the bytes) with exact re-scoring. At 1M rows the 4,096-row tier segments took ~0.9 ms each in
# float32: the int8 scan cut the query's p50 from 21 to 16 ms at the same recall (bench/NOTES.md).
NUMPY_EXACT_MAX = 1_024


class Segment:
    """One loaded segment: its items (newest first), vectors, and the approximate index when it has one.

    Immutable, so a new snapshot reuses the segments the previous one had loaded.
    """

    def __init__(self, name: str, items: pa.Table, vectors: np.ndarray, hnsw=None):
        self.name = name
        self.items = items.combine_chunks()
        self.ids = self.items.column("id").to_pylist()
        self.vectors = vectors
        self.hnsw = hnsw
        vr = self.items.column("vector_row").to_numpy().astype(np.int64)
        self.row_of_vector = np.flatnonzero(vr >= 0).astype(np.int64)  # vector i belongs to items row row_of_vector[i]
        self._quantized: np.ndarray | None = None
        self._row_of_id: dict[str, int] | None = None
        self._lock = threading.Lock()

    @property
    def row_of_id(self) -> dict[str, int]:
        """Item row of each id, built once per segment (segments outlive snapshots)."""
        if self._row_of_id is None:
            self._row_of_id = {asset_id: i for i, asset_id in enumerate(self.ids)}
        return self._row_of_id

    @property
    def quantized(self) -> np.ndarray:
        with self._lock:
            if self._quantized is None:
                self._quantized = quantize(self.vectors)
            return self._quantized

    def candidates(
        self, q: np.ndarray, want: int, dead: np.ndarray | None, threads: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to `want` live vector rows nearest to `q` with their exact scores (unsorted).

        `threads` is for the exact int8 scan (0: every core); a graph search is one thread.
        """
        n = len(self.vectors)
        ndead = int(dead.sum()) if dead is not None else 0
        if n - ndead <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        want = min(want, n - ndead)
        if self.hnsw is None and n <= NUMPY_EXACT_MAX:
            scores = self.vectors @ q
            if ndead:
                scores = np.where(dead, -np.inf, scores)
            rows = np.argpartition(-scores, want - 1)[:want] if want < n else np.arange(n)
            rows = rows[np.isfinite(scores[rows])]
            return rows, scores[rows]
        # Ask for the removed rows too, then drop them: the result still holds `want` live ones.
        fetch = min(n, want + ndead)
        while True:
            if self.hnsw is not None:
                with self._lock:
                    matches = self.hnsw.search(q, max(fetch, HNSW_CANDIDATES))
                rows = np.asarray(matches.keys, dtype=np.int64)
            else:
                # Exact scan of int8 vectors (SIMD, both cores), then exact f32 re-scoring of a
                # generous candidate set: recall stays ~1.0 at a quarter of the bytes scanned.
                from usearch.index import MetricKind
                from usearch.index import search as usearch_exact

                cand = min(max(fetch * 8, 128), n)
                found = usearch_exact(
                    self.quantized, quantize(q[None, :])[0], cand, MetricKind.Cos, exact=True, threads=threads
                )
                rows = np.asarray(found.keys, dtype=np.int64).ravel()
            if ndead:
                rows = rows[~dead[rows]]
            if len(rows) >= want or fetch >= n:
                break
            fetch = min(n, fetch * 4)
        # Re-score exactly from the stored vectors: scores are true cosines, order is exact.
        return rows, np.asarray(self.vectors[rows]) @ q


_search_threads: ThreadPoolExecutor | None = None
_search_threads_lock = threading.Lock()


def _search_pool() -> ThreadPoolExecutor:
    """The process's threads for searching one query's segments side by side (one per core, up to 4)."""
    global _search_threads
    with _search_threads_lock:
        if _search_threads is None:
            _search_threads = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="dam-search")
        return _search_threads


@dataclass
class Snapshot:
    """One loaded index version: live items newest first, their segments' vectors, and the id lookup."""

    version: str
    model: str | None
    watermark: str | None
    items: Rows  # live rows of every segment, newest first; `_seg` and `vector_row` locate the vector
    segments: list[Segment]
    dead: list[np.ndarray | None]  # per segment, per vector row: superseded or removed
    item_of: list[np.ndarray]  # per segment, per vector row: its position in `items` (-1 when dead)
    by_id: "IdLookup"
    low_watermark: str | None = None  # queued uploads can only be in manifests after this batch
    seq: int = 0
    built_at: str | None = None  # ISO time the version was published (its age, for metrics)

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def vector_count(self) -> int:
        return int(sum(len(s.vectors) - (int(d.sum()) if d is not None else 0) for s, d in zip(self.segments, self.dead)))

    @property
    def dim(self) -> int:
        return max((s.vectors.shape[1] for s in self.segments if len(s.vectors)), default=0)

    @property
    def hnsw(self):
        """The largest segment's approximate index, if any segment has one."""
        graphs = [s for s in self.segments if s.hnsw is not None]
        return max(graphs, key=lambda s: len(s.vectors)).hnsw if graphs else None

    def get(self, asset_id: str) -> dict | None:
        i = self.by_id.get(asset_id)
        return None if i is None else self.items[i]

    def vector_of(self, asset_id: str) -> np.ndarray | None:
        i = self.by_id.get(asset_id)
        if i is None or self.items.vector_row[i] < 0:
            return None
        return self.segments[self.items.seg[i]].vectors[self.items.vector_row[i]]

    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> list[tuple[dict, float]]:
        """Top-k items by cosine similarity to a normalized query vector, best first."""
        if self.vector_count == 0 or k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has dimension {q.shape[0]}, the index {self.dim}")
        want = k + (1 if exclude else 0)
        work = [(seg, dead, item_of) for seg, dead, item_of in zip(self.segments, self.dead, self.item_of) if len(seg.vectors)]
        threads = 0 if len(work) == 1 else 1  # several segments: the cores go to segments side by side

        def one(part) -> tuple[np.ndarray, np.ndarray]:
            seg, dead, item_of = part
            rows, s = seg.candidates(q, want, dead, threads)
            return item_of[rows], s

        if len(work) > 1:
            # usearch and numpy release the GIL: the segments are searched in parallel, this
            # thread taking the first. Results keep the segments' order (ties stay deterministic).
            later = [_search_pool().submit(one, part) for part in work[1:]]
            found = [one(work[0])] + [f.result() for f in later]
        else:
            found = [one(part) for part in work]
        pos = np.concatenate([p for p, _ in found])
        scores = np.concatenate([s for _, s in found]).astype(np.float32)
        order = np.lexsort((pos, -scores))  # best first; ties by listing order
        out = []
        for j in order:
            row = int(pos[j])
            if self.items.ids[row] == exclude:
                continue
            out.append((self.items[row], float(scores[j])))
            if len(out) == k:
                break
        return out


class IdLookup:
    """id -> position in a snapshot's items, through each segment's own id table (no dict of every id per version)."""

    def __init__(self, segments: list[Segment], positions: list[np.ndarray], size: int):
        self.segments, self.positions, self.size = segments, positions, size

    def get(self, asset_id: str, default=None):
        for seg, pos in zip(reversed(self.segments), reversed(self.positions)):
            r = seg.row_of_id.get(asset_id)
            if r is not None and pos[r] >= 0:
                return int(pos[r])
        return default

    def __contains__(self, asset_id) -> bool:
        return self.get(asset_id) is not None

    def __getitem__(self, asset_id: str) -> int:
        i = self.get(asset_id)
        if i is None:
            raise KeyError(asset_id)
        return i

    def __len__(self) -> int:
        return self.size


def quantize(vectors: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Unit vectors to int8 (components of unit vectors lie in [-1, 1]), in chunks: no full-size temporaries."""
    out = np.empty(vectors.shape, dtype=np.int8)
    for i in range(0, len(vectors), chunk):
        out[i:i + chunk] = np.clip(np.rint(np.asarray(vectors[i:i + chunk]) * 127.0), -127, 127)
    return out


def _load_segment(store: ObjectStore, entry: dict) -> Segment:
    prefix = entry["prefix"]
    items = with_item_columns(pq.read_table(io.BytesIO(store.get(prefix + "items.parquet"))))
    if isinstance(store, LocalStore):
        # Memory-mapped: the page cache holds the vectors, shared and reclaimable, not the heap.
        vectors = np.load(store.path(prefix + "vectors.npy"), mmap_mode="r")
    else:
        vectors = np.load(io.BytesIO(store.get(prefix + "vectors.npy")))
    hnsw = None
    if entry.get("hnsw"):
        from usearch.index import Index

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "hnsw.usearch")
            with open(path, "wb") as f:
                f.write(store.get(prefix + "hnsw.usearch"))
            hnsw = Index.restore(path)
        # A saved graph does not keep its search-time expansion: restored, it would search at
        # usearch's default (64), where recall@10 of a big graph is far below the target.
        hnsw.expansion_search = expansion_search(len(vectors))
    return Segment(entry["name"], items, vectors, hnsw)


def _resolve(segs: list[Segment], entries: list[dict], removed: Mapping[str, datetime]) -> list[np.ndarray]:
    """Per segment, which item rows are live: the `assets` view's rule across segments (module docstring)."""
    n = [s.items.num_rows for s in segs]
    alive = [np.ones(k, bool) for k in n]
    # Rows of a batch that a later segment re-indexed are gone, whatever they held.
    later: set[str] = set()
    for i in range(len(segs) - 1, -1, -1):
        if later and n[i]:
            stale = pa.compute.is_in(segs[i].items.column("batch"), pa.array(sorted(later))).to_numpy(zero_copy_only=False)
            alive[i] &= ~np.asarray(stale, dtype=bool)
        later |= set(entries[i].get("replaces", []))
    if removed:
        for i, s in enumerate(segs):
            if n[i]:
                alive[i] &= ~_deleted_rows(s.items, removed)
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
        hit = pa.compute.is_in(segs[big].items.column("id"), pa.array(list(seen))).to_numpy(zero_copy_only=False)
        dup |= {segs[big].ids[r] for r in np.flatnonzero(hit)}
    if not dup:
        return alive
    dupes = pa.array(sorted(dup))
    best: dict[str, tuple] = {}
    for i, s in enumerate(segs):
        if not n[i]:
            continue
        hit = np.flatnonzero(alive[i] & pa.compute.is_in(s.items.column("id"), dupes).to_numpy(zero_copy_only=False))
        if not len(hit):
            continue
        sub = s.items.take(pa.array(hit)).select(["id", "error", "processed_at", "batch"]).to_pylist()
        for r, row in zip(hit, sub):
            alive[i][r] = False
            key = (row["error"] is None, row["processed_at"] or datetime.min.replace(tzinfo=UTC), row["batch"] or "", i)
            if row["id"] not in best or key > best[row["id"]][0]:
                best[row["id"]] = (key, i, int(r))
    for _, i, r in best.values():
        alive[i][r] = True
    return alive


def load_snapshot(store: ObjectStore, current: dict | None = None, reuse: Snapshot | None = None) -> Snapshot | None:
    """Load the newest version (or `current`), or None when no index was built yet.

    Segments that `reuse` (the snapshot served so far) already holds are not read again.
    """
    if current is None:
        current = read_head(store)
        if current is None:
            return None
    elif "segments" not in current:
        current = _legacy_manifest(current)
    known = {s.name: s for s in reuse.segments} if reuse is not None else {}
    entries = current["segments"]
    segs = [known.get(e["name"]) or _load_segment(store, e) for e in entries]
    alive = _resolve(segs, entries, removed_of(current))
    parts = []
    for i, (seg, keep) in enumerate(zip(segs, alive)):
        t = seg.items.append_column("_seg", pa.array(np.full(seg.items.num_rows, i, np.int32)))
        t = t.append_column("_row", pa.array(np.arange(seg.items.num_rows, dtype=np.int64)))
        parts.append(t.filter(pa.array(keep)))
    if parts:
        table = pa.concat_tables(parts, promote_options="default")
        if len(parts) > 1:
            table = table.take(pa.compute.sort_indices(table, [("uploaded_at", "descending"), ("id", "ascending")]))
    else:
        table = with_item_columns(schema(None).empty_table().drop(["embedding"])).append_column(
            "vector_row", pa.array([], pa.int64())).append_column("_seg", pa.array([], pa.int32())).append_column(
            "_row", pa.array([], pa.int64()))
    rows_in_seg = table.column("_row").to_numpy()
    items = Rows(table.drop(["_row"]))
    items.seg = table.column("_seg").to_numpy().astype(np.int64)
    dead, item_of, positions = [], [], []
    order = np.argsort(items.seg, kind="stable")
    bounds = np.searchsorted(items.seg[order], np.arange(len(segs) + 1))
    for i, (seg, keep) in enumerate(zip(segs, alive)):
        pos = np.full(seg.items.num_rows, -1, np.int64)
        mine = order[bounds[i]:bounds[i + 1]]
        pos[rows_in_seg[mine]] = mine
        positions.append(pos)
        of_vec = pos[seg.row_of_vector]
        item_of.append(of_vec)
        d = of_vec < 0
        dead.append(d if d.any() else None)
    return Snapshot(
        version=current["version"],
        seq=current.get("seq", 0),
        built_at=current.get("built_at"),
        model=current.get("model"),
        watermark=current.get("watermark"),
        low_watermark=current.get("low_watermark"),
        items=items,
        segments=segs,
        dead=dead,
        item_of=item_of,
        by_id=IdLookup(segs, positions, len(items)),
    )


class IndexHolder:
    """Holds the current snapshot and swaps to a new version when one is published (polling)."""

    def __init__(self, store: ObjectStore, poll_seconds: float = 5.0):
        self.store = store
        self.poll_seconds = poll_seconds
        self._snapshot: Snapshot | None = None
        self._version: str | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_swap: Callable[[Snapshot], None] | None = None  # told of each new snapshot (metrics)

    @property
    def snapshot(self) -> Snapshot | None:
        if self._thread is None and time.monotonic() - self._checked > self.poll_seconds:
            self.refresh()  # no background thread (tests, CLI): refresh lazily
        return self._snapshot

    def refresh(self) -> bool:
        """Load a new version if one was published; True when the snapshot changed."""
        with self._lock:
            self._checked = time.monotonic()
            try:
                current = read_head(self.store)
            except Exception as err:
                log.warning("index: cannot read %s: %s", CURRENT_INDEX_KEY, err)
                return False
            if current is None or current.get("version") == self._version:
                return False
            if self._snapshot is not None and current.get("seq", 0) and current["seq"] < self._snapshot.seq:
                return False  # never go back to an older version
            try:
                snap = load_snapshot(self.store, current, reuse=self._snapshot)
            except Exception as err:  # a pruned or half-visible version: keep the old one
                log.warning("index: cannot load version %s: %s", current.get("version"), err)
                return False
            self._snapshot, self._version = snap, current["version"]
            log.info("index: now serving version %s (%d items)", snap.version, snap.size)
            if self.on_swap is not None:
                self.on_swap(snap)
            return True

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.poll_seconds):
                self.refresh()

        self.refresh()
        self._thread = threading.Thread(target=loop, name="index-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def index_settings_model(settings: "Settings") -> str:
    return settings.dam_embedding_model
