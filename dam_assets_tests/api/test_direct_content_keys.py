"""Direct single PUTs to the original's own key (dam_ingest_api/content_puts.py), against real parts.

moto's S3 server over HTTP behind the strict front (SigV4, expiry, and S3's checksum check that
moto lacks: faults/strict_s3.py), the real RabbitMQ; one test goes to moto with no front, as a
store that ignores checksums, and runs the real pipeline.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta

import httpx
from dagster import DagsterInstance

from dam_assets.maintenance.sweep import sweep_orphans
from dam_assets_tests.api.test_hostile_inputs import jpeg_header_claiming_9000x9000
from dam_assets_tests.conftest import jpeg_bytes, png_bytes
from dam_assets_tests.pipeline_harness import run_pending
from dam_core.layout import INCOMING_PREFIX, upload_marker_key
from dam_core.queue import make_queue
from dam_core.store import make_store
from dam_core.table import make_table


def sign(client, data: bytes, filename="photo.jpg", media_type="image/jpeg", **override) -> dict:
    """GET /s3/params declaring the bytes' digest, size and type (what makes a content key)."""
    query = {
        "filename": filename,
        "type": media_type,
        "metadata[sha256]": hashlib.sha256(data).hexdigest(),
        "metadata[size]": str(len(data)),
    }
    query.update({f"metadata[{k}]": str(v) for k, v in override.items()})
    r = client.get("/s3/params", params=query)
    assert r.status_code == 200, r.text
    return r.json()


def put(params: dict, data: bytes) -> httpx.Response:
    return httpx.put(params["url"], content=data, headers=params["headers"])


def complete(client, key: str) -> httpx.Response:
    return client.post("/s3/complete", params={"key": key})


def queued(settings) -> int:
    return make_queue(settings).depth()


def wait_for(check, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


def test_a_declared_put_lands_at_its_original_key_and_is_queued_once(make_api):
    client, settings = make_api()
    data = jpeg_bytes(320, 200, seed=7)
    sha = hashlib.sha256(data).hexdigest()
    params = sign(client, data, "Ferien in Zürich 🌅.jpg")
    key = params["key"]
    assert key == f"assets/{sha[:32]}.jpg" and params["fields"] == {"key": key}
    assert params["headers"]["If-None-Match"] == "*" and "x-amz-checksum-sha256" in params["headers"]
    assert put(params, data).status_code == 200

    r = complete(client, key)
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["id"], body["sha256"], body["bytes"], body["r2_key"]) == (sha[:32], sha, len(data), key)
    assert (body["width"], body["height"], body["mime_type"]) == (320, 200, "image/jpeg")
    assert body["filename"] == "Ferien in Zürich 🌅.jpg" and body["status"] == "queued"
    store = make_store(settings)
    assert store.get(key) == data and list(store.list(INCOMING_PREFIX)) == []  # nothing staged, nothing copied
    assert queued(settings) == 1
    wait_for(lambda: store.exists(upload_marker_key(sha[:32])))

    # A replayed completion, a replayed PUT, and the same bytes again: nothing more is queued.
    again = complete(client, key)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert put(params, data).status_code == 412  # If-None-Match: an original is never replaced
    second = sign(client, data, "copy.jpg")
    assert second["key"] == key and put(second, data).status_code == 412
    r = complete(client, key)
    assert r.status_code == 200 and r.json()["duplicate"] is True and r.json()["filename"] == "Ferien in Zürich 🌅.jpg"
    assert queued(settings) == 1 and store.get(key) == data


def test_the_store_takes_only_the_declared_bytes_at_the_signed_key(make_api):
    client, settings = make_api()
    data = jpeg_bytes(64, 64, seed=1)
    other = data[:-40] + bytes(b ^ 1 for b in data[-40:-2]) + data[-2:]  # the same size, other bytes
    params = sign(client, data)
    refused = put(params, other)  # S3 and R2 check x-amz-checksum-sha256 (so does the strict front)
    assert refused.status_code == 400 and "BadDigest" in refused.text
    without = {k: v for k, v in params["headers"].items() if k != "If-None-Match"}
    assert httpx.put(params["url"], content=data, headers=without).status_code == 403  # signed in
    for target in ("assets/" + "0" * 32 + ".jpg", "uploads/x.json", INCOMING_PREFIX + "0" * 32):
        moved = params["url"].replace(params["key"], target)
        assert httpx.put(moved, content=data, headers=params["headers"]).status_code == 403
    r = complete(client, params["key"])
    assert r.status_code == 409 and "nothing has been uploaded" in r.json()["detail"]
    assert list(make_store(settings).list("assets/")) == [] and queued(settings) == 0


def test_declarations_the_bytes_do_not_bear_out_are_refused_and_the_object_removed(make_api):
    client, settings = make_api(DAM_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024))
    store = make_store(settings)
    jpeg, png = jpeg_bytes(80, 60, seed=3), png_bytes(40, 30)

    params = sign(client, jpeg, "x.png", media_type="image/png")  # JPEG bytes declared a PNG
    assert params["key"].endswith(".png") and put(params, jpeg).status_code == 200
    r = complete(client, params["key"])
    assert r.status_code == 415 and "image/jpeg" in r.json()["detail"]
    assert not store.exists(params["key"])

    params = sign(client, png, "p.png", media_type="image/png", size=len(png) + 5)
    assert put(params, png).status_code == 403  # Content-Length is signed: the store takes no other size
    assert complete(client, params["key"]).status_code == 409 and not store.exists(params["key"])

    text = b"<html>not a photo</html>" * 20
    params = sign(client, text, "t.jpg")
    assert put(params, text).status_code == 200
    r = complete(client, params["key"])
    assert r.status_code == 415 and "not a supported image" in r.json()["detail"]
    assert not store.exists(params["key"])

    cut = jpeg_header_claiming_9000x9000()  # 1.4 KB that declare more pixels than they can hold
    params = sign(client, cut, "cut.jpg")
    assert put(params, cut).status_code == 200
    r = complete(client, params["key"])
    assert r.status_code == 422 and "truncated" in r.json()["detail"]

    r = client.get(
        "/s3/params",
        params={"type": "image/jpeg", "metadata[sha256]": "a" * 64, "metadata[size]": str(3 * 1024 * 1024)},
    )
    assert r.status_code == 413 and "DAM_MAX_UPLOAD_BYTES" in r.json()["detail"]  # before a byte is sent
    assert complete(client, "assets/../uploads/x.jpg").status_code == 400
    assert list(store.list("assets/")) == [] and queued(settings) == 0


def test_an_original_put_with_no_completion_is_removed_by_the_orphan_sweep(make_api):
    client, settings = make_api()
    data = jpeg_bytes(48, 48, seed=5)
    params = sign(client, data)
    assert put(params, data).status_code == 200
    store = make_store(settings)
    young = sweep_orphans(store, grace_seconds=settings.dam_orphan_grace_seconds)
    assert young.deleted == [] and store.exists(params["key"])
    later = datetime.now(UTC) + timedelta(seconds=settings.dam_orphan_grace_seconds + 60)
    report = sweep_orphans(store, grace_seconds=settings.dam_orphan_grace_seconds, now=lambda: later)
    assert report.deleted == [params["key"]] and not store.exists(params["key"])
    assert complete(client, params["key"]).status_code == 409


def test_a_store_that_ignores_the_checksum_gives_an_error_row_never_a_row_of_other_bytes(
    make_api, moto_endpoint, tiny_models
):
    # moto with no front: it keeps whatever bytes come, as a store that ignores x-amz-checksum-sha256.
    client, settings = make_api(endpoint=moto_endpoint, **tiny_models, DAM_BATCH_SIZE="8")
    good, declared = jpeg_bytes(160, 120, seed=11), jpeg_bytes(96, 64, seed=12)
    sent = declared[:-40] + bytes(b ^ 1 for b in declared[-40:-2]) + declared[-2:]  # same size, other bytes
    params = sign(client, good, "good.jpg")
    assert put(params, good).status_code == 200
    first = complete(client, params["key"])
    lie = sign(client, declared, "lie.jpg")
    assert put(lie, sent).status_code == 200  # stored: this store checks nothing
    second = complete(client, lie["key"])
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    # A size that is not the declared one: the completion sees it (Content-Range) and removes the object.
    other = jpeg_bytes(64, 64, seed=14)
    short = sign(client, other, "short.jpg", size=len(other) + 5)
    assert put(short, other).status_code == 200
    r = complete(client, short["key"])
    assert r.status_code == 422 and "declared" in r.json()["detail"]
    assert not make_store(settings).exists(short["key"])

    with DagsterInstance.ephemeral() as instance:
        batches, _ = run_pending(instance)
    assert len(batches) == 1
    con = make_table(settings).connect()
    rows = {r[0]: r[1:] for r in con.execute("SELECT id, filename, error, caption FROM assets").fetchall()}
    assert rows[first.json()["id"]][:2] == ("good.jpg", None) and rows[first.json()["id"]][2]
    filename, error, caption = rows[second.json()["id"]]
    assert filename == "lie.jpg" and "SHA-256" in error and caption is None


def test_a_deleted_asset_put_again_is_a_new_upload(make_api):
    client, settings = make_api()
    data = jpeg_bytes(72, 48, seed=21)
    params = sign(client, data, "first.jpg")
    assert put(params, data).status_code == 200
    first = complete(client, params["key"])
    assert first.status_code == 202
    store = make_store(settings)
    wait_for(lambda: store.exists(upload_marker_key(first.json()["id"])))
    assert client.delete(f"/assets/{first.json()['id']}").status_code == 200
    assert not store.exists(params["key"])  # the original and the marker went with it

    again = sign(client, data, "again.jpg")
    assert again["key"] == params["key"] and put(again, data).status_code == 200
    r = complete(client, again["key"])
    assert r.status_code == 202 and r.json()["filename"] == "again.jpg"
    assert client.get(f"/assets/{r.json()['id']}").json()["status"] == "queued"
    assert queued(settings) == 2
