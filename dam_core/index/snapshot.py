"""One loaded index version, as the API serves it: live rows newest first, lookup by id, vector search."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from usearch.index import Index

from dam_core.index.manifest import IndexManifest, read_head
from dam_core.index.resolve import live_rows
from dam_core.index.segments import Segment, load_segment, with_item_columns
from dam_core.store import ObjectStore
from dam_core.table import schema


class Rows:
    """The items of a snapshot, kept columnar in Arrow; a row becomes a dict only when asked for.

    At a million assets a list of dicts costs gigabytes; a page or a top-k needs a few dozen rows.
    """

    def __init__(self, table: pa.Table):
        self.table = table.combine_chunks()
        self.ids: list[str] = self.table.column("id").to_pylist()
        self.vector_row = self.table.column("vector_row").to_numpy().astype(np.int64)
        us = pc.cast(self.table.column("uploaded_at"), pa.int64()).to_numpy(zero_copy_only=False)
        self.uploaded_ts = np.nan_to_num(us.astype(np.float64) / 1e6)
        self.seg = np.zeros(len(self.ids), np.int64)  # the segment of each row (set by load_snapshot)
        # The rows with image text (OCR), and that text lowered: made on the first text query.
        self._texts: tuple[np.ndarray, pa.ChunkedArray | pa.Array] | None = None
        self._lower_lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def _with_text(self) -> tuple[np.ndarray, pa.ChunkedArray | pa.Array]:
        with self._lower_lock:
            if self._texts is None:  # once per snapshot, for every query after
                lower = pc.utf8_lower(self.table.column("ocr_text").fill_null(""))
                rows = np.flatnonzero(np.asarray(pc.greater(pc.utf8_length(lower), 0), dtype=bool))
                self._texts = (rows, pc.take(lower, pa.array(rows)))
            return self._texts

    def text_filter(self, words: list[str]) -> np.ndarray:
        """Which rows' `ocr_text` holds every word (lower case; a substring match, so `invoice` finds `invoices`).

        Only rows with text are looked at, and each word only among the rows that held the words
        before it: most images hold no text, and a query's later words search a handful of rows.
        At 1M rows, 10% with text, a three-word query: 21.6 -> 6.7 ms; with no text anywhere
        (OCR off), nothing is scanned, where every `/search` (mode `both`) made three passes.
        """
        if not words:
            return np.ones(len(self), dtype=bool)
        rows, texts = self._with_text()
        for word in words:
            if not len(rows):
                break
            hit = np.asarray(pc.match_substring(texts, word.lower()).fill_null(False), dtype=bool)
            rows, texts = rows[hit], pc.filter(texts, pa.array(hit))
        found = np.zeros(len(self), dtype=bool)
        found[rows] = True
        return found

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.at([i])[0]

    def at(self, positions: list[int]) -> list[dict[str, Any]]:
        """These rows as dicts, in this order: one `take` (a top-k's rows one slice each cost ~3x more)."""
        if not positions:
            return []
        rows: list[dict[str, Any]] = self.table.take(pa.array(positions, pa.int64())).to_pylist()
        for row in rows:
            row.pop("_seg", None)
        return rows


_search_threads: ThreadPoolExecutor | None = None
_search_threads_lock = threading.Lock()


def _search_helpers() -> int:
    """Threads that join a query's own thread in searching its segments: one per other core, up to 3."""
    return max(0, min(3, (os.cpu_count() or 1) - 1))


def _search_pool() -> ThreadPoolExecutor:
    """The process's threads that help search one query's segments side by side."""
    global _search_threads
    with _search_threads_lock:
        if _search_threads is None:
            _search_threads = ThreadPoolExecutor(max(1, _search_helpers()), thread_name_prefix="dam-search")
        return _search_threads


T = TypeVar("T")


def run_shared(tasks: list[Callable[[], T]], helpers: int, order: list[int] | None = None) -> list[T]:
    """Every task's result, in the tasks' order: this thread and up to `helpers` pool threads take the
    next task from one shared queue until it is empty. `order`: the tasks' indices in the order they
    are taken (put the costliest first); default as listed.

    One hand-over per helper, not per task: at 1M rows (15 segments) a query handed to the pool
    segment by segment took 9.2 ms p50, drained this way by two threads 6.7 ms (bench/NOTES.md,
    session 13). A helper that starts late (the pool busy with other queries) finds nothing left;
    this thread waits only for the tasks a helper took.
    """
    results: list[Any] = [None] * len(tasks)
    failed: list[BaseException] = []
    queue = iter(range(len(tasks)) if order is None else order)
    lock = threading.Condition()
    left = len(tasks)

    def drain() -> None:
        nonlocal left
        while True:
            with lock:
                i = next(queue, None)
            if i is None:
                return
            try:
                results[i] = tasks[i]()
            except BaseException as err:  # re-raised on the query's thread
                failed.append(err)
            with lock:
                left -= 1
                if not left:
                    lock.notify_all()

    for _ in range(min(helpers, len(tasks) - 1)):
        try:
            _search_pool().submit(drain)
        except RuntimeError:  # the pool is shut down (the process is exiting): this thread does it all
            break
    drain()
    with lock:
        while left:
            lock.wait()
    if failed:
        raise failed[0]
    return results


class IdLookup:
    """id -> position in a snapshot's items, through each segment's own id table (no dict of every id per version)."""

    def __init__(self, segments: list[Segment], positions: list[np.ndarray], size: int):
        self.segments, self.positions, self.size = segments, positions, size

    def get(self, asset_id: str, default: int | None = None) -> int | None:
        for seg, pos in zip(reversed(self.segments), reversed(self.positions), strict=True):
            r = seg.row_of_id.get(asset_id)
            if r is not None and pos[r] >= 0:
                return int(pos[r])
        return default

    def __contains__(self, asset_id: str) -> bool:
        return self.get(asset_id) is not None

    def __getitem__(self, asset_id: str) -> int:
        i = self.get(asset_id)
        if i is None:
            raise KeyError(asset_id)
        return i

    def __len__(self) -> int:
        return self.size


@dataclass
class Snapshot:
    """One loaded index version: live items newest first, their segments' vectors, and the id lookup."""

    version: str
    model: str | None
    watermark: str | None
    items: Rows  # live rows of every segment, newest first; `seg` and `vector_row` locate the vector
    segments: list[Segment]
    dead: list[np.ndarray | None]  # per segment, per vector row: superseded or removed
    item_of: list[np.ndarray]  # per segment, per vector row: its position in `items` (-1 when dead)
    by_id: IdLookup
    low_watermark: str | None = None  # queued uploads can only be in manifests after this batch
    seq: int = 0
    built_at: str | None = None  # ISO time the version was published (its age, for metrics)

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def vector_count(self) -> int:
        return int(
            sum(
                len(s.vectors) - (int(d.sum()) if d is not None else 0)
                for s, d in zip(self.segments, self.dead, strict=True)
            )
        )

    @property
    def dim(self) -> int:
        return max((int(s.vectors.shape[1]) for s in self.segments if len(s.vectors)), default=0)

    @property
    def hnsw(self) -> Index | None:
        """The largest segment's approximate index, if any segment has one."""
        graphs = [s for s in self.segments if s.hnsw is not None]
        return max(graphs, key=lambda s: len(s.vectors)).hnsw if graphs else None

    def get(self, asset_id: str) -> dict[str, Any] | None:
        i = self.by_id.get(asset_id)
        return None if i is None else self.items[i]

    def vector_of(self, asset_id: str) -> np.ndarray | None:
        i = self.by_id.get(asset_id)
        if i is None or self.items.vector_row[i] < 0:
            return None
        vector: np.ndarray = self.segments[self.items.seg[i]].vectors[self.items.vector_row[i]]
        return vector

    def text_matches(self, words: list[str], k: int, hidden: set[str] | frozenset[str] = frozenset()) -> list[int]:
        """Positions of up to k items whose image text (OCR) holds every word, case-insensitive, newest first."""
        if not words or k <= 0:
            return []
        found = self.items.text_filter(words)
        out: list[int] = []
        for row in np.flatnonzero(found):
            if self.items.ids[row] not in hidden:
                out.append(int(row))
                if len(out) == k:
                    break
        return out

    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> list[tuple[dict[str, Any], float]]:
        """Top-k items by cosine similarity to a normalized query vector, best first."""
        if self.vector_count == 0 or k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has dimension {q.shape[0]}, the index {self.dim}")
        want = k + (1 if exclude else 0)
        work = [
            (seg, dead, item_of)
            for seg, dead, item_of in zip(self.segments, self.dead, self.item_of, strict=True)
            if len(seg.vectors)
        ]
        threads = 0 if len(work) == 1 else 1  # several segments: the cores go to segments side by side

        def one(part: tuple[Segment, np.ndarray | None, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            seg, dead, item_of = part
            rows, s = seg.candidates(q, want, dead, threads)
            return item_of[rows], s

        # usearch and numpy release the GIL: the segments are searched in parallel, costliest first.
        # Results keep the segments' order (ties stay deterministic).
        costliest = sorted(range(len(work)), key=lambda i: -work[i][0].search_cost)
        found = run_shared([functools.partial(one, part) for part in work], _search_helpers(), costliest)
        pos = np.concatenate([p for p, _ in found])
        scores = np.concatenate([s for _, s in found]).astype(np.float32)
        order = np.lexsort((pos, -scores))  # best first; ties by listing order
        best: list[tuple[int, float]] = []
        for j in order:
            row = int(pos[j])
            if self.items.ids[row] == exclude:
                continue
            best.append((row, float(scores[j])))
            if len(best) == k:
                break
        rows = self.items.at([row for row, _ in best])
        return [(item, score) for item, (_, score) in zip(rows, best, strict=True)]


@overload
def load_snapshot(store: ObjectStore, current: IndexManifest, reuse: Snapshot | None = None) -> Snapshot: ...
@overload
def load_snapshot(store: ObjectStore, current: None = None, reuse: Snapshot | None = None) -> Snapshot | None: ...
def load_snapshot(
    store: ObjectStore, current: IndexManifest | None = None, reuse: Snapshot | None = None
) -> Snapshot | None:
    """Load the newest version (or `current`), or None when no index was built yet.

    Segments that `reuse` (the snapshot served so far) already holds are not read again.
    """
    if current is None:
        current = read_head(store)
        if current is None:
            return None
    known = {s.name: s for s in reuse.segments} if reuse is not None else {}
    entries = current.segments
    segs = [known.get(e.name) or load_segment(store, e) for e in entries]
    alive = live_rows(segs, entries, current.removed)
    parts = []
    for i, (seg, keep) in enumerate(zip(segs, alive, strict=True)):
        t = seg.items.append_column("_seg", pa.array(np.full(seg.items.num_rows, i, np.int32)))
        t = t.append_column("_row", pa.array(np.arange(seg.items.num_rows, dtype=np.int64)))
        parts.append(t.filter(pa.array(keep)))
    if parts:
        table = pa.concat_tables(parts, promote_options="default")
        if len(parts) > 1:
            table = table.take(pc.sort_indices(table, [("uploaded_at", "descending"), ("id", "ascending")]))
    else:
        table = (
            with_item_columns(schema(None).empty_table().drop(["embedding"]))
            .append_column("vector_row", pa.array([], pa.int64()))
            .append_column("_seg", pa.array([], pa.int32()))
            .append_column("_row", pa.array([], pa.int64()))
        )
    rows_in_seg = table.column("_row").to_numpy()
    items = Rows(table.drop(["_row"]))
    items.seg = table.column("_seg").to_numpy().astype(np.int64)
    dead: list[np.ndarray | None] = []
    item_of: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    order = np.argsort(items.seg, kind="stable")
    bounds = np.searchsorted(items.seg[order], np.arange(len(segs) + 1))
    for i, seg in enumerate(segs):
        pos = np.full(seg.items.num_rows, -1, np.int64)
        mine = order[bounds[i] : bounds[i + 1]]
        pos[rows_in_seg[mine]] = mine
        positions.append(pos)
        of_vec = pos[seg.row_of_vector]
        item_of.append(of_vec)
        d = of_vec < 0
        dead.append(d if d.any() else None)
    assert current.version is not None  # set on every published manifest (None only before the first)
    return Snapshot(
        version=current.version,
        seq=current.seq,
        built_at=current.built_at.isoformat() if current.built_at else None,
        model=current.model,
        watermark=current.watermark,
        low_watermark=current.low_watermark,
        items=items,
        segments=segs,
        dead=dead,
        item_of=item_of,
        by_id=IdLookup(segs, positions, len(items)),
    )
