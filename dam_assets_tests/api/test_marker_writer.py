"""Upload markers are written after the answer: the 202 waits for the original and the confirm only.

Real app under uvicorn, real RabbitMQ, moto's S3 server over HTTP; marker writes are held back
by a gate on the real store (fault injection: the store answers, just late).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.faults.server import serve
from dam_core.layout import MARKERS_PREFIX, upload_marker_key
from dam_core.queue import make_queue
from dam_core.store import make_store
from dam_ingest_api.main import create_app


class GatedMarkers:
    """The real store, with marker PUTs waiting until `gate` opens (a slow store for markers only)."""

    def __init__(self, store):
        self._store = store
        self.gate = threading.Event()
        self.waiting = 0

    def put(self, key, data, content_type=None):
        if key.startswith(MARKERS_PREFIX):
            self.waiting += 1
            assert self.gate.wait(30), "the marker gate never opened"
        return self._store.put(key, data, content_type=content_type)

    def __getattr__(self, name):
        return getattr(self._store, name)


def _post(url: str, data: bytes, name: str = "a.jpg") -> httpx.Response:
    return httpx.post(f"{url}/upload", files={"file": (name, data, "image/jpeg")}, timeout=30)


@pytest.mark.system
def test_the_202_does_not_wait_for_the_marker_and_a_repeat_in_the_window_is_a_duplicate(
    make_settings, s3_env, rabbit_url, queue_name
):
    settings = make_settings(**s3_env, AMQP_URL=rabbit_url, DAM_QUEUE=queue_name)
    real = make_store(settings)
    gated = GatedMarkers(real)
    app = create_app(settings, store=gated)
    data = jpeg_bytes(96, 72, seed=901)
    with serve(app) as url:
        first = _post(url, data)
        assert first.status_code == 202, first.text
        asset_id = first.json()["id"]
        # Answered while the marker write is still held: the client did not pay for it.
        assert not real.exists(upload_marker_key(asset_id))
        # The same bytes again, to the same process, before the marker lands: still a
        # duplicate (the writer's pending uploads are consulted), nothing queued twice.
        again = _post(url, data, "again.jpg")
        assert again.status_code == 200, again.text
        assert again.json()["id"] == asset_id and again.json()["filename"] == "a.jpg"
        # Shown as queued by this process meanwhile.
        assert httpx.get(f"{url}/assets/{asset_id}", timeout=10).json()["status"] == "queued"
        gated.gate.set()
        deadline = time.monotonic() + 10
        while not real.exists(upload_marker_key(asset_id)):
            assert time.monotonic() < deadline, "the marker was never written"
            time.sleep(0.02)
    queue = make_queue(settings)
    try:
        assert queue.depth() == 1
    finally:
        queue.close()


@pytest.mark.system
def test_stopping_the_api_waits_for_the_markers_in_flight(make_settings, s3_env, rabbit_url, queue_name):
    settings = make_settings(**s3_env, AMQP_URL=rabbit_url, DAM_QUEUE=queue_name)
    real = make_store(settings)
    gated = GatedMarkers(real)
    app = create_app(settings, store=gated)
    images = [jpeg_bytes(64, 48, seed=910 + i) for i in range(3)]
    with serve(app) as url:
        ids = []
        for i, data in enumerate(images):
            r = _post(url, data, f"{i}.jpg")
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        deadline = time.monotonic() + 10
        while gated.waiting < len(ids):
            assert time.monotonic() < deadline, "the marker writes never started"
            time.sleep(0.02)
        # The server is asked to stop now (leaving `serve`); the gate opens a moment later.
        threading.Timer(0.5, gated.gate.set).start()
    for asset_id in ids:
        assert real.exists(upload_marker_key(asset_id)), f"{asset_id}: marker lost at shutdown"


@pytest.mark.system
def test_a_delete_right_after_the_202_waits_for_the_marker_and_leaves_none(
    make_settings, s3_env, rabbit_url, queue_name
):
    """The marker write is in flight when the DELETE arrives: the delete waits for it, then removes it
    (else the late write would land after the delete and leave a marker of a deleted upload)."""
    settings = make_settings(**s3_env, AMQP_URL=rabbit_url, DAM_QUEUE=queue_name)
    real = make_store(settings)
    gated = GatedMarkers(real)
    app = create_app(settings, store=gated)
    with serve(app) as url:
        r = _post(url, jpeg_bytes(80, 60, seed=930))
        assert r.status_code == 202, r.text
        asset_id = r.json()["id"]
        deadline = time.monotonic() + 10
        while gated.waiting < 1:
            assert time.monotonic() < deadline, "the marker write never started"
            time.sleep(0.02)
        threading.Timer(0.5, gated.gate.set).start()
        gone = httpx.delete(f"{url}/assets/{asset_id}", timeout=30)
        assert gone.status_code == 200, gone.text
        assert gated.gate.is_set()  # it did wait for the write
        assert not real.exists(upload_marker_key(asset_id))
        assert list(real.list(f"assets/{asset_id}")) == []
        assert httpx.get(f"{url}/assets/{asset_id}", timeout=10).status_code == 404
