"""A change of embedding model: one index per model, the old one served until the new one covers
every row, then served at once; never a vector of the other model, deletions kept in both.

Real table files and a real local store, as the pipeline leaves them batch by batch; no mocks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from dam_assets_tests.core.test_index_incremental import batch_key, land, row
from dam_core.index.manifest import NEXT, read_head
from dam_core.index.snapshot import load_snapshot
from dam_core.index.write import remove_from_index, update_index
from dam_core.store import make_store
from dam_core.table import make_table
from dam_core.tombstones import write_tombstone

OLD, NEW = "clip-old", "siglip-new"
DIMS = {OLD: 16, NEW: 12}  # a new model may change the dimension too
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _rows(b: int, per: int, model: str, rng, processed: datetime) -> list[dict]:
    out = []
    for j in range(per):
        k = b * per + j
        err = "bad image" if j == 0 else None
        vec = None if err else rng.standard_normal(DIMS[model]).astype(np.float32)
        out.append({**row(f"{k:032x}", batch_key(b), k, vec, processed, error=err), "embedding_model": model})
    return out


def _index(settings, store, b: int, rows: list[dict], model: str) -> None:
    land(settings, store, batch_key(b), rows, DIMS[model])  # writes the manifest and the table rows
    update_index(store, make_table(settings).connect(), batch_key(b), exact_max=1_000_000)


def _assert_one_model(snap, model: str) -> None:
    assert snap.model == model and snap.dim == DIMS[model]
    q = np.ones(DIMS[model], np.float32) / np.sqrt(DIMS[model])
    hits = snap.search(q, 1000)
    assert hits and all(r["embedding_model"] == model for r, _ in hits)


def test_a_model_change_serves_the_old_index_until_the_new_one_covers_every_row(make_settings):
    settings = make_settings(DAM_EXACT_SEARCH_MAX="1000000")
    store = make_store(settings)
    rng = np.random.default_rng(3)
    per, old_batches = 5, 4
    batches = {b: _rows(b, per, OLD, rng, T0 + timedelta(minutes=b)) for b in range(old_batches)}
    for b, rows in batches.items():
        _index(settings, store, b, rows, OLD)
    before = load_snapshot(store)
    assert before is not None and before.size == old_batches * per
    _assert_one_model(before, OLD)

    # The pipeline now embeds with NEW: a new upload's batch starts NEW's index beside the served one.
    fresh = _rows(old_batches, per, NEW, rng, T0 + timedelta(hours=1))
    _index(settings, store, old_batches, fresh, NEW)
    served = load_snapshot(store)
    assert served is not None and served.size == (old_batches + 1) * per  # the new rows are listed
    _assert_one_model(served, OLD)
    assert all(served.vector_of(r["id"]) is None for r in fresh)  # listed without a vector of the other model
    assert served.get(fresh[1]["id"])["embedding_model"] is None
    following = read_head(store, NEXT)
    assert following is not None and following.model == NEW

    # A deletion during the switch holds in both indexes, and after the switch.
    gone = batches[1][2]["id"]
    when = datetime.now(UTC)
    write_tombstone(store, gone, when)
    assert remove_from_index(store, {gone: when}) == 1
    for chain in ("index/", NEXT):
        assert gone in read_head(store, chain).removed

    # The old batches are re-embedded one by one (the automation's runs): the old index stays served
    # until the last one is in the new index, then the new one is served in one version.
    for b in range(old_batches):
        redone = _rows(b, per, NEW, rng, T0 + timedelta(hours=2, minutes=b))
        redone = [r for r in redone if r["id"] != gone]  # deleted: its rows left the table too
        _index(settings, store, b, redone, NEW)
        snap = load_snapshot(store)
        if b < old_batches - 1:
            _assert_one_model(snap, OLD)
            assert snap.size == (old_batches + 1) * per - 1
    after = load_snapshot(store)
    _assert_one_model(after, NEW)
    assert after.size == (old_batches + 1) * per - 1 and gone not in after.by_id
    errors = {r["id"] for rows in batches.values() for r in rows if r["error"]} | {fresh[0]["id"]}
    for i in range(after.size):
        item = after.items[i]
        assert (after.vector_of(item["id"]) is None) == (item["id"] in errors), item
    assert read_head(store, NEXT) is None  # the new index is the served one now

    # New batches go straight to the served (new) index.
    _index(settings, store, old_batches + 1, _rows(old_batches + 1, per, NEW, rng, T0 + timedelta(hours=3)), NEW)
    latest = load_snapshot(store)
    _assert_one_model(latest, NEW)
    assert latest.size == (old_batches + 2) * per - 1
