"""Search benchmark: /search, /similar and GET /assets/{id} over 100k and 1M vectors; index recall.

    python -m bench.search [--quick] [--out bench/out] [--index-only update,clip] [--encoder]

For each size: write an index version of N random unit 512-d vectors into a local store,
serve it with the real API (`dam api`, full-size CLIP text encoder with random weights), and
time requests over HTTP from a separate process. Recall@10 of the search path is measured
against brute-force exact search on the same vectors. The HNSW path (the approximate index
used above DAM_EXACT_SEARCH_MAX) is measured through the product's own write_index and
snapshot search: write time, loaded memory, latency and recall, on uniformly random vectors
(the worst case for any graph index) and on clustered vectors shaped like real embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from dam_core.index import segments, write
from dam_core.index.holder import IndexHolder
from dam_core.index.manifest import SegmentEntry, publish, read_head, read_version
from dam_core.index.segments import with_item_columns, write_segment
from dam_core.index.snapshot import load_snapshot
from dam_core.index.write import add_batch, write_index

PREAMBLE = (
    "Random unit 512-d vectors written as an index version, served by `dam api` (full-size CLIP text "
    "encoder, random weights), timed over HTTP from another process; recall@10 against brute force. "
    "Targets: `/search` p50 < 50 ms at 1,000,000 vectors with recall@10 >= 0.95; `GET /assets/{id}` "
    "p99 < 20 ms at 100,000 rows."
)
DIM = 512
TARGET_SEARCH_P50_MS = 50.0
TARGET_RECALL = 0.95
TARGET_GET_P99_MS = 20.0


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def random_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for i in range(0, n, 100_000):
        out[i : i + 100_000] = rng.standard_normal((min(100_000, n - i), DIM), dtype=np.float32)
    return unit(out)


def clustered_vectors(n: int, seed: int, clusters: int = 2000, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((clusters, DIM), dtype=np.float32))
    out = np.empty((n, DIM), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        out[i : i + m] = centers[rng.integers(0, clusters, m)] + spread / np.sqrt(DIM) * rng.standard_normal(
            (m, DIM), dtype=np.float32
        )
    return unit(out)


def clip_like_vectors(n: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image-like vectors and text-like queries, shaped like CLIP ViT-B/32 embeddings.

    Images: a shared image-cone direction plus one of n/500 topic directions (Zipf-sized topics)
    plus noise: cosine ~0.67 within a topic, ~0.26 across. Queries ("text"): the same topic
    directions but a different cone direction (CLIP's modality gap) and more noise, so a query's
    best image scores ~0.45, as a CLIP text embedding's does: off the image clusters, which is
    where graph indexes lose recall.
    """
    rng = np.random.default_rng(seed)
    topics = max(50, n // 500)
    img_cone, txt_cone = unit(rng.standard_normal((2, DIM), dtype=np.float32))
    centers = unit(rng.standard_normal((topics, DIM), dtype=np.float32))
    w = 1 / np.arange(1, topics + 1) ** 0.8
    w /= w.sum()
    out = np.empty((n, DIM), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        out[i : i + m] = (
            0.8 * img_cone
            + centers[rng.choice(topics, m, p=w)]
            + 0.9 / np.sqrt(DIM) * rng.standard_normal((m, DIM), dtype=np.float32)
        )
    c = rng.choice(topics, queries, p=w)
    q = 0.8 * txt_cone + centers[c] + 1.2 / np.sqrt(DIM) * rng.standard_normal((queries, DIM), dtype=np.float32)
    return unit(out), unit(q)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    out = []
    for q in queries:
        s = vectors @ q
        idx = np.argpartition(-s, k)[:k]
        out.append(idx[np.argsort(-s[idx])])
    return np.array(out)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]))


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def items_table(n: int, model: str) -> pa.Table:
    now = datetime.now(UTC)
    ids = [f"{i:032x}" for i in range(n)]
    stamps = pa.array([now - timedelta(seconds=i) for i in range(n)], type=pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "id": ids,
            "filename": [f"img_{i}.jpg" for i in range(n)],
            "caption": pa.array(["a photo of something"] * n),
            "tags": pa.array([["photo"]] * n, type=pa.list_(pa.string())),
            "mime_type": pa.array(["image/jpeg"] * n),
            "width": pa.array([1600] * n, type=pa.int32()),
            "height": pa.array([1200] * n, type=pa.int32()),
            "error": pa.nulls(n, type=pa.string()),
            "uploaded_at": stamps,
            "processed_at": stamps,
            "batch": pa.array(["20261124T000000Z-000000"] * n),
            "embedding_model": pa.array([model] * n),
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- HNSW path


def hnsw_figures(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    """The product's approximate path end to end: an index version written with its HNSW graph
    (what write_index does above DAM_EXACT_SEARCH_MAX), loaded and searched as the API does."""
    from dam_core.store import LocalStore

    n = len(vectors)
    with tempfile.TemporaryDirectory(prefix="bench-hnsw-") as tmp:
        store = LocalStore(Path(tmp) / "store")
        items = items_table(n, "bench")
        t0 = time.perf_counter()
        write_index(store, items, vectors, np.ones(n, bool), exact_max=0, model="bench")
        build = time.perf_counter() - t0
        before = rss_mb()
        snap = load_snapshot(store)
        mem = rss_mb() - before
        assert snap.hnsw is not None
        lat, found = [], []
        for q in queries:
            t = time.perf_counter()
            hits = snap.search(q, 10)
            lat.append((time.perf_counter() - t) * 1000)
            found.append([int(h[0]["id"], 16) for h in hits])  # items_table ids are the row numbers in hex
        del snap
    return {
        "n": n,
        "build_s": round(build, 2),
        "loaded_mem_mb": round(mem, 1),
        "p50_ms": round(pct(lat, 50), 3),
        "p99_ms": round(pct(lat, 99), 3),
        "recall@10": round(recall(found, truth), 4),
    }


def clip_hnsw_figures(n: int, nq: int = 200, log=print) -> dict:
    """HNSW on CLIP-like vectors with text-like queries (the target): recall@10 and latency for
    search (text-like queries) and similar (an indexed vector as the query, itself excluded)."""
    from dam_core.store import LocalStore

    vectors, queries = clip_like_vectors(n, nq, seed=n)
    truth = exact_top(vectors, queries)
    rng = np.random.default_rng(5)
    sim_rows = rng.choice(n, nq, replace=False)
    sim_truth = []
    for r in sim_rows:
        s = vectors @ vectors[r]
        s[r] = -np.inf
        idx = np.argpartition(-s, 10)[:10]
        sim_truth.append(idx[np.argsort(-s[idx])])
    with tempfile.TemporaryDirectory(prefix="bench-clip-hnsw-") as tmp:
        store = LocalStore(Path(tmp) / "store")
        t0 = time.perf_counter()
        write_index(
            store, items_table(n, "bench"), vectors, np.ones(n, bool), exact_max=0, model="bench", max_rows=n
        )  # one graph of n (the product cuts a rebuild at MAX_MERGED_ROWS)
        build = time.perf_counter() - t0
        log(f"  HNSW built over {n:,} CLIP-like vectors in {build:.0f} s")
        snap = load_snapshot(store)
        out = {"n": n, "build_s": round(build, 1)}
        for name, qs, tr, excl in (
            ("search", queries, truth, None),
            ("similar", vectors[sim_rows], np.array(sim_truth), True),
        ):
            lat, found = [], []
            for q, r in zip(qs, sim_rows, strict=True):
                ex = f"{int(r):032x}" if excl else None
                t = time.perf_counter()
                hits = snap.search(q, 10, exclude=ex)
                lat.append((time.perf_counter() - t) * 1000)
                found.append([int(h[0]["id"], 16) for h in hits])
            out[name] = {
                "p50_ms": round(pct(lat, 50), 2),
                "p99_ms": round(pct(lat, 99), 2),
                "recall@10": round(recall(found, tr), 4),
            }
        del snap
    return out


def product_layout(n: int, seg_rows: int = 262_144, batch_rows: int = 64) -> list[int]:
    """Segment sizes, oldest first, that the product leaves after `n` rows arrive in batches of
    `batch_rows`: add_batch appends one segment per batch and merges by the product's own rule
    (dam_core.index.write.merge_run) with MAX_MERGED_ROWS = `seg_rows`. At 1,000,000 rows in 64-row
    batches: 3 x 262,144, 6 x 32,768, 4 x 4,096, 512, 64 (15,625 batches, base 8: 3 6 4 1 1)."""
    saved = write.MAX_MERGED_ROWS
    write.MAX_MERGED_ROWS = seg_rows
    try:
        rows: list[int] = []
        for start in range(0, n, batch_rows):
            rows.append(min(batch_rows, n - start))
            while k := write.merge_run(rows):
                rows[-k:] = [sum(rows[-k:])]
    finally:
        write.MAX_MERGED_ROWS = saved
    return rows


def _exact_truth(
    vectors: np.ndarray, queries: np.ndarray, exclude: np.ndarray | None = None, k: int = 10, chunk: int = 65_536
) -> np.ndarray:
    """Exact top-k rows of `vectors` (a memory map is fine) per query, in chunks; `exclude[i]`: a row left out for query i."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for a in range(0, len(vectors), chunk):
        s = np.asarray(vectors[a : a + chunk]) @ queries.T  # (m, q)
        if exclude is not None:
            hit = (exclude >= a) & (exclude < a + len(s))
            s[exclude[hit] - a, np.flatnonzero(hit)] = -np.inf
        top = np.argpartition(-s, k, axis=0)[:k].T  # (q, k)
        cs = np.concatenate([best_s, np.take_along_axis(s.T, top, axis=1)], axis=1)
        ci = np.concatenate([best_i, top + a], axis=1)
        keep = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cs, keep, axis=1), np.take_along_axis(ci, keep, axis=1)
    return best_i


def _segment_items(start: int, stop: int, t0: datetime, batch: str) -> pa.Table:
    """Items of global rows [start, stop), newest first: row i has id i (hex) and was uploaded at t0 - i s."""
    m = stop - start
    t = items_table(m, "bench")
    stamps = pa.array([t0 - timedelta(seconds=i) for i in range(start, stop)], type=pa.timestamp("us", tz="UTC"))
    t = t.set_column(t.schema.get_field_index("id"), "id", pa.array([f"{i:032x}" for i in range(start, stop)]))
    t = t.set_column(
        t.schema.get_field_index("filename"), "filename", pa.array([f"img_{i}.jpg" for i in range(start, stop)])
    )
    t = t.set_column(t.schema.get_field_index("uploaded_at"), "uploaded_at", stamps)
    t = t.set_column(t.schema.get_field_index("processed_at"), "processed_at", stamps)
    return t.set_column(t.schema.get_field_index("batch"), "batch", pa.array([batch] * m))


SEGMENTED_SETTINGS = (
    (256, 64),
    (384, 64),
    (512, 64),
    (512, 128),
    (768, 64),
    (1024, 64),
    (1024, 128),
)  # (HNSW expansion_search, HNSW_CANDIDATES)


def clip_segmented_figures(
    n: int,
    nq: int = 300,
    seg_rows: int = 262_144,
    store_dir: str | Path | None = None,
    log=print,
    batch_rows: int = 64,
    exact_max: int | None = None,
    layouts: tuple[str, ...] = ("batches", "one"),
    settings: tuple[tuple[int, int], ...] = SEGMENTED_SETTINGS,
) -> dict:
    """HNSW recall@10 and latency on CLIP-like vectors in the product's segmented layout (issue 13).

    Layouts (segments oldest first; the same rows and ids in each):
      "batches": what add_batch + merge_segments leave after n rows in `batch_rows`-row batches
                 (product_layout: at 1M, 3 x 262,144 + 6 x 32,768 + 4 x 4,096 + 512 + 64);
      "one":     full `seg_rows` segments plus the remainder as one segment (HNSW above exact_max):
                 the worst case, e.g. one big import batch.
    Every segment is written by dam_core.index.segments.write_segment (HNSW only above `exact_max`,
    default the product's DAM_EXACT_SEARCH_MAX), a layout is published as one index version by
    dam_core.index.manifest.publish, loaded by load_snapshot and searched by Snapshot.search as the API does
    (`similar`: the indexed vector from snap.vector_of, itself excluded). Each (expansion_search,
    HNSW_CANDIDATES) pair of `settings` is set on the loaded graphs / the module before measuring;
    an expansion_search of None keeps what loading set (the product's: by graph size).

    The store, vectors, queries and exact truth stay in `store_dir` (default /tmp/hnsw-1m-store at
    1M, /tmp/hnsw-{n//1000}k-store else) and are reused: a second call only loads and measures. A
    call with another `exact_max` reuses the segments it shares (the HNSW ones at or above it) and
    publishes its own version (publish keeps the last 3 versions: older ones' segments may be
    pruned and are then rebuilt). Figures also go to `store_dir`/figures-exact{exact_max}.json.
    """
    from dam_core.layout import index_manifest_key
    from dam_core.store import LocalStore

    if exact_max is None:
        from dam_core.settings import Settings

        exact_max = Settings().dam_exact_search_max
    if store_dir is None:
        store_dir = f"/tmp/hnsw-{n // 1000}k-store" if n % 1_000_000 else f"/tmp/hnsw-{n // 1_000_000}m-store"
    root = Path(store_dir)
    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / "layout.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    # exact_max is not part of the data: a store holds segments and versions for several values.
    params = {"n": n, "nq": nq, "seg_rows": seg_rows, "batch_rows": batch_rows}
    if meta and "exact_max" in meta["params"]:  # a store from before several exact_max per store
        old = meta["params"].pop("exact_max")
        meta["segments"] = {f"{k}:{'hnsw' if v['entry']['hnsw'] else 'exact'}": v for k, v in meta["segments"].items()}
        meta["versions"] = {f"{k}@{old}": v for k, v in meta["versions"].items()}
    if meta.get("params") != params:
        if meta:
            raise ValueError(
                f"{root} holds a store built with {meta.get('params')}, not {params}: use another store_dir"
            )
        meta = {"params": params, "t0": datetime.now(UTC).isoformat(), "segments": {}, "versions": {}}
    save = lambda: meta_path.write_text(json.dumps(meta, indent=1))  # noqa: E731
    save()
    t0 = datetime.fromisoformat(meta["t0"])

    if not (root / "sim_truth.npy").exists():
        t = time.perf_counter()
        vectors, queries = clip_like_vectors(n, nq, seed=n)  # the same data as clip_hnsw_figures(n, nq)
        np.save(root / "vectors.npy", vectors)
        np.save(root / "queries.npy", queries)
        del vectors
        vectors = np.load(root / "vectors.npy", mmap_mode="r")
        np.save(root / "truth.npy", _exact_truth(vectors, queries))
        sim_rows = np.random.default_rng(5).choice(n, nq, replace=False)
        np.save(root / "sim_rows.npy", sim_rows)
        np.save(root / "sim_truth.npy", _exact_truth(vectors, np.asarray(vectors[sim_rows]), exclude=sim_rows))
        log(f"  data and exact truth for {n:,} vectors in {time.perf_counter() - t:.0f} s")
    vectors = np.load(root / "vectors.npy", mmap_mode="r")
    queries = np.load(root / "queries.npy")
    truth, sim_rows, sim_truth = (
        np.load(root / "truth.npy"),
        np.load(root / "sim_rows.npy"),
        np.load(root / "sim_truth.npy"),
    )
    store = LocalStore(root / "store")

    sizes = product_layout(n, seg_rows, batch_rows)
    plans = {"batches": sizes}
    full = [s for s in sizes if s >= seg_rows]
    plans["one"] = full + ([n - sum(full)] if n > sum(full) else [])
    out: dict = {"n": n, "seg_rows": seg_rows, "batch_rows": batch_rows, "exact_max": exact_max, "layouts": {}}
    fig_path = root / f"figures-exact{exact_max}.json"
    for name in layouts:
        plan = plans[name]
        entries, keys, stop = [], [], n
        for rows in plan:  # oldest first: the oldest segments hold the highest rows (uploaded earliest)
            start = stop - rows
            key = f"{start}:{stop}:{'hnsw' if rows > exact_max else 'exact'}"
            keys.append(key)
            got = meta["segments"].get(key)
            if got is None or not store.exists(got["entry"]["prefix"] + "vectors.npy"):
                t = time.perf_counter()
                items = with_item_columns(_segment_items(start, stop, t0, f"20261124T000000Z-{start:07d}"))
                entry = write_segment(
                    store, items, np.ascontiguousarray(vectors[start:stop]), np.ones(rows, bool), exact_max
                )
                got = meta["segments"][key] = {
                    "entry": entry.model_dump(mode="json"),
                    "build_s": round(time.perf_counter() - t, 1),
                }
                save()
                log(
                    f"  segment rows {start:,}-{stop:,} ({rows:,}, {'HNSW' if entry.hnsw else 'exact'}) written in {got['build_s']} s"
                )
            entries.append(SegmentEntry.model_validate(got["entry"]))
            stop = start
        version = f"{name}@{exact_max}"
        seq = meta["versions"].get(version)
        if seq is None or not store.exists(index_manifest_key(seq)):
            m = publish(
                store,
                lambda head, e=tuple(entries): head.model_copy(
                    update={
                        "segments": e,
                        "model": "bench",
                        "removed": {},
                        "watermark": None,
                        "low_watermark": None,
                        "pending": (),
                    }
                ),
            )
            seq = meta["versions"][version] = m.seq
            save()
        manifest = read_version(store, seq)
        build = [meta["segments"][k]["build_s"] for k in keys]
        fig = {
            "segments": [
                {"rows": r, "hnsw": e.hnsw, "build_s": b} for r, e, b in zip(plan, entries, build, strict=True)
            ],
            "build_s": round(sum(build), 1),
        }
        rss0 = rss_mb()
        t = time.perf_counter()
        snap = load_snapshot(store, manifest)
        fig["load_s"] = round(time.perf_counter() - t, 1)
        fig["loaded_mem_mb"] = round(rss_mb() - rss0, 1)
        assert snap.vector_count == n and [len(s.vectors) for s in snap.segments] == plan
        warm = np.random.default_rng(9).choice(n, 20, replace=False)
        for r in warm:  # page in the memory-mapped vectors, quantize the exact segments (lazily, on first use)
            snap.search(np.asarray(vectors[r]), 10)
        fig["mem_after_warmup_mb"] = round(rss_mb() - rss0, 1)
        saved = segments.HNSW_CANDIDATES
        fig["settings"] = {}
        try:
            for ef, cand in settings:
                segments.HNSW_CANDIDATES = cand
                for seg in snap.segments:
                    if seg.hnsw is not None and ef is not None:
                        seg.hnsw.expansion_search = ef
                res = {}
                for kind in ("search", "similar"):
                    lat, found = [], []
                    for i in range(nq):
                        if kind == "search":
                            q, ex = queries[i], None
                        else:
                            ex = f"{int(sim_rows[i]):032x}"
                            q = snap.vector_of(ex)
                        t = time.perf_counter()
                        hits = snap.search(q, 10, exclude=ex)
                        lat.append((time.perf_counter() - t) * 1000)
                        found.append([int(h[0]["id"], 16) for h in hits])
                    res[kind] = {
                        "recall@10": round(recall(found, truth if kind == "search" else sim_truth), 4),
                        "p50_ms": round(pct(lat, 50), 2),
                        "p99_ms": round(pct(lat, 99), 2),
                    }
                # Where the time goes: per segment kind, summed over the segments, on 50 text-like queries.
                split = {"hnsw": [], "exact": []}
                for q in queries[:50]:
                    per = {"hnsw": 0.0, "exact": 0.0}
                    for seg, dead in zip(snap.segments, snap.dead, strict=True):
                        t = time.perf_counter()
                        seg.candidates(q, 10, dead)
                        per["hnsw" if seg.hnsw is not None else "exact"] += (time.perf_counter() - t) * 1000
                    for k2 in split:
                        split[k2].append(per[k2])
                res["search_p50_ms_in_hnsw"] = round(pct(split["hnsw"], 50), 2)
                res["search_p50_ms_in_exact"] = round(pct(split["exact"], 50), 2)
                res["load_avg_1min"] = round(os.getloadavg()[0], 2)  # the machine's other work while measuring
                fig["settings"][f"ef={ef or 'product'},candidates={cand}"] = res
                log(f"  {name} layout ({len(plan)} segments), ef {ef}, candidates {cand}: {res}")
        finally:
            segments.HNSW_CANDIDATES = saved
        del snap
        out["layouts"][name] = fig
    fig_path.write_text(json.dumps(out, indent=1))
    return out


def clip_segmented_interleaved(
    store_dir: str | Path = "/tmp/hnsw-1m-store",
    versions: tuple[str, ...] = ("batches@20000", "one@20000", "batches@50000"),
    efs: tuple = (256, 512),
    nq: int | None = None,
    small_rows: int = 131_072,
) -> dict:
    """Search p50/p99 and recall@10 of published layouts of a clip_segmented_figures store, the
    configurations taking turns query by query, so the machine's other load falls on all alike.
    `versions`: keys of the store's layout.json ("{layout}@{exact_max}"); each is loaded once
    (load_snapshot, segments shared between versions) and searched by Snapshot.search. An `efs`
    entry is an expansion_search for every graph, or (ef, ef_small): ef_small for the graphs of
    fewer than `small_rows` vectors (a small graph reaches the same recall at a smaller ef)."""
    from dam_core.store import LocalStore

    root = Path(store_dir)
    meta = json.loads((root / "layout.json").read_text())
    store = LocalStore(root / "store")
    queries, truth = np.load(root / "queries.npy"), np.load(root / "truth.npy")
    nq = nq or len(queries)
    snaps, prev = {}, None
    for v in versions:
        prev = snaps[v] = load_snapshot(store, read_version(store, meta["versions"][v]), reuse=prev)
    configs = [(v, ef) for v in versions for ef in efs]
    lat = {c: [] for c in configs}
    found = {c: [] for c in configs}
    for i in range(-10, nq):  # 10 warm-up rounds
        q = queries[i % nq]
        for c in configs[i % len(configs) :] + configs[: i % len(configs)]:
            big, small = c[1] if isinstance(c[1], tuple) else (c[1], c[1])
            for seg in snaps[c[0]].segments:
                if seg.hnsw is not None:
                    seg.hnsw.expansion_search = big if len(seg.vectors) >= small_rows else small
            t = time.perf_counter()
            hits = snaps[c[0]].search(q, 10)
            if i >= 0:
                lat[c].append((time.perf_counter() - t) * 1000)
                found[c].append([int(h[0]["id"], 16) for h in hits])
    return {
        f"{v} ef={ef}": {
            "segments": len(snaps[v].segments),
            "graphs": sum(s.hnsw is not None for s in snaps[v].segments),
            "recall@10": round(recall(found[(v, ef)], truth[:nq]), 4),
            "p50_ms": round(pct(lat[(v, ef)], 50), 2),
            "p99_ms": round(pct(lat[(v, ef)], 99), 2),
        }
        for v, ef in configs
    } | {"load_avg_1min": round(os.getloadavg()[0], 2)}


def clip_segmented_api(
    clip_dir: str | Path, store_dir: str | Path = "/tmp/hnsw-1m-store", layout: str = "batches", reps: int = 300
) -> dict:
    """`/search`, `/similar` and `GET /assets/{id}` through `dam api` over a clip_segmented_figures store:
    its `layout` published again as the served version with `clip_dir` as the index's model (so the API
    embeds text queries with that model's query encoder, as in production), the API's own defaults
    (ef, candidates, threads), timed over HTTP from another process (api_figures)."""
    from dam_core.store import LocalStore

    root = Path(store_dir)
    meta = json.loads((root / "layout.json").read_text())
    store = LocalStore(root / "store")
    versions = [v for v in meta["versions"] if v.startswith(f"{layout}@")]
    if not versions:
        raise ValueError(f"{root} holds no {layout!r} layout: run clip_segmented_figures first")
    served = read_head(store)
    if served is not None and served.model == str(clip_dir):  # published by an earlier call: serve it again
        source = served
    else:
        source = read_version(store, meta["versions"][versions[0]])
        publish(store, lambda head: head.model_copy(update={"segments": source.segments, "model": str(clip_dir)}))
    n = meta["params"]["n"]
    return {"n": n, "layout": versions[0], "segments": len(source.segments)} | api_figures(
        root, Path(clip_dir), n, reps
    )


def batch_rows_table(n: int, batch: str, model: str, seed: int, first: int) -> pa.Table:
    """A batch's rows as the table holds them (with `embedding`)."""
    t = items_table(n, model)
    t = t.set_column(0, "id", pa.array([f"{first + i:032x}" for i in range(n)]))
    t = t.set_column(t.schema.get_field_index("batch"), "batch", pa.array([batch] * n))
    vecs = random_vectors(n, seed)
    return t.append_column("embedding", pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM))


def update_figures(table_rows: int, batches: int = 40, batch_size: int = 64) -> dict:
    """Per-batch index update (dam_core.index.write.add_batch: segment write, publish, merges) on an index
    that already holds `table_rows` vectors, and the API side's swap (IndexHolder.refresh)."""
    from dam_core.store import LocalStore

    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        store = LocalStore(Path(tmp) / "store")
        write_index(
            store,
            items_table(table_rows, "bench"),
            random_vectors(table_rows, 3),
            np.ones(table_rows, bool),
            exact_max=10**9,
            model="bench",
        )
        holder = IndexHolder(store, poll_seconds=3600)
        holder.refresh()
        upd, swap = [], []
        for b in range(batches):
            batch = f"20261125T{b // 3600:02d}{b // 60 % 60:02d}{b % 60:02d}Z-000000"
            rows = batch_rows_table(batch_size, batch, "bench", seed=100 + b, first=10**9 + b * batch_size)
            t = time.perf_counter()
            add_batch(store, batch, rows, exact_max=10**9)
            upd.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            assert holder.refresh()
            swap.append((time.perf_counter() - t) * 1000)
            assert holder.snapshot.get(f"{10**9 + b * batch_size:032x}") is not None
        segments_after = len(holder.snapshot.segments)
        # Read-side lag: rows handed to the index -> the API's holder (polling at the product's
        # default DAM_INDEX_POLL_SECONDS, in a background thread as in `dam api`) serves them.
        from dam_core.settings import Settings

        live = IndexHolder(store, poll_seconds=Settings().dam_index_poll_seconds)
        live.start()
        lag = []
        for b in range(batches, batches + 4):
            batch = f"20261125T{b // 3600:02d}{b // 60 % 60:02d}{b % 60:02d}Z-000000"
            first = 10**9 + b * batch_size
            rows = batch_rows_table(batch_size, batch, "bench", seed=100 + b, first=first)
            t = time.perf_counter()
            add_batch(store, batch, rows, exact_max=10**9)
            while live._snapshot is None or live._snapshot.get(f"{first:032x}") is None:
                time.sleep(0.02)
            lag.append(time.perf_counter() - t)
            time.sleep(1.3 * (b % 3))  # land at different points of the poll cycle
        live.stop()
    return {
        "lag_p50_s": round(pct(lag, 50), 2),
        "lag_max_s": round(max(lag), 2),
        "table_rows": table_rows,
        "batches": batches,
        "batch_size": batch_size,
        "segments_after": segments_after,
        "update_p50_ms": round(pct(upd, 50), 1),
        "update_max_ms": round(max(upd), 1),
        "swap_p50_ms": round(pct(swap, 50), 1),
        "swap_max_ms": round(max(swap), 1),
    }


# ----------------------------------------------------------------------------- through the API


LOADGEN = r"""
import json, random, statistics, sys, time, httpx
base, n, ids_n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
words = "dog cat beach mountain city night car tree flower person food red blue sunset snow river".split()
rng = random.Random(0)
out = {}
with httpx.Client(base_url=base, timeout=120) as c:
    c.get("/search", params={"q": "warm up", "k": 10}).raise_for_status()
    def timed(path, params=None):
        t = time.perf_counter(); r = c.get(path, params=params); dt = (time.perf_counter() - t) * 1000
        r.raise_for_status(); return dt, r.json()
    out["search"] = [timed("/search", {"q": " ".join(rng.sample(words, 3)), "k": 10})[0] for _ in range(reps)]
    sims = []
    for _ in range(reps):
        dt, body = timed(f"/assets/{rng.randrange(ids_n):032x}/similar", {"k": 10})
        sims.append(dt)
    out["similar"] = sims
    out["get"] = [timed(f"/assets/{rng.randrange(ids_n):032x}")[0] for _ in range(reps * 5)]
print(json.dumps(out))
"""


def api_figures(data_dir: Path, clip_dir: Path, n: int, reps: int) -> dict:
    from bench.fixtures import env_offline, pid_peak_rss_mb

    port = free_port()
    env = env_offline()
    env.update({"DAM_DATA_DIR": str(data_dir), "DAM_EMBEDDING_MODEL": str(clip_dir), "DAM_INDEX_POLL_SECONDS": "3600"})
    env.pop("AMQP_URL", None)
    for k in [k for k in env if k.startswith("R2_")]:
        env.pop(k)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dam"), "api", "--port", str(port), "--log-level", "warning"],
        env=env,
        start_new_session=True,
    )
    import httpx

    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/assets?limit=1", timeout=5).json()["items"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("API did not load the index")
            time.sleep(0.5)
        load_s = time.perf_counter() - t0
        res = subprocess.run(
            [sys.executable, "-c", LOADGEN, f"http://127.0.0.1:{port}", str(n), str(n), str(reps)],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        lat = json.loads(res.stdout.strip().splitlines()[-1])
        return {
            "api_load_s": round(load_s, 1),
            "api_peak_rss_mb": round(pid_peak_rss_mb(proc.pid) or 0, 1),
            **{f"{name}_p50_ms": round(statistics.median(v), 2) for name, v in lat.items()},
            **{f"{name}_p99_ms": round(pct(v, 99), 2) for name, v in lat.items()},
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def index_figures(quick: bool, log=print, parts=("update", "clip")) -> dict:
    """Issue 13: per-batch update time and API swap at growing table sizes; HNSW on CLIP-like vectors."""
    out: dict = {}
    if "update" in parts:
        out["update"] = {}
        for n in [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]:
            out["update"][n] = fig = update_figures(n, batches=20 if quick else 40)
            log(f"search: index update per 64-row batch at {n:,} rows: {fig}")
    if "clip" in parts:
        out["clip_hnsw"] = fig = clip_hnsw_figures(100_000 if quick else 1_000_000, log=log)
        log(f"search: HNSW, CLIP-like vectors, text-like queries: {fig}")
    return out


def run(quick: bool, out_dir: Path, log=print) -> dict:
    from bench.fixtures import build_models
    from dam_core.store import LocalStore

    sizes = [20_000, 100_000] if quick else [100_000, 1_000_000]
    hnsw_n = 20_000 if quick else 100_000
    reps = 30 if quick else 100
    _, clip_dir = build_models(out_dir / "models", log=log)
    results: dict = {"sizes": {}, "hnsw": {}}
    rng = np.random.default_rng(7)
    queries = unit(rng.standard_normal((100 if not quick else 40, DIM), dtype=np.float32))

    for n in sizes:
        log(f"search: {n:,} vectors")
        vectors = random_vectors(n, seed=n)
        truth = exact_top(vectors, queries)
        with tempfile.TemporaryDirectory(prefix=f"bench-search-{n}-") as tmp:
            store = LocalStore(Path(tmp) / "store")
            t0 = time.perf_counter()
            write_index(
                store, items_table(n, str(clip_dir)), vectors, np.ones(n, bool), exact_max=10**9, model=str(clip_dir)
            )
            write_s = time.perf_counter() - t0
            snap = load_snapshot(store)
            lat, found = [], []
            for q in queries:
                t = time.perf_counter()
                hits = snap.search(q, 10)
                lat.append((time.perf_counter() - t) * 1000)
                found.append([int(h[0]["id"], 16) for h in hits])
            del snap
            fig = {
                "index_write_s": round(write_s, 2),
                "engine_p50_ms": round(pct(lat, 50), 2),
                "engine_p99_ms": round(pct(lat, 99), 2),
                "recall@10": round(recall(found, truth), 4),
            }
            fig.update(api_figures(Path(tmp), clip_dir, n, reps))
            results["sizes"][n] = fig
            log(f"  {fig}")
        del vectors

    results.update(index_figures(quick, log=log))
    for name, gen in (("random", random_vectors), ("clustered", clustered_vectors)):
        vectors = gen(hnsw_n, seed=11)
        qs = gen(len(queries), seed=12) if name == "clustered" else queries
        fig = hnsw_figures(vectors, qs, exact_top(vectors, qs))
        results["hnsw"][name] = fig
        log(f"search: HNSW on {hnsw_n:,} {name} vectors: {fig}")
    return results


def markdown(results: dict) -> str:
    lines = [
        "| vectors | search engine p50 / p99 ms | recall@10 | `/search` p50 / p99 ms | `/similar` p50 / p99 ms | `GET /assets/{id}` p50 / p99 ms | API load s | API peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, f in results["sizes"].items():
        lines.append(
            f"| {int(n):,} | {f['engine_p50_ms']} / {f['engine_p99_ms']} | {f['recall@10']} | "
            f"{f['search_p50_ms']} / {f['search_p99_ms']} | {f['similar_p50_ms']} / {f['similar_p99_ms']} | "
            f"{f['get_p50_ms']} / {f['get_p99_ms']} | {f['api_load_s']} | {f['api_peak_rss_mb']} |"
        )
    lines += [
        "",
        "| HNSW path (index written with the graph, searched by the snapshot) | vectors | write s | loaded memory MiB | p50 / p99 ms | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in results["hnsw"].items():
        mem = f.get("loaded_mem_mb", f.get("build_mem_mb"))  # results.json from before this change
        lines.append(
            f"| {name} | {f['n']:,} | {f['build_s']} | {mem} | {f['p50_ms']} / {f['p99_ms']} | {f['recall@10']} |"
        )
    lines += index_markdown(results)
    return "\n".join(lines)


def index_markdown(results: dict) -> list[str]:
    lines = []
    if results.get("update"):
        lines += [
            "",
            "| index update per 64-row batch | table rows | update p50 / max ms | API swap p50 / max ms | segments after | read-side lag p50 / max s |",
            "|---|---|---|---|---|---|",
        ]
        for n, f in results["update"].items():
            lines.append(
                f"| add_batch + IndexHolder.refresh | {int(n):,} | {f['update_p50_ms']} / {f['update_max_ms']} | "
                f"{f['swap_p50_ms']} / {f['swap_max_ms']} | {f['segments_after']} | "
                f"{f.get('lag_p50_s', '')} / {f.get('lag_max_s', '')} |"
            )
    if results.get("clip_hnsw"):
        f = results["clip_hnsw"]
        lines += [
            "",
            "| HNSW, CLIP-like vectors | vectors | build s | search p50 / p99 ms | search recall@10 | similar p50 / p99 ms | similar recall@10 |",
            "|---|---|---|---|---|---|---|",
            f"| M=32, ef_add=200, ef=512, f16 | {f['n']:,} | {f['build_s']} | {f['search']['p50_ms']} / {f['search']['p99_ms']} | "
            f"{f['search']['recall@10']} | {f['similar']['p50_ms']} / {f['similar']['p99_ms']} | {f['similar']['recall@10']} |",
        ]
    return lines


def verdicts(results: dict) -> list[str]:
    out = []
    for n, f in results["sizes"].items():
        out.append(
            f"{int(n):,} vectors: /search p50 {f['search_p50_ms']} ms (target < {TARGET_SEARCH_P50_MS:g} at 1M), "
            f"recall@10 {f['recall@10']} (target >= {TARGET_RECALL}), GET /assets/{{id}} p99 {f['get_p99_ms']} ms "
            f"(target < {TARGET_GET_P99_MS:g} at 100k)"
        )
    return out


QUERY_WORDS = "dog cat beach mountain city night car tree flower person food red blue sunset snow river".split()
ENCODER_RUNTIMES = (("torch", "float32"), ("torch", "bfloat16"), ("openvino", "float32"), ("openvino", "bfloat16"))


def query_encoder_figures(reps: int = 300, models_dir: str | Path | None = None, log=print) -> dict:
    """The `/search` query encoder alone, per runtime and dtype, and the API's own (OpenVINO, int8
    weights: dam_models.embedder.get_query_encoder): one short text per call, as the API
    embeds a query (1 intra-op thread: dam_models.set_query_threads, as `dam api` declares it), the
    runtimes taking turns call by call in one process so the machine's other load falls on all alike.
    Full-size CLIP B/32 with random weights (bench.fixtures.build_models); cosine to fp32 torch."""
    import random

    import dam_models
    from bench.fixtures import build_models
    from dam_models.embedder import get_embedder, get_query_encoder

    dam_models.set_query_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-encoder-") as tmp:
        _, clip = build_models(Path(models_dir) if models_dir else Path(tmp) / "models", log=log)
        encoders = {}
        for runtime, dtype in ENCODER_RUNTIMES:
            t = time.perf_counter()
            encoders[(runtime, dtype)] = get_embedder(str(clip), "cpu", dtype, runtime, cache_dir=Path(tmp) / "cache")
            log(f"  {runtime}/{dtype} loaded in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        encoders[("openvino", "bfloat16 int8-weights")] = get_query_encoder(
            str(clip), "cpu", "bfloat16", "openvino", cache_dir=Path(tmp) / "cache"
        )
        log(f"  the API's query encoder (int8 weights) loaded in {time.perf_counter() - t:.1f} s")
        rng = random.Random(0)
        queries = [" ".join(rng.sample(QUERY_WORDS, 3)) for _ in range(reps)]
        lat: dict[tuple[str, str], list[float]] = {k: [] for k in encoders}
        cos: dict[tuple[str, str], list[float]] = {k: [] for k in encoders}
        keys = list(encoders)
        for i, q in enumerate([*queries[:10], *queries]):  # 10 warm-up calls each
            vecs = {}
            for k in keys[i % len(keys) :] + keys[: i % len(keys)]:
                t = time.perf_counter()
                vecs[k] = encoders[k].embed_texts([q])[0]
                if i >= 10:
                    lat[k].append((time.perf_counter() - t) * 1000)
            ref = vecs[("torch", "float32")]
            for k, v in vecs.items():
                cos[k].append(float(np.dot(v, ref) / (np.linalg.norm(v) * np.linalg.norm(ref))))
    return {
        "reps": reps,
        "cpus": os.cpu_count(),
        "encoders": {
            f"{r}/{d}": {
                "p50_ms": round(pct(lat[(r, d)], 50), 2),
                "p99_ms": round(pct(lat[(r, d)], 99), 2),
                "cos_min": round(min(cos[(r, d)]), 5),
            }
            for r, d in keys
        },
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def encoder_markdown(res: dict) -> list[str]:
    lines = [
        "| query encoder (CLIP B/32 text tower, 1 thread) | p50 ms | p99 ms | cosine to torch fp32 (min) |",
        "|---|---|---|---|",
    ]
    for name, f in res["encoders"].items():
        lines.append(f"| {name} | {f['p50_ms']} | {f['p99_ms']} | {f['cos_min']} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--index-only", default="", help="only the index figures: update, clip or update,clip")
    ap.add_argument("--encoder", action="store_true", help="only the query encoder, per runtime and dtype")
    ap.add_argument("--models-dir", help="reuse (or create) the random full-size models here")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.encoder:
        enc = query_encoder_figures(
            100 if args.quick else 300, args.models_dir, log=lambda m: print(m, file=sys.stderr, flush=True)
        )
        (out / "search-encoder.json").write_text(json.dumps(enc, indent=1))
        print("\n".join(encoder_markdown(enc)))
        return 0
    if args.index_only:
        res = index_figures(
            args.quick, log=lambda m: print(m, file=sys.stderr, flush=True), parts=args.index_only.split(",")
        )
        (out / f"search-index-{args.index_only.replace(',', '-')}{'-quick' if args.quick else ''}.json").write_text(
            json.dumps(res, indent=1)
        )
        print("\n".join(index_markdown(res)))
        return 0
    res = run(args.quick, out, log=lambda m: print(m, file=sys.stderr, flush=True))
    (out / ("search-quick.json" if args.quick else "search.json")).write_text(json.dumps(res, indent=1))
    print(markdown(res))
    for v in verdicts(res):
        print(v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
