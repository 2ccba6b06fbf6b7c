"""The search index: a versioned snapshot of the `assets` table with its vectors, built by the
pipeline as batches land and loaded by the API, which swaps to a new version without a restart.

Layout in the object store:
    index/CURRENT.json                 {"version": ..., "rows": n, "vectors": m, "model": ...,
                                        "watermark": newest batch in it, "low_watermark": see below}
    index/{version}/items.parquet      one row per asset (no embeddings), newest first
    index/{version}/vectors.npy        float32 (m, dim), L2-normalized, aligned with `vector_rows`
    index/{version}/hnsw.usearch       approximate index, only when m > DAM_EXACT_SEARCH_MAX

The low watermark is the newest manifest key K such that every manifest at or before K has its
batch in the table the snapshot was built from. Manifests after it may still hold uploads that
are not in the snapshot: the API lists those as queued. A newer batch indexed before an older
one therefore never hides the older one's uploads.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from dam_core.exif import EXIF_COLUMNS
from dam_core.layout import (
    CURRENT_INDEX_KEY,
    INDEX_PREFIX,
    index_file_key,
    index_version_prefix,
    manifest_key,
)
from dam_core.manifests import batches_after
from dam_core.messages import BatchManifest
from dam_core.store import KeyNotFound, LocalStore, ObjectStore
from dam_core.table import schema

if TYPE_CHECKING:
    from dam_core.settings import Settings

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3
ITEM_COLUMNS = [
    "id", "filename", "caption", "tags", "mime_type", "width", "height", "error",
    "uploaded_at", "processed_at", "batch", "embedding_model", *EXIF_COLUMNS,
]


# ----------------------------------------------------------------------------- build


def build_index(
    store: ObjectStore, con, exact_max: int, model: str | None = None, version: str | None = None
) -> dict:
    """Snapshot the `assets` view of a DuckDB connection into a new index version; returns CURRENT."""
    previous = _previous_low_watermark(store)
    # The batches are read before the rows (a local table is globbed anew by every query): a
    # batch landing in between may be in the snapshot before the low watermark passes it, which
    # is harmless, but is never passed by the low watermark while missing from the snapshot.
    after = "WHERE batch > $after" if previous else ""
    in_table = {b for (b,) in con.execute(
        f"SELECT DISTINCT batch FROM assets_all {after}", {"after": previous} if previous else {}
    ).fetchall()}
    low = advance_low_watermark(store, previous, in_table)
    # A table written before a column existed (EXIF) lacks it: it is added as nulls below.
    present = set(con.sql("SELECT * FROM assets").columns)
    cols = ", ".join(c for c in ITEM_COLUMNS if c in present)
    where = "" if model is None else "WHERE embedding_model = $model OR embedding IS NULL"
    params = {} if model is None else {"model": model}
    table: pa.Table = con.sql(
        f"SELECT {cols}, embedding FROM assets {where} ORDER BY uploaded_at DESC, id", params=params
    ).to_arrow_table()
    table = with_item_columns(table)
    if model is None:
        # Vectors are comparable only within one model: index the newest row's model.
        with_vec = table.filter(pa.compute.is_valid(table.column("embedding")))
        model = with_vec.column("embedding_model")[0].as_py() if with_vec.num_rows else None
        if model is not None:
            keep = pa.compute.or_(
                pa.compute.is_null(table.column("embedding")),
                pa.compute.equal(table.column("embedding_model"), model),
            )
            table = table.filter(keep)
    emb = table.column("embedding").combine_chunks()
    valid = np.asarray(emb.is_valid(), dtype=bool) if len(emb) else np.zeros(0, bool)
    vector_rows = np.flatnonzero(valid).astype(np.int64)
    if len(vector_rows):
        picked = emb.filter(pa.array(valid))
        dim = picked.type.list_size if pa.types.is_fixed_size_list(picked.type) else len(picked[0])
        vectors = np.array(picked.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.where(norms == 0, 1, norms)
    else:
        vectors = np.zeros((0, 0), np.float32)
    return write_index(store, table.drop(["embedding"]), vectors, valid, exact_max, model, version, low_watermark=low)


def with_item_columns(table: pa.Table) -> pa.Table:
    """``table`` with every ITEM_COLUMNS column: the ones it lacks (older tables, older snapshots) as nulls."""
    types = schema(None)
    for name in ITEM_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(types.field(name), pa.nulls(table.num_rows, types.field(name).type))
    return table


def _previous_low_watermark(store: ObjectStore) -> str | None:
    """Where the last build's low watermark stood; None (start from the first manifest) if unknown."""
    try:
        return json.loads(store.get(CURRENT_INDEX_KEY)).get("low_watermark")
    except KeyNotFound:
        return None


def advance_low_watermark(store: ObjectStore, previous: str | None, in_table: set[str]) -> str | None:
    """Move the low watermark forward over manifests, oldest first, while their batch is in the table."""
    low = previous
    for batch in batches_after(store, after=previous):
        if batch in in_table:
            low = batch
        elif _holds_uploads(store, batch):
            break
        # Else a stray, unreadable or empty object: it holds nothing queued, so it does not stop
        # the watermark (stopping would make the API re-list everything after it forever), but
        # it never becomes the watermark either: a stray name sorting after every batch key
        # would hide all later batches.
    return low


def _holds_uploads(store: ObjectStore, batch: str) -> bool:
    try:
        return bool(BatchManifest.model_validate_json(store.get(manifest_key(batch))).uploads)
    except (KeyNotFound, ValueError):
        return False


def write_index(
    store: ObjectStore,
    items: pa.Table,
    vectors: np.ndarray,
    valid: np.ndarray,
    exact_max: int,
    model: str | None,
    version: str | None = None,
    low_watermark: str | None = None,
) -> dict:
    """Write one index version (items newest first; vectors for the rows where `valid`), then CURRENT.

    `low_watermark` None means no manifest is known to be fully in the table: readers list
    queued uploads from the first manifest.
    """
    table = items
    items = items.append_column("vector_row", pa.array(
        np.where(valid, np.cumsum(valid) - 1, -1).astype(np.int64) if len(valid) else np.zeros(0, np.int64)
    ))
    version = version or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    buf = io.BytesIO()
    pq.write_table(items, buf, compression="zstd")
    store.put(index_file_key(version, "items.parquet"), buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, vectors)
    store.put(index_file_key(version, "vectors.npy"), buf.getvalue())
    hnsw = False
    if len(vectors) > exact_max:
        idx = _new_hnsw(vectors.shape[1])
        idx.add(np.arange(len(vectors), dtype=np.uint64), vectors)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "hnsw.usearch")
            idx.save(path)
            with open(path, "rb") as f:
                store.put(index_file_key(version, "hnsw.usearch"), f)
        hnsw = True
    current = {
        "version": version,
        "rows": items.num_rows,
        "vectors": int(len(vectors)),
        "dim": int(vectors.shape[1]) if len(vectors) else 0,
        "hnsw": hnsw,
        "model": model,
        "watermark": max(table.column("batch").to_pylist(), default=None) if items.num_rows else None,
        "low_watermark": low_watermark,
        "built_at": datetime.now(UTC).isoformat(),
    }
    # The pointer is written last: readers only ever see complete versions.
    store.put(CURRENT_INDEX_KEY, json.dumps(current).encode(), content_type="application/json")
    _prune(store, keep={version})
    return current


HNSW_EXPANSION_SEARCH = 96


def _new_hnsw(dim: int):
    from usearch.index import Index

    # f16 storage halves memory. HNSW is used only above DAM_EXACT_SEARCH_MAX; its recall is
    # measured by `python -m bench.search` (bench/RESULTS.md), not assumed.
    return Index(ndim=dim, metric="cos", dtype="f16", connectivity=16, expansion_add=128, expansion_search=HNSW_EXPANSION_SEARCH)


def _prune(store: ObjectStore, keep: set[str]) -> None:
    versions = sorted({k[len(INDEX_PREFIX):].split("/", 1)[0] for k in store.list(INDEX_PREFIX) if k.count("/") >= 2})
    for old in versions[:-KEEP_VERSIONS]:
        if old in keep:
            continue
        for key in list(store.list(index_version_prefix(old))):
            try:
                store.delete(key)
            except Exception:  # a reader may still hold it; the next build retries
                log.debug("could not prune %s", key)


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
        return self.table.slice(int(i), 1).to_pylist()[0]

    @classmethod
    def from_dicts(cls, rows: list[dict]) -> "Rows":
        return cls(pa.Table.from_pylist(rows))


@dataclass
class Snapshot:
    """One loaded index version: items newest first, vectors, and the id lookup."""

    version: str
    model: str | None
    watermark: str | None
    items: Rows
    vectors: np.ndarray
    vector_rows: np.ndarray  # vector i belongs to items[vector_rows[i]]
    by_id: dict[str, int]
    hnsw: object | None = None
    low_watermark: str | None = None  # queued uploads can only be in manifests after this batch
    quantized: np.ndarray | None = None  # int8 copy for the exact scan of larger tables
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if self.hnsw is None and len(self.vectors) > NUMPY_EXACT_MAX:
            self.quantized = quantize(self.vectors)

    @property
    def size(self) -> int:
        return len(self.items)

    def get(self, asset_id: str) -> dict | None:
        i = self.by_id.get(asset_id)
        return None if i is None else self.items[i]

    def vector_of(self, asset_id: str) -> np.ndarray | None:
        i = self.by_id.get(asset_id)
        if i is None or self.items.vector_row[i] < 0:
            return None
        return self.vectors[self.items.vector_row[i]]

    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> list[tuple[dict, float]]:
        """Top-k items by cosine similarity to a normalized query vector, best first."""
        if len(self.vectors) == 0 or k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.vectors.shape[1]:
            raise ValueError(f"query has dimension {q.shape[0]}, the index {self.vectors.shape[1]}")
        want = min(k + (1 if exclude else 0), len(self.vectors))
        if self.hnsw is not None:
            with self._lock:
                matches = self.hnsw.search(q, want)
            rows = np.asarray(matches.keys, dtype=np.int64)
            # Re-score exactly from the stored vectors: scores are true cosines, order is exact.
            scores = self.vectors[rows] @ q
        elif self.quantized is not None:
            # Exact scan of int8 vectors (SIMD, both cores), then exact f32 re-scoring of a
            # generous candidate set: recall stays ~1.0 at a quarter of the bytes scanned.
            from usearch.index import MetricKind
            from usearch.index import search as usearch_exact

            cand = min(max(want * 8, 128), len(self.vectors))
            found = usearch_exact(self.quantized, quantize(q[None, :])[0], cand, MetricKind.Cos, exact=True, threads=0)
            rows = np.asarray(found.keys, dtype=np.int64).ravel()
            scores = self.vectors[rows] @ q
        else:
            all_scores = self.vectors @ q
            rows = np.argpartition(-all_scores, want - 1)[:want] if want < len(all_scores) else np.arange(len(all_scores))
            scores = all_scores[rows]
        order = np.argsort(-scores, kind="stable")
        out = []
        for j in order:
            row = int(self.vector_rows[rows[j]])
            if self.items.ids[row] == exclude:
                continue
            out.append((self.items[row], float(scores[j])))
            if len(out) == k:
                break
        return out


NUMPY_EXACT_MAX = 20_000


def quantize(vectors: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Unit vectors to int8 (components of unit vectors lie in [-1, 1]), in chunks: no full-size temporaries."""
    out = np.empty(vectors.shape, dtype=np.int8)
    for i in range(0, len(vectors), chunk):
        out[i:i + chunk] = np.clip(np.rint(np.asarray(vectors[i:i + chunk]) * 127.0), -127, 127)
    return out


def load_snapshot(store: ObjectStore, current: dict | None = None) -> Snapshot | None:
    """Load the version CURRENT points at, or None when no index was built yet."""
    if current is None:
        try:
            current = json.loads(store.get(CURRENT_INDEX_KEY))
        except KeyNotFound:
            return None
    version = current["version"]
    items = Rows(with_item_columns(pq.read_table(io.BytesIO(store.get(index_file_key(version, "items.parquet"))))))
    vectors_key = index_file_key(version, "vectors.npy")
    if isinstance(store, LocalStore):
        # Memory-mapped: the page cache holds the vectors, shared and reclaimable, not the heap.
        vectors = np.load(store.path(vectors_key), mmap_mode="r")
    else:
        vectors = np.load(io.BytesIO(store.get(vectors_key)))
    vector_rows = np.flatnonzero(items.vector_row >= 0).astype(np.int64)
    hnsw = None
    if current.get("hnsw"):
        from usearch.index import Index

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "hnsw.usearch")
            with open(path, "wb") as f:
                f.write(store.get(index_file_key(version, "hnsw.usearch")))
            hnsw = Index.restore(path)
        # A saved graph does not keep its search-time expansion: restored, it searches at
        # usearch's default (64) and recall drops (0.55 vs 0.67 at 20k clustered vectors).
        hnsw.expansion_search = HNSW_EXPANSION_SEARCH
    return Snapshot(
        version=version,
        model=current.get("model"),
        watermark=current.get("watermark"),
        # A pointer written before the low watermark existed: the old rule (after the newest batch).
        low_watermark=current["low_watermark"] if "low_watermark" in current else current.get("watermark"),
        items=items,
        vectors=vectors,
        vector_rows=vector_rows,
        by_id={asset_id: i for i, asset_id in enumerate(items.ids)},
        hnsw=hnsw,
    )


class IndexHolder:
    """Holds the current snapshot and swaps to a new version when CURRENT changes (polling)."""

    def __init__(self, store: ObjectStore, poll_seconds: float = 5.0):
        self.store = store
        self.poll_seconds = poll_seconds
        self._snapshot: Snapshot | None = None
        self._version: str | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def snapshot(self) -> Snapshot | None:
        if self._thread is None and time.monotonic() - self._checked > self.poll_seconds:
            self.refresh()  # no background thread (tests, CLI): refresh lazily
        return self._snapshot

    def refresh(self) -> bool:
        """Load a new version if CURRENT moved; True when the snapshot changed."""
        with self._lock:
            self._checked = time.monotonic()
            try:
                current = json.loads(self.store.get(CURRENT_INDEX_KEY))
            except KeyNotFound:
                return False
            except Exception as err:
                log.warning("index: cannot read %s: %s", CURRENT_INDEX_KEY, err)
                return False
            if current.get("version") == self._version:
                return False
            try:
                snap = load_snapshot(self.store, current)
            except Exception as err:  # a pruned or half-visible version: keep the old one
                log.warning("index: cannot load version %s: %s", current.get("version"), err)
                return False
            self._snapshot, self._version = snap, current["version"]
            log.info("index: now serving version %s (%d items)", snap.version, snap.size)
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
