"""The read side's queued view: an older batch that is not indexed yet stays queued, whatever
newer batches the index already holds, across an API restart; the manifest cache stays bounded."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from dagster import materialize
from fastapi.testclient import TestClient

from dam_assets.search.assets import search_index
from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.pipeline_harness import materialize_batch, resources, tick
from dam_core.index.watermark import advance_low_watermark
from dam_core.layout import CURRENT_INDEX_KEY
from dam_core.manifests import batches_after, write_manifest
from dam_core.messages import UploadMessage
from dam_core.store import LocalStore, make_store
from dam_ingest_api.main import create_app


@pytest.fixture
def env(backend):
    return backend(DAM_BATCH_SIZE="16")


def upload(client, seed: int) -> str:
    data = jpeg_bytes(96, 64, ((seed * 67) % 256, (seed * 131) % 256, (seed * 29) % 256), seed=seed)
    r = client.post("/upload", files={"file": (f"img{seed}.jpg", data, "application/octet-stream")})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def drain(instance, cursor: str | None) -> tuple[str, str]:
    """One sensor tick that drains the queued uploads into one new batch; returns (batch, cursor)."""
    result = tick(instance, cursor)
    [request] = result.run_requests  # only manifests after the cursor are requested
    return request.partition_key, result.cursor


def build_index(instance, *apps) -> None:
    materialize([search_index], instance=instance, resources=resources())
    for app in apps:
        app.state.catalog.index.refresh()


def listed(client) -> dict[str, str]:
    """Status by id of everything GET /assets lists (one page holds it all here); no id twice."""
    body = client.get("/assets", params={"limit": 100}).json()
    ids = [i["id"] for i in body["items"]]
    assert len(ids) == len(set(ids)), f"an item is listed twice: {ids}"
    assert body["next"] is None
    return {i["id"]: i["status"] for i in body["items"]}


def low_watermark(store) -> str | None:
    return json.loads(store.get(CURRENT_INDEX_KEY))["low_watermark"]


@pytest.mark.slow
def test_older_unfinished_batch_stays_queued_after_newer_batch_is_indexed(env, instance):
    store = make_store(env)
    app = create_app(env)
    with TestClient(app) as client:
        a = [upload(client, s) for s in (1, 2)]
        batch_a, cursor = drain(instance, None)  # manifest written, its run not (yet) done
        b = [upload(client, s) for s in (3, 4)]
        batch_b, cursor = drain(instance, cursor)
        assert batch_a < batch_b
        materialize_batch(instance, batch_b)
        build_index(instance, app)
        expected = {**dict.fromkeys(a, "queued"), **dict.fromkeys(b, "processed")}
        assert listed(client) == expected

    # A restart forgets what this process accepted: only the manifests can tell A is queued.
    restarted = create_app(env)
    with TestClient(restarted) as client:
        assert listed(client) == expected
        for asset_id, status in expected.items():
            assert client.get(f"/assets/{asset_id}").json()["status"] == status
        # A still holds queued uploads, so the index could pass over no manifest yet.
        assert low_watermark(store) is None

        materialize_batch(instance, batch_a)
        build_index(instance, restarted)
        assert low_watermark(store) == batch_b
        assert listed(client) == dict.fromkeys(a + b, "processed")
        for asset_id in a:
            assert client.get(f"/assets/{asset_id}").json()["status"] == "processed"


@pytest.mark.slow
def test_manifest_cache_holds_only_manifests_after_the_low_watermark(env, instance):
    store = make_store(env)
    app = create_app(env)
    catalog = app.state.catalog
    with TestClient(app) as client:
        batches: list[str] = []
        ids: list[str] = []
        cursor = None

        seen = []  # (expected low watermark, snapshot served, pointer), compared at the end

        def check(expected_low: str) -> None:
            listed(client)  # the listing is what fills the cache
            assert catalog.pending.cached_batches <= {b for b in batches if b > expected_low}
            seen.append((expected_low, catalog.snapshot, json.loads(store.get(CURRENT_INDEX_KEY))))

        for round_, materialize_it in enumerate([True, False, True, True]):
            ids.append(upload(client, 10 + round_))
            batch, cursor = drain(instance, cursor)
            batches.append(batch)
            if materialize_it:
                materialize_batch(instance, batch)
                build_index(instance, app)
            # The second batch stalls: the low watermark stays on the first; the cache may hold
            # the stalled batch and the indexed ones after it, never the first.
            check(batches[0])
        assert batches[1] in catalog.pending.cached_batches
        assert listed(client) == {**dict.fromkeys(ids, "processed"), ids[1]: "queued"}

        materialize_batch(instance, batches[1])
        build_index(instance, app)
        check(batches[-1])
        assert catalog.pending.cached_batches == set()
        assert listed(client) == dict.fromkeys(ids, "processed")
        # The API and the pointer agree with the low watermark the test expects at every step.
        for expected, snapshot, pointer in seen:
            assert snapshot.low_watermark == pointer["low_watermark"] == expected


def test_stray_objects_under_batches_neither_stop_nor_become_the_low_watermark(tmp_path):
    store = LocalStore(tmp_path)

    def manifest(n: int) -> str:
        asset_id = f"{n:032x}"
        msg = UploadMessage(
            id=asset_id,
            filename="x.jpg",
            r2_key=f"assets/{asset_id}.jpg",
            mime_type="image/jpeg",
            bytes=1,
            sha256="0" * 64,
            width=1,
            height=1,
            uploaded_at=datetime.now(UTC),
        )
        return write_manifest(store, [msg]).batch

    m1, m2, m3 = manifest(1), manifest(2), manifest(3)
    store.put("batches/0-notes.json", b"not a manifest")  # sorts before every batch key
    store.put("batches/zz-notes.json", b"{}")  # sorts after every batch key
    # The unfinished m2 stops it; the stray object before m1 does not.
    assert advance_low_watermark(store, None, {m1, m3}) == (m1, [m3])
    # Past every batch in the table, but not onto the stray name after them ...
    assert advance_low_watermark(store, m1, {m2, m3}) == (m3, [])
    # ... which would hide every later batch from the queued view.
    m4 = manifest(4)
    assert list(batches_after(store, after=m3)) == [m4]  # names that are no batch key are no manifest
    assert advance_low_watermark(store, m3, set()) == (m3, [])


@pytest.mark.slow
def test_an_index_swap_while_a_page_is_built_lists_no_asset_twice(env, instance):
    """The index poller may swap in the snapshot holding a batch after the page took the queued
    uploads (computed against the older snapshot) and before it read the indexed rows: the page
    then had each of the batch's assets twice, queued and processed (seen once in the Uppy browser
    test, as four cards for two files)."""
    app = create_app(env)
    with TestClient(app) as client:
        ids = {upload(client, seed) for seed in (1, 2)}
        assert listed(client) == dict.fromkeys(ids, "queued")
        batch, _ = drain(instance, None)
        materialize_batch(instance, batch)
        build_index(instance)  # stored, not yet seen by the app's index
        pending = app.state.catalog.listing.pending
        taken = pending.list

        def list_then_swap():
            queued = taken()  # against the snapshot without the batch
            app.state.catalog.index.refresh()  # the poller's swap, right here
            return queued

        pending.list = list_then_swap
        assert listed(client) == dict.fromkeys(ids, "processed")
