"""Upload over the API -> sensor -> materialized batch -> rows through `dam sql`, on both backends."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from dagster import AssetKey, materialize
from fastapi.testclient import TestClient

import dam_assets.config as config_module
import dam_assets.enrichment.assets as assets_module
from dam_assets.ingest.draining import drain
from dam_assets.ingest.partitions import batches_partitions_def
from dam_assets.search.assets import search_segment
from dam_assets_tests.conftest import jpeg_bytes, png_bytes
from dam_assets_tests.pipeline_harness import (
    BATCH_ASSETS,
    dam_sql,
    materialize_batch,
    resources,
    run_pending,
    tick,
)
from dam_core.layout import manifest_key
from dam_core.manifests import is_batch_key, write_manifest
from dam_core.messages import UploadMessage
from dam_core.queue import make_queue
from dam_core.store import make_store
from dam_core.table import make_table
from dam_ingest_api.main import create_app


@pytest.fixture
def env(backend):
    """Settings for one backend, with the tiny models."""
    return backend(DAM_BATCH_SIZE="8")


def upload(client, data: bytes, name: str):
    r = client.post("/upload", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == 202, r.text
    return r.json()


def rows(query: str) -> list[dict]:
    proc = dam_sql(query, dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_upload_to_sql_end_to_end(env, instance):
    client = TestClient(create_app(env))
    sent = [
        upload(client, jpeg_bytes(640, 480, (200, 30, 30)), "red.jpg"),
        upload(client, jpeg_bytes(300, 500, (30, 30, 200)), "blue portrait.jpg"),
        upload(client, png_bytes(96, 64), "green.png"),
    ]
    batches, cursor = run_pending(instance)
    assert len(batches) == 1 and is_batch_key(batches[0])
    assert instance.has_dynamic_partition(batches_partitions_def.name, batches[0])
    assert make_queue(env).depth() == 0

    got = rows(
        "SELECT id, filename, caption, error, len(embedding) AS dim, width, height, batch FROM assets ORDER BY filename"
    )
    assert sorted(r["id"] for r in got) == sorted(s["id"] for s in sent)
    for r in got:
        assert r["error"] is None
        assert r["caption"] and r["caption"].strip()
        assert r["dim"] > 0
        assert r["batch"] == batches[0]
    assert {r["filename"] for r in got} == {"red.jpg", "blue portrait.jpg", "green.png"}

    store = make_store(env)
    for s in sent:
        vec = json.loads(store.get(s["vector_key"]))
        assert vec["id"] == s["id"] and len(vec["embedding"]) == got[0]["dim"]
    assert store.exists(manifest_key(batches[0]))

    # A second tick with an empty queue requests nothing new.
    again = tick(instance, cursor)
    assert not again.run_requests


def test_rematerialize_and_redelivery_keep_one_row_per_id(env, instance):
    client = TestClient(create_app(env))
    first = upload(client, jpeg_bytes(200, 200, (10, 120, 10)), "a.jpg")
    upload(client, jpeg_bytes(200, 200, (120, 10, 10)), "b.jpg")
    (batch,), cursor = run_pending(instance)

    # Re-materializing overwrites the batch's file instead of appending to it.
    materialize_batch(instance, batch)
    con = make_table(env).connect()
    assert con.execute("SELECT count(*) FROM assets_all").fetchone()[0] == 2

    # A redelivered message (same upload again) lands in a second batch.
    make_queue(env).publish(_message_for(env, first["id"]))
    batches, cursor = run_pending(instance, cursor)
    assert len(batches) == 1 and batches[0] != batch
    con = make_table(env).connect()
    # The later batch owns the id: its commit deleted the first batch's row of it.
    assert con.execute("SELECT count(*) FROM assets_all").fetchone()[0] == 2
    assert con.execute("SELECT count(*), count(DISTINCT id) FROM assets").fetchone() == (2, 2)
    assert con.execute("SELECT batch FROM assets WHERE id = $id", {"id": first["id"]}).fetchone() == (batches[0],)


def _message_for(settings, asset_id: str) -> bytes:
    """The manifest's copy of an upload's message, re-published as a redelivery would."""
    store = make_store(settings)
    for key in store.list("batches/"):
        manifest = json.loads(store.get(key))
        for u in manifest["uploads"]:
            if u["id"] == asset_id:
                return UploadMessage.model_validate(u).to_json()
    raise AssertionError("upload not found in any manifest")


def test_corrupt_and_missing_images_give_error_rows_and_a_successful_run(env, instance):
    client = TestClient(create_app(env))
    good = upload(client, jpeg_bytes(320, 240), "good.jpg")
    store, queue = make_store(env), make_queue(env)
    corrupt_id, missing_id = "c" * 32, "d" * 32
    corrupt = b"\xff\xd8\xff\xe0 this is not really a jpeg"
    store.put(f"assets/{corrupt_id}.jpg", corrupt)
    for asset_id in (corrupt_id, missing_id):
        queue.publish(
            UploadMessage(
                id=asset_id,
                filename=f"{asset_id[:4]}.jpg",
                r2_key=f"assets/{asset_id}.jpg",
                mime_type="image/jpeg",
                bytes=10,
                sha256=hashlib.sha256(corrupt).hexdigest(),
                width=10,
                height=10,
                uploaded_at=datetime.now(UTC),
            ).to_json()
        )
    (batch,), _ = run_pending(instance)  # raises if the run failed
    got = {r["id"]: r for r in rows("SELECT id, caption, error FROM assets")}
    assert got[good["id"]]["error"] is None and got[good["id"]]["caption"]
    assert "decode" in got[corrupt_id]["error"]
    assert "not found" in got[missing_id]["error"]
    assert got[corrupt_id]["caption"] is None


def test_malformed_messages_are_dead_lettered_and_do_not_block(env, instance):
    client = TestClient(create_app(env))
    queue = make_queue(env)
    queue.publish(b"this is not json")
    queue.publish(json.dumps({"id": "e" * 32, "filename": "x.jpg"}).encode())
    good = upload(client, jpeg_bytes(128, 128), "after.jpg")
    batches, _ = run_pending(instance)
    assert len(batches) == 1
    assert [r["id"] for r in rows("SELECT id FROM assets")] == [good["id"]]
    dead = queue.dead_letters()
    assert len(dead) == 2
    reasons = [d.headers["x-dam-reason"] for d in dead]
    assert all("unparseable upload message" in r for r in reasons)
    assert any("r2_key" in r for r in reasons)  # names the missing field
    assert queue.depth() == 0


def test_manifest_without_partition_is_reconciled(env, instance):
    """A crash after the ack but before Dagster stored the partition loses nothing."""
    store = make_store(env)
    client = TestClient(create_app(env))
    sent = upload(client, jpeg_bytes(64, 64), "orphan.jpg")
    # Simulate the crashed tick: the queue is drained and the manifest written, nothing else.
    report = drain(make_queue(env), store, batch_size=8, budget_seconds=5)
    (orphan,) = [b.batch for b in report.batches]
    assert not instance.has_dynamic_partition(batches_partitions_def.name, orphan)
    batches, _ = run_pending(instance)
    assert batches == [orphan]
    assert [r["id"] for r in rows("SELECT id FROM assets")] == [sent["id"]]
    # Run keys make a repeated request harmless: the daemon skips a run_key it has seen.
    assert all(r.run_key == r.partition_key for r in tick(instance, None).run_requests)


def test_a_tick_on_an_empty_queue_takes_an_upload_that_arrives_during_its_wait(env):
    """The sensor's long poll: drain waits on an empty queue (first_wait_seconds), so an upload that
    arrives 1 s into the tick is in this tick's batch, and the drain ends once the queue is quiet."""
    store, queue = make_store(env), make_queue(env)
    client = TestClient(create_app(env))
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(lambda: (time.sleep(1.0), upload(client, jpeg_bytes(64, 64), "late.jpg"))[1])
        started = time.monotonic()
        report = drain(queue, store, batch_size=8, budget_seconds=10, first_wait_seconds=5)
        took = time.monotonic() - started
    assert [u.id for b in report.batches for u in b.uploads] == [sent.result()["id"]]
    assert took < 4.5  # ended after the upload and a quiet wait_seconds, not at the first wait's end
    assert queue.depth() == 0


def test_write_manifest_never_overwrites(env):
    store = make_store(env)
    keys = {write_manifest(store, []).batch for _ in range(50)}
    assert len(keys) == 50 and keys == set(sorted(keys))


def test_changing_caption_model_changes_code_version(make_settings, monkeypatch):
    def load():  # a code location (re)loading: settings read once, then the definitions
        importlib.reload(config_module)
        return importlib.reload(assets_module)

    make_settings(DAM_CAPTION_MODEL="Salesforce/blip-image-captioning-base")
    before = load().image_enrichment.code_versions_by_key
    monkeypatch.setenv("DAM_CAPTION_MODEL", "Salesforce/blip-image-captioning-large")
    after = load().image_enrichment.code_versions_by_key
    monkeypatch.setenv("DAM_CAPTION_MODEL", "Salesforce/blip-image-captioning-base")
    load()
    cap, emb = assets_module.CAPTIONS, assets_module.EMBEDDINGS
    assert before[cap] != after[cap]
    assert "blip-image-captioning-large" in after[cap]
    assert before[emb] == after[emb]


def test_a_backfill_run_holds_several_batches(make_settings, tiny_models, instance):
    """What a backfill launched from the asset graph runs (BackfillPolicy.multi_run): one run over a range of batches."""
    settings = make_settings(**tiny_models, DAM_BATCH_SIZE="1")
    client = TestClient(create_app(settings))
    sent = {upload(client, jpeg_bytes(200 + 40 * i, 150, seed=i), f"{i}.jpg")["id"] for i in range(3)}
    # One tick drains them into three batches; the runs it requests are not executed.
    batches = sorted(r.partition_key for r in tick(instance, None).run_requests or [])
    assert len(batches) == 3

    result = materialize(
        [*BATCH_ASSETS, search_segment],
        instance=instance,
        resources=resources(),
        tags={"dagster/asset_partition_range_start": batches[0], "dagster/asset_partition_range_end": batches[-1]},
    )
    assert result.success
    got = rows("SELECT id, batch, caption, error FROM assets")
    assert {r["id"] for r in got} == sent and {r["batch"] for r in got} == set(batches)
    assert all(r["error"] is None and r["caption"] for r in got)
    for key in ("upload_batch", "image_captions", "asset_metadata", "search_segment"):
        assert instance.get_materialized_partitions(AssetKey(key)) == set(batches), key
    captions = instance.get_latest_materialization_event(AssetKey("image_captions")).asset_materialization.metadata
    assert captions["batches"].value == 3 and captions["images"].value == 3
    table = instance.get_latest_materialization_event(AssetKey("asset_metadata")).asset_materialization.metadata
    assert table["dagster/row_count"].value == 3
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 4 and all(c.passed for c in checks), checks
    for assets_def in (*BATCH_ASSETS, search_segment):
        assert assets_def.backfill_policy.max_partitions_per_run == settings.dam_backfill_batches_per_run
