"""The orphan sweep: originals whose upload never got a confirmed message go, after the grace
period, and nothing that a marker, a manifest or a table row names is ever touched."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest
from dagster import DefaultSensorStatus, SkipReason, build_sensor_context
from fastapi.testclient import TestClient

from dam_assets.definitions import defs
from dam_assets.maintenance.sweep import sweep_orphans
from dam_assets_tests.conftest import free_port, jpeg_bytes
from dam_assets_tests.pipeline_harness import resources
from dam_core.layout import manifest_key, upload_marker_key
from dam_core.messages import BatchManifest, UploadMessage
from dam_core.queue import make_queue
from dam_core.store import LocalStore, make_store
from dam_ingest_api.main import create_app


def _msg(asset_id: str) -> UploadMessage:
    return UploadMessage(
        id=asset_id,
        filename=f"{asset_id[:6]}.jpg",
        r2_key=f"assets/{asset_id}.jpg",
        mime_type="image/jpeg",
        bytes=10,
        sha256="b" * 64,
        width=1,
        height=1,
        uploaded_at=datetime.now(UTC),
    )


def _age(store, key: str, seconds: float) -> None:
    """Make a local object look `seconds` old (the S3 tests wait instead)."""
    path = store.path(key)
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.fixture(params=["local", "s3"])
def store(request, make_settings):
    env = request.getfixturevalue("s3_env") if request.param == "s3" else {}
    return make_store(make_settings(**env))


@pytest.mark.slow
def test_only_true_orphans_go_and_only_after_the_grace_period(store):
    orphan, marked, in_manifest, in_table = (f"{i:x}" * 32 for i in range(1, 5))
    for aid in (orphan, marked, in_manifest, in_table):
        store.put(f"assets/{aid}.jpg", b"original " + aid.encode())
    store.put("assets/notes.txt", b"not an original of ours")
    store.put(upload_marker_key(marked), _msg(marked).to_json())
    batch = "20261124T101500Z-3fa2c1"
    store.put(
        manifest_key(batch),
        BatchManifest(batch=batch, created_at=datetime.now(UTC), uploads=[_msg(in_manifest)]).to_json(),
    )
    table = lambda: [f"assets/{in_table}.jpg"]  # noqa: E731 - rows of the assets table

    grace = 2.0
    report = sweep_orphans(store, grace_seconds=grace, table_keys=table)
    assert report.deleted == [] and report.old == 0  # all younger than the grace period

    time.sleep(grace + 1.2)  # S3 modification times have whole seconds
    young = "f" * 32
    store.put(f"assets/{young}.jpg", b"stored a moment ago, publish still in flight")
    report = sweep_orphans(store, grace_seconds=grace, table_keys=table)
    assert report.deleted == [f"assets/{orphan}.jpg"], report
    assert report.kept["marker"] == 1 and report.kept["manifest"] == 1 and report.kept["table"] == 1
    left = set(store.list("assets/"))
    assert left == {f"assets/{a}.jpg" for a in (marked, in_manifest, in_table, young)} | {"assets/notes.txt"}


def test_nothing_is_swept_while_messages_wait_in_the_queue(make_settings):
    settings = make_settings()
    store, queue = make_store(settings), make_queue(settings)
    aid = "a" * 32
    store.put(f"assets/{aid}.jpg", b"x")
    _age(store, f"assets/{aid}.jpg", 7200)
    # Its marker write failed, but the message is confirmed and waits: it must not lose its original.
    queue.publish(_msg(aid).to_json())
    report = sweep_orphans(store, grace_seconds=3600, queue=queue)
    assert report.skipped and "waiting" in report.skipped
    assert store.exists(f"assets/{aid}.jpg")
    with queue.consumer() as c:  # drained into a manifest, as the sensor does
        d = c.take(10, 1)
        store.put(
            manifest_key("20261124T101500Z-000001"),
            BatchManifest(batch="20261124T101500Z-000001", created_at=datetime.now(UTC), uploads=[_msg(aid)]).to_json(),
        )
        c.ack(d)
    store.put(f"assets/{'b' * 32}.png", b"y")
    _age(store, f"assets/{'b' * 32}.png", 7200)
    report = sweep_orphans(store, grace_seconds=3600, queue=queue)
    assert report.deleted == [f"assets/{'b' * 32}.png"] and store.exists(f"assets/{aid}.jpg")


def test_a_failed_upload_leaves_an_orphan_that_a_retry_makes_young_and_keeps(make_settings):
    """503 keeps the original (no marker); the sweep would take it; a retry of the same bytes
    re-writes it before publishing, so the sweep's age check leaves it to the new message."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    settings = make_settings(AMQP_URL=dead)
    data = jpeg_bytes(50, 40, seed=61)
    r = TestClient(create_app(settings)).post("/upload", files={"file": ("a.jpg", data, "image/jpeg")})
    assert r.status_code == 503, r.text
    store = LocalStore(settings.data_dir / "store")
    [key] = list(store.list("assets/"))
    assert list(store.list("uploads/")) == []
    _age(store, key, 7200)
    before = store.modified(key)

    good = make_settings(AMQP_URL="")  # the broker is back (here: the embedded queue)
    app = create_app(good, store=store)
    r = TestClient(app).post("/upload", files={"file": ("a.jpg", data, "image/jpeg")})
    assert r.status_code == 202, r.text
    assert (store.modified(key) - before).total_seconds() > 7000  # written again just now
    assert app.state.uploader.markers.flush(10)  # written after the answer
    store.delete(upload_marker_key(r.json()["id"]))  # even with its marker write lost...
    app.state.dam.queue.close()
    report = sweep_orphans(store, grace_seconds=3600)
    assert report.deleted == [] and store.get(key) == data  # ...the fresh write protects it


def test_the_sweep_is_a_dagster_sensor_that_removes_orphans(make_settings, instance):
    settings = make_settings(DAM_ORPHAN_GRACE_SECONDS="60")
    store = make_store(settings)
    orphan, marked = "c" * 32, "d" * 32
    for aid in (orphan, marked):
        store.put(f"assets/{aid}.jpg", b"z" + aid.encode())
        _age(store, f"assets/{aid}.jpg", 600)
    store.put(upload_marker_key(marked), _msg(marked).to_json())

    sensor = defs.resolve_sensor_def("orphan_sweep_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING and "orphan" in sensor.description
    result = sensor(build_sensor_context(instance=instance, resources=resources()))
    assert isinstance(result, SkipReason) and "removed 1 orphan" in result.skip_message, result
    assert list(store.list("assets/")) == [f"assets/{marked}.jpg"]
