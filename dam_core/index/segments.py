"""Index segments: immutable files of rows and their vectors, written once and loaded by name.

    index/segments/{segment}/items.parquet  one row per asset (no embeddings), newest first
    index/segments/{segment}/vectors.npy    float32 (m, dim), L2-normalized, one per row with a vector
    index/segments/{segment}/hnsw.usearch   approximate index, only when m > DAM_EXACT_SEARCH_MAX

Here too: the HNSW tuning, and how one loaded segment finds its nearest vectors (numpy, an int8
scan, or the graph, each re-scored exactly from the float32 vectors).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from usearch.index import Index, MetricKind
from usearch.index import search as usearch_exact

from dam_core.exif import EXIF_COLUMNS
from dam_core.index.manifest import SegmentEntry, new_segment_name
from dam_core.layout import index_segment_prefix
from dam_core.store import LocalStore, ObjectStore
from dam_core.table import schema

ITEM_COLUMNS = [
    "id",
    "filename",
    "caption",
    "tags",
    "mime_type",
    "width",
    "height",
    "error",
    "uploaded_at",
    "processed_at",
    "batch",
    "caption_model",
    "embedding_model",
    *EXIF_COLUMNS,
    "ocr_text",  # text search reads it from the snapshot (null in segments written before OCR)
]

# ----------------------------------------------------------------------------- HNSW tuning

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

# Up to this many vectors a segment is scanned in float32 by numpy; above, the int8 scan (a quarter
# of the bytes) with exact re-scoring. At 1M rows the 4,096-row tier segments took ~0.9 ms each in
# float32: the int8 scan cut the query's p50 from 21 to 16 ms at the same recall (bench/NOTES.md).
NUMPY_EXACT_MAX = 1_024


def expansion_search(vectors: int) -> int:
    """The search-time expansion for a graph of this many vectors."""
    return HNSW_EXPANSION_SEARCH if vectors >= HNSW_SMALL_GRAPH else HNSW_EXPANSION_SEARCH_SMALL


def _new_hnsw(dim: int) -> Index:
    # int8 storage: the candidates are re-scored from the float32 vectors, so the graph's own
    # distances only have to rank them. Against f16 (bench/NOTES.md, session 12; CLIP-like vectors,
    # text-like queries, one thread, AVX2): a 262,144-vector graph at ef 256 searched in 1.75 against
    # 2.12 ms p50 at recall@10 0.958 against 0.953 and built in 156 against 223 s; a 32,768 one at
    # ef 64 in 0.27 against 0.38 ms (recall 0.906 against 0.915); half the memory. Segments written
    # before keep the type their file records.
    return Index(
        ndim=dim,
        metric="ip",
        dtype="i8",
        connectivity=HNSW_CONNECTIVITY,
        expansion_add=HNSW_EXPANSION_ADD,
        expansion_search=HNSW_EXPANSION_SEARCH,
    )


def quantize(vectors: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Unit vectors to int8 (components of unit vectors lie in [-1, 1]), in chunks: no full-size temporaries."""
    out = np.empty(vectors.shape, dtype=np.int8)
    for i in range(0, len(vectors), chunk):
        out[i : i + chunk] = np.clip(np.rint(np.asarray(vectors[i : i + chunk]) * 127.0), -127, 127)
    return out


# ----------------------------------------------------------------------------- rows -> segment files


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


def write_segment(
    store: ObjectStore, items: pa.Table, vectors: np.ndarray, valid: np.ndarray, exact_max: int
) -> SegmentEntry:
    """Write one immutable segment (items newest first; vectors for the rows where `valid`); returns its entry."""
    name = new_segment_name()
    prefix = index_segment_prefix(name)
    items = items.append_column(
        "vector_row",
        pa.array(np.where(valid, np.cumsum(valid) - 1, -1).astype(np.int64) if len(valid) else np.zeros(0, np.int64)),
    )
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
    return SegmentEntry(
        name=name,
        prefix=prefix,
        rows=items.num_rows,
        vectors=int(len(vectors)),
        dim=int(vectors.shape[1]) if len(vectors) else 0,
        hnsw=hnsw,
    )


# ----------------------------------------------------------------------------- a loaded segment


class Segment:
    """One loaded segment: its items (newest first), vectors, and the approximate index when it has one.

    Immutable, so a new snapshot reuses the segments the previous one had loaded.
    """

    def __init__(self, name: str, items: pa.Table, vectors: np.ndarray, hnsw: Index | None = None):
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
    def search_cost(self) -> float:
        """A query's expected time here, in microseconds (the order segments are searched in, not a promise).

        A graph search follows ef candidates over about log2(n) layers' hops; an exact scan reads every
        row. Fitted on a 2-core EPYC at 1M rows (bench/NOTES.md, session 13): a 262,144-vector graph
        at ef 256 ~2.2 ms, a 32,768 one at ef 64 ~0.46 ms, a 4,096-row scan ~0.55 ms.
        """
        n = len(self.vectors)
        if self.hnsw is not None:
            return 0.48 * int(self.hnsw.expansion_search) * math.log2(max(n, 2))
        return 100.0 + 0.134 * n

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
            if dead is not None and ndead:
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
                cand = min(max(fetch * 8, 128), n)
                found = usearch_exact(
                    self.quantized, quantize(q[None, :])[0], cand, MetricKind.Cos, exact=True, threads=threads
                )
                rows = np.asarray(found.keys, dtype=np.int64).ravel()
            if dead is not None and ndead:
                rows = rows[~dead[rows]]
            if len(rows) >= want or fetch >= n:
                break
            fetch = min(n, fetch * 4)
        # Re-score exactly from the stored vectors: scores are true cosines, order is exact.
        return rows, np.asarray(self.vectors[rows]) @ q


def load_segment(store: ObjectStore, entry: SegmentEntry) -> Segment:
    """Read one segment's files (its vectors memory-mapped from a local store)."""
    prefix = entry.prefix
    items = with_item_columns(pq.read_table(io.BytesIO(store.get(prefix + "items.parquet"))))
    if isinstance(store, LocalStore):
        # Memory-mapped: the page cache holds the vectors, shared and reclaimable, not the heap.
        vectors = np.load(store.path(prefix + "vectors.npy"), mmap_mode="r")
    else:
        vectors = np.load(io.BytesIO(store.get(prefix + "vectors.npy")))
    hnsw = None
    if entry.hnsw:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "hnsw.usearch")
            with open(path, "wb") as f:
                f.write(store.get(prefix + "hnsw.usearch"))
            hnsw = Index.restore(path)
        if hnsw is None:  # usearch found no index header in the file
            raise ValueError(f"segment {entry.name}: hnsw.usearch is not a usearch index")
        # A saved graph does not keep its search-time expansion: restored, it would search at
        # usearch's default (64), where recall@10 of a big graph is far below the target.
        # (usearch defines the setter apart from the getter, so mypy sees a read-only property.)
        hnsw.expansion_search = expansion_search(len(vectors))  # type: ignore[misc]
    return Segment(entry.name, items, vectors, hnsw)
