"""The incremental search index: each batch adds a segment; the result equals a full rebuild.

Real table files (dam_core.table.write_batch) and a real local store; no mocks.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from dam_core.index import segments, write
from dam_core.index.holder import IndexHolder
from dam_core.index.manifest import read_head
from dam_core.index.snapshot import load_snapshot
from dam_core.index.write import build_index, remove_from_index, update_index
from dam_core.layout import CURRENT_INDEX_KEY, manifest_key
from dam_core.messages import BatchManifest, UploadMessage
from dam_core.store import make_store
from dam_core.table import make_table
from dam_core.tombstones import write_tombstone

DIM = 16
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def batch_key(i: int) -> str:
    return f"20261124T10{i // 60:02d}{i % 60:02d}Z-00000{i % 10}"


def row(
    asset_id: str, batch: str, i: int, vec: np.ndarray | None, processed: datetime, error: str | None = None
) -> dict:
    return {
        "id": asset_id,
        "filename": f"{asset_id}.jpg",
        "r2_key": f"assets/{asset_id}.jpg",
        "vector_key": None,
        "mime_type": "image/jpeg",
        "caption": f"caption {asset_id}",
        "embedding": None if vec is None else vec.tolist(),
        "width": 10,
        "height": 10,
        "bytes": 100,
        "sha256": asset_id,
        "uploaded_at": T0 + timedelta(seconds=i),
        "processed_at": processed,
        "caption_model": "blip",
        "embedding_model": "clip",
        "batch": batch,
        "error": error,
        "tags": ["x"],
    }


def land(settings, store, batch: str, rows: list[dict], dim: int = DIM) -> None:
    """A batch as the pipeline leaves it: its manifest, then its table file."""
    uploads = [
        UploadMessage(
            id=r["id"],
            filename=r["filename"],
            r2_key=r["r2_key"],
            mime_type="image/jpeg",
            bytes=100,
            sha256=r["id"] * 2,
            width=10,
            height=10,
            uploaded_at=r["uploaded_at"],
        )
        for r in rows
    ]
    m = BatchManifest(batch=batch, created_at=T0, uploads=uploads)
    store.put(manifest_key(batch), m.to_json())
    make_table(settings).write_batch(batch, rows, dim, store)


@pytest.fixture
def env(make_settings):
    settings = make_settings(DAM_EXACT_SEARCH_MAX="1000000")
    return settings, make_store(settings)


def random_batches(n_batches: int, per_batch: int, seed: int = 0):
    """Batches of rows; some ids re-processed in a later batch, some rows errors without a vector."""
    rng = np.random.default_rng(seed)
    out, k = [], 0
    for b in range(n_batches):
        key = batch_key(b)
        rows = []
        for j in range(per_batch):
            asset_id = f"{k:032x}"
            err = "bad image" if j == 0 else None
            rows.append(
                row(
                    asset_id,
                    key,
                    k,
                    None if err else rng.standard_normal(DIM).astype(np.float32),
                    T0 + timedelta(minutes=b),
                    error=err,
                )
            )
            k += 1
        if b >= 2:  # re-process two ids of an earlier batch: the newer rows supersede them
            for old in (out[b - 2][1][1], out[b - 2][1][2]):
                rows.append(
                    {
                        **old,
                        "batch": key,
                        "processed_at": T0 + timedelta(minutes=b),
                        "embedding": rng.standard_normal(DIM).astype(np.float32).tolist(),
                    }
                )
        out.append((key, rows))
    return out


def top_ids(snap, queries, k=5):
    return [[r["id"] for r, _ in snap.search(q, k)] for q in queries]


def rebuilt_snapshot(make_settings, data_dir, batches):
    """The batches landed in a fresh store under `data_dir`, indexed by one full rebuild, loaded."""
    settings = make_settings(DAM_DATA_DIR=str(data_dir))
    store = make_store(settings)
    for key, rows in batches:
        land(settings, store, key, rows)
    build_index(store, make_table(settings).connect(), exact_max=1_000_000)
    return load_snapshot(store)


def test_batch_by_batch_equals_a_full_rebuild(env, tmp_path, make_settings):
    settings, store = env
    batches = random_batches(20, 6)
    for key, rows in batches:
        land(settings, store, key, rows)
        update_index(store, make_table(settings).connect(), key, exact_max=1_000_000)
    head = read_head(store)
    # Merged as they piled up: far fewer segments than batches, and the low watermark passed them all.
    assert len(head.segments) < 20 and head.low_watermark == batches[-1][0]
    incremental = load_snapshot(store)

    full = rebuilt_snapshot(make_settings, tmp_path / "rebuilt", batches)

    assert incremental.items.ids == full.items.ids  # same ids, same listing order

    def public(row):  # where its vector sits differs (segments); everything else is the same
        return {k: v for k, v in row.items() if k != "vector_row"}

    assert [public(incremental.get(i)) for i in full.items.ids] == [public(full.get(i)) for i in full.items.ids]
    queries = np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32)
    assert top_ids(incremental, queries) == top_ids(full, queries)
    # A superseded id is served once, with its newest row and vector.
    old = batches[0][1][1]
    assert incremental.get(old["id"])["batch"] == batch_key(2)
    assert np.allclose(incremental.vector_of(old["id"]), full.vector_of(old["id"]))


def test_rerun_of_a_batch_replaces_its_rows(env):
    settings, store = env
    a = [row(f"{i:032x}", batch_key(0), i, np.eye(DIM, dtype=np.float32)[i], T0) for i in range(3)]
    land(settings, store, batch_key(0), a)
    update_index(store, make_table(settings).connect(), batch_key(0), exact_max=1_000_000)
    land(settings, store, batch_key(1), [row(f"{9:032x}", batch_key(1), 9, np.eye(DIM, dtype=np.float32)[9], T0)])
    update_index(store, make_table(settings).connect(), batch_key(1), exact_max=1_000_000)
    # Re-materialized: the first image now fails; the table holds only the new row for it.
    rerun = [{**a[0], "error": "decode failed", "embedding": None, "processed_at": T0 - timedelta(hours=1)}, *a[1:]]
    land(settings, store, batch_key(0), rerun)
    update_index(store, make_table(settings).connect(), batch_key(0), exact_max=1_000_000)
    snap = load_snapshot(store)
    assert snap.size == 4 and snap.get(a[0]["id"])["error"] == "decode failed"
    assert snap.vector_of(a[0]["id"]) is None
    assert a[0]["id"] not in [r["id"] for r, _ in snap.search(np.eye(DIM, dtype=np.float32)[0], 4)]


def test_deleted_and_superseded_ids_never_come_back(env):
    settings, store = env
    batches = random_batches(12, 5, seed=3)
    for key, rows in batches[:6]:
        land(settings, store, key, rows)
        update_index(store, make_table(settings).connect(), key, exact_max=1_000_000)
    now = datetime.now(UTC)
    gone = {batches[1][1][3]["id"]: now, batches[4][1][2]["id"]: now}
    assert remove_from_index(store, gone) == 2
    assert remove_from_index(store, gone) == 0  # already removed: no new version
    # The delete path's tombstone: a later batch that still carries the id (a redelivery) drops it.
    gone[batches[7][1][1]["id"]] = write_tombstone(store, batches[7][1][1]["id"], datetime.now(UTC))
    for key, rows in batches[6:]:
        land(settings, store, key, rows)
        update_index(store, make_table(settings).connect(), key, exact_max=1_000_000)
    snap = load_snapshot(store)
    rows_by_id = {r["id"]: r for _, rows in batches for r in rows if r["embedding"] is not None}
    for asset_id in gone:
        assert snap.get(asset_id) is None and snap.vector_of(asset_id) is None
        # Its own vector as the query: every other live vector is further, so it would rank first.
        hits = [r["id"] for r, _ in snap.search(np.asarray(rows_by_id[asset_id]["embedding"], np.float32), snap.size)]
        assert asset_id not in hits
    ids = [r["id"] for r, _ in snap.search(np.ones(DIM, np.float32), snap.size)]
    assert len(ids) == len(set(ids)) == snap.vector_count
    # Superseded rows: one row per id in the listing, the newest one.
    assert len(snap.items.ids) == len(set(snap.items.ids))
    assert snap.get(batches[5][1][1]["id"])["batch"] == batches[7][0]


def test_a_crash_before_the_pointer_leaves_the_previous_version_served(env, monkeypatch):
    settings, store = env
    batches = random_batches(3, 4)
    for key, rows in batches[:2]:
        land(settings, store, key, rows)
        update_index(store, make_table(settings).connect(), key, exact_max=1_000_000)
    holder = IndexHolder(store, poll_seconds=3600)
    holder.refresh()
    before = holder.snapshot.version
    pointer = store.get(CURRENT_INDEX_KEY)

    real_create = store.create

    def crash(key, *args, **kwargs):
        if key.startswith("index/versions/"):
            raise RuntimeError("killed after the segment files, before the version")
        return real_create(key, *args, **kwargs)

    land(settings, store, *batches[2])
    monkeypatch.setattr(store, "create", crash)
    with pytest.raises(RuntimeError):
        update_index(store, make_table(settings).connect(), batches[2][0], exact_max=1_000_000)
    # The segment files are there, unreferenced; the pointer and what is served did not move.
    assert store.get(CURRENT_INDEX_KEY) == pointer
    assert not holder.refresh() and holder.snapshot.version == before
    assert holder.snapshot.get(batches[2][1][1]["id"]) is None
    monkeypatch.undo()
    update_index(store, make_table(settings).connect(), batches[2][0], exact_max=1_000_000)  # the retry
    assert holder.refresh() and holder.snapshot.get(batches[2][1][1]["id"]) is not None


def test_concurrent_writers_lose_no_batch(env):
    """Two batch runs publishing at once: compare-and-swap on the version, so both batches are served."""
    settings, store = env

    batches = random_batches(8, 3)
    for key, rows in batches:
        land(settings, store, key, rows)
    errors = []

    def run(part):
        try:
            for key, _ in part:
                update_index(store, make_table(settings).connect(), key, exact_max=1_000_000)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(batches[i::2],)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    snap = load_snapshot(store)
    expected = {r["id"] for _, rows in batches for r in rows}
    assert set(snap.items.ids) == expected
    assert read_head(store).low_watermark == batches[-1][0]


def test_the_api_swaps_to_new_segments_reusing_loaded_ones(env):
    settings, store = env
    batches = random_batches(3, 4)
    land(settings, store, *batches[0])
    update_index(store, make_table(settings).connect(), batches[0][0], exact_max=1_000_000)
    holder = IndexHolder(store, poll_seconds=3600)
    holder.refresh()
    first = holder.snapshot
    land(settings, store, *batches[1])
    update_index(store, make_table(settings).connect(), batches[1][0], exact_max=1_000_000)
    assert holder.refresh()
    assert holder.snapshot.segments[0] is first.segments[0]  # not read again
    assert json.loads(store.get(CURRENT_INDEX_KEY))["version"] == holder.snapshot.version


def test_hnsw_segments_keep_the_contract(env, monkeypatch):
    """Segments over DAM_EXACT_SEARCH_MAX get an HNSW graph; removed ids are still never returned."""
    monkeypatch.setattr(segments, "HNSW_SMALL_GRAPH", 1)  # every graph "big": searched at HNSW_EXPANSION_SEARCH
    settings, store = env
    batches = random_batches(2, 40)
    for key, rows in batches:
        land(settings, store, key, rows)
        update_index(store, make_table(settings).connect(), key, exact_max=10)
    snap = load_snapshot(store)
    assert snap.hnsw is not None and snap.hnsw.expansion_search == segments.HNSW_EXPANSION_SEARCH
    target = batches[1][1][5]
    q = np.asarray(target["embedding"], np.float32)
    assert snap.search(q, 1)[0][0]["id"] == target["id"]
    remove_from_index(store, {target["id"]: datetime.now(UTC)})
    snap = load_snapshot(store, reuse=snap)
    assert target["id"] not in [r["id"] for r, _ in snap.search(q, 10)]
    assert len(snap.search(q, 10)) == 10


def test_graphs_are_int8_and_an_older_f16_segment_still_serves(env, monkeypatch):
    """New graphs store int8 vectors; a segment written with f16 (before) loads with its own type and
    both serve one snapshot, every row found as its own nearest neighbour."""
    monkeypatch.setattr(segments, "HNSW_SMALL_GRAPH", 1)
    settings, store = env
    batches = random_batches(2, 40)
    new_hnsw = segments._new_hnsw
    with monkeypatch.context() as older:
        older.setattr(segments, "_new_hnsw", lambda dim: segments.Index(ndim=dim, metric="ip", dtype="f16"))
        land(settings, store, *batches[0])
        update_index(store, make_table(settings).connect(), batches[0][0], exact_max=10)
    assert segments._new_hnsw is new_hnsw
    land(settings, store, *batches[1])
    update_index(store, make_table(settings).connect(), batches[1][0], exact_max=10)
    snap = load_snapshot(store)
    graphs = [s.hnsw for s in snap.segments if s.hnsw is not None]
    assert sorted(str(g.dtype).rsplit(".", 1)[-1].lower() for g in graphs) == ["f16", "i8"]
    later = {r["id"] for r in batches[1][1]}
    checked = [r for r in batches[0][1] if r["id"] not in later] + list(batches[1][1])
    checked = [r for r in checked if r.get("embedding") is not None]
    assert len(checked) > 40
    for r in checked:
        assert snap.search(np.asarray(r["embedding"], np.float32), 1)[0][0]["id"] == r["id"]


def test_search_expansion_by_graph_size():
    """Big graphs (the 262,144-row merged segments) are searched wide; small tier graphs at the floor."""
    assert segments.expansion_search(262_144) == segments.HNSW_EXPANSION_SEARCH == 256
    assert segments.expansion_search(segments.HNSW_SMALL_GRAPH) == 256
    assert segments.expansion_search(32_768) == segments.HNSW_EXPANSION_SEARCH_SMALL == segments.HNSW_CANDIDATES


def test_a_full_rebuild_is_cut_into_segments_of_the_merge_cap(tmp_path, make_settings, monkeypatch):
    """build_index writes segments of at most MAX_MERGED_ROWS (a 1M rebuild is four graphs, not one)
    and serves exactly what one segment would."""
    batches = random_batches(6, 10)
    whole = rebuilt_snapshot(make_settings, tmp_path / "whole", batches)
    assert len(whole.segments) == 1

    monkeypatch.setattr(write, "MAX_MERGED_ROWS", 16)
    cut = rebuilt_snapshot(make_settings, tmp_path / "cut", batches)
    assert len(cut.segments) == -(-whole.size // 16) >= 3
    assert all(len(s.ids) <= 16 for s in cut.segments)
    assert cut.items.ids == whole.items.ids
    assert [cut.get(i)["batch"] for i in whole.items.ids] == [whole.get(i)["batch"] for i in whole.items.ids]
    queries = np.random.default_rng(2).standard_normal((20, DIM)).astype(np.float32)
    assert top_ids(cut, queries) == top_ids(whole, queries)
    for i in whole.items.ids:
        a, b = whole.vector_of(i), cut.vector_of(i)
        assert (a is None and b is None) or np.allclose(a, b)
