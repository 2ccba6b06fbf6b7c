"""Finding images: thumbnails, tags, duplicates, the read API, text and similar search, `dam search`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from dagster import materialize
from fastapi.testclient import TestClient
from PIL import Image

import dam_ingest_api.catalog.search as search_mod
from dam_assets.search.assets import search_index
from dam_assets_tests.conftest import jpeg_bytes, png_bytes
from dam_assets_tests.pipeline_harness import resources, run_pending
from dam_core.index import segments
from dam_core.queue import make_queue
from dam_core.store import make_store
from dam_core.table import make_table
from dam_ingest_api.main import create_app


@pytest.fixture
def env(backend):
    """Settings for one backend, with the tiny models."""
    return backend(DAM_BATCH_SIZE="16", DAM_TAG_THRESHOLD="0", DAM_TAGS_TOP_K="3")


def post(client, data, name="x.jpg"):
    return client.post("/upload", files={"file": (name, data, "application/octet-stream")})


def build_index(instance):
    materialize([search_index], instance=instance, resources=resources())


def edited_copy(data: bytes) -> bytes:
    """The same picture resized and recompressed, as a user's second export would be."""
    img = Image.open(io.BytesIO(data))
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    return buf.getvalue()


@pytest.mark.system
def test_uploads_become_listable_fetchable_searchable_items(env, instance):
    app = create_app(env)
    with TestClient(app) as client:
        original = jpeg_bytes(480, 360, (220, 30, 30), seed=7)
        unrelated = [
            jpeg_bytes(480, 360, c, seed=s)
            for c, s in (((20, 40, 230), 99), ((30, 200, 60), 1234), ((240, 240, 20), 555))
        ]
        first = post(client, original, "red.jpg").json()
        # Queued: accepted but not processed yet; known, never 404.
        assert client.get(f"/assets/{first['id']}").json()["status"] == "queued"
        edit = post(client, edited_copy(original), "red-small.jpg").json()
        others = [post(client, u, f"other{i}.jpg").json() for i, u in enumerate(unrelated)]
        alpha = post(client, png_bytes(300, 200), "alpha.png").json()
        listed = client.get("/assets").json()
        assert {i["id"] for i in listed["items"]} >= {first["id"], edit["id"]}  # queued ones listed too
        assert all(i["status"] == "queued" for i in listed["items"])

        run_pending(instance)
        build_index(instance)
        app.state.catalog.index.refresh()

        item = client.get(f"/assets/{first['id']}").json()
        assert item["status"] == "processed" and item["caption"] and item["filename"] == "red.jpg"
        assert item["width"] == 480 and item["height"] == 360
        assert len(item["tags"]) == 3  # DAM_TAG_THRESHOLD=0 keeps the top 3 labels
        assert item["thumbnail_url"] == f"/assets/{first['id']}/thumbnail"

        # Bytes: the original exactly, the thumbnail a 256 px WebP keeping alpha.
        r = client.get(item["original_url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == original
        r = client.get(item["thumbnail_url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
        assert max(Image.open(io.BytesIO(r.content)).size) == 256
        thumb = Image.open(io.BytesIO(client.get(f"/assets/{alpha['id']}/thumbnail").content))
        assert thumb.mode == "RGBA" and thumb.size == (256, 171)

        # Listing: newest first, paged with an opaque cursor, every id once.
        seen, cursor = [], None
        while True:
            page = client.get("/assets", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            seen += page["items"]
            cursor = page["next"]
            if not cursor:
                break
        assert len(seen) == 6 == len({i["id"] for i in seen})
        stamps = [i["uploaded_at"] for i in seen]
        assert stamps == sorted(stamps, reverse=True)
        assert {i["status"] for i in seen} == {"processed"}

        # Similar: the edited copy ranks above every unrelated image; itself left out.
        sim = client.get(f"/assets/{first['id']}/similar", params={"k": 10}).json()["items"]
        assert first["id"] not in [s["id"] for s in sim]
        assert sim[0]["id"] == edit["id"]
        assert [s["score"] for s in sim] == sorted((s["score"] for s in sim), reverse=True)

        # Text search: ranked by cosine, every indexed image has a score, k is respected.
        res = client.get("/search", params={"q": "a red photo", "k": 4}).json()["items"]
        assert len(res) == 4 and [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)

        # Near duplicates at a threshold the edited copy clears.
        dup = client.get(f"/assets/{first['id']}/duplicates").json()
        assert dup["threshold"] == 0.95
        assert all(d["score"] >= 0.95 for d in dup["items"])
        con = make_table(env).connect()
        pairs = con.execute("SELECT a, b, score FROM near_duplicates").fetchall()
        assert all(a < b and s >= 0.95 for a, b, s in pairs)
        api_pairs = {tuple(sorted((first["id"], d["id"]))) for d in dup["items"]}
        assert api_pairs == {(a, b) for a, b, _ in pairs if first["id"] in (a, b)}

        # The shell answers from the same index.
        proc = subprocess.run(
            [sys.executable, "-m", "dam_cli.main", "search", "a red photo", "--k", "3", "--format", "json"],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert [r["id"] for r in json.loads(proc.stdout)] == [r["id"] for r in res[:3]]
        assert others  # uploaded and processed


def test_duplicate_upload_returns_first_id_and_stores_nothing(env, instance):
    app = create_app(env)
    with TestClient(app) as client:
        data = jpeg_bytes(200, 150, seed=3)
        first = post(client, data, "first.jpg")
        assert first.status_code == 202
        assert app.state.uploader.markers.flush(10)  # the marker is written after the answer
        store, queue = make_store(env), make_queue(env)
        before = sorted(store.list(""))
        depth = queue.depth()
        again = post(client, data, "second-name.jpg")
        assert again.status_code == 200
        body = again.json()
        assert body["duplicate"] is True and body["id"] == first.json()["id"]
        assert body["filename"] == "first.jpg" and body["status"] == "queued"
        assert sorted(store.list("")) == before and queue.depth() == depth
        run_pending(instance)
        build_index(instance)
        app.state.catalog.index.refresh()
        third = post(client, data, "third.jpg").json()
        assert third["duplicate"] and third["status"] == "processed"


def test_concurrent_identical_uploads_give_one_asset(env, instance):
    with TestClient(create_app(env)) as client:
        data = jpeg_bytes(256, 256, seed=11)
        results = []
        barrier = threading.Barrier(4)

        def send():
            barrier.wait()
            results.append(post(client, data, "same.jpg"))

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.status_code in (200, 202) for r in results)
        assert len({r.json()["id"] for r in results}) == 1
        assert len([k for k in make_store(env).list("assets/")]) == 1
        run_pending(instance)
        assert make_table(env).connect().execute("SELECT count(*) FROM assets").fetchall() == [(1,)]


@pytest.mark.parametrize(
    "path, status",
    [
        ("/search?q=&k=10", 400),
        ("/search?q=%20%20&k=10", 400),
        ("/search?k=10", 422),
        ("/search?q=dog&k=0", 422),
        ("/search?q=dog&k=1001", 422),
        ("/search?q=dog&k=abc", 422),
        ("/assets?limit=0", 422),
        ("/assets?limit=5000", 422),
        ("/assets?cursor=not-a-cursor", 400),
        ("/assets?cursor=" + "A" * 600, 422),
        ("/assets/NOT-AN-ID", 422),
        ("/assets/" + "0" * 31, 422),
        ("/assets/" + "0" * 32, 404),
        ("/assets/" + "0" * 32 + "/similar", 404),
        ("/assets/" + "0" * 32 + "/similar?k=0", 422),
        ("/assets/" + "0" * 32 + "/original", 404),
        ("/assets/" + "0" * 32 + "/thumbnail", 404),
        ("/assets/..%2F..%2Fetc%2Fpasswd/original", 404),
    ],
)
def test_bad_parameters_get_clear_4xx(make_settings, path, status):
    with TestClient(create_app(make_settings())) as client:
        r = client.get(path)
        assert r.status_code == status, r.text
        assert r.json().get("detail")


def test_read_api_needs_the_key_when_one_is_set(make_settings):
    with TestClient(create_app(make_settings(DAM_API_KEY="s3cret-key"))) as client:
        for path in ("/assets", "/assets/" + "0" * 32, "/search?q=dog"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/assets", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert client.get("/").status_code == 200  # the page itself loads, then asks for the key


def test_new_index_version_is_picked_up_without_restart(make_settings, tiny_models, instance):
    env = make_settings(**tiny_models, DAM_INDEX_POLL_SECONDS="0.2")
    app = create_app(env)
    with TestClient(app) as client:
        a = post(client, jpeg_bytes(120, 120, seed=21), "a.jpg").json()
        run_pending(instance)
        build_index(instance)

        deadline = time.monotonic() + 10
        while client.get(f"/assets/{a['id']}").json()["status"] != "processed":
            assert time.monotonic() < deadline, "index version not picked up"
            time.sleep(0.2)
        b = post(client, jpeg_bytes(120, 120, seed=22), "b.jpg").json()
        run_pending(instance)
        build_index(instance)
        deadline = time.monotonic() + 10
        while client.get(f"/assets/{b['id']}").json()["status"] != "processed":
            assert time.monotonic() < deadline, "second index version not picked up"
            time.sleep(0.2)
        # Re-materialized rows never appear twice.
        ids = [i["id"] for i in client.get("/assets").json()["items"]]
        assert sorted(ids) == sorted({a["id"], b["id"]})


def test_hnsw_path_serves_search_and_similar(make_settings, tiny_models, instance, monkeypatch):
    """Above DAM_EXACT_SEARCH_MAX the index is an HNSW graph; results keep the same contract."""
    # Every graph "big", searched at HNSW_EXPANSION_SEARCH: not usearch's default after a restore.
    monkeypatch.setattr(segments, "HNSW_SMALL_GRAPH", 1)
    env = make_settings(**tiny_models, DAM_EXACT_SEARCH_MAX="0")
    app = create_app(env)
    with TestClient(app) as client:
        original = jpeg_bytes(400, 300, (220, 30, 30), seed=7)
        first = post(client, original, "a.jpg").json()
        edit = post(client, edited_copy(original), "b.jpg").json()
        for i, c in enumerate(((20, 40, 230), (30, 200, 60))):
            post(client, jpeg_bytes(400, 300, c, seed=100 + i), f"o{i}.jpg")
        run_pending(instance)
        build_index(instance)
        app.state.catalog.index.refresh()
        assert app.state.catalog.snapshot.hnsw is not None
        # The graph loaded from the store searches as wide as the one that was built.
        assert app.state.catalog.snapshot.hnsw.expansion_search == segments.HNSW_EXPANSION_SEARCH
        sim = client.get(f"/assets/{first['id']}/similar", params={"k": 3}).json()["items"]
        assert [s["id"] for s in sim][0] == edit["id"] and first["id"] not in [s["id"] for s in sim]
        assert len(client.get("/search", params={"q": "red", "k": 10}).json()["items"]) == 4


def test_a_repeated_text_query_is_encoded_once(env, instance, monkeypatch):
    """The text encoder is most of a search's time: pages of one query reuse its vector (a bounded LRU)."""
    monkeypatch.setattr(search_mod, "QUERY_CACHE_SIZE", 2)
    app = create_app(env)
    with TestClient(app) as client:
        for i, c in enumerate(((220, 30, 30), (20, 40, 230))):
            assert post(client, jpeg_bytes(160, 120, c, seed=300 + i), f"{i}.jpg").status_code == 202
        run_pending(instance)
        build_index(instance)
        app.state.catalog.index.refresh()
        search = app.state.catalog.search
        encoder = search._text_encoder(app.state.catalog.snapshot.model)
        calls = []
        real = encoder.embed_texts
        monkeypatch.setattr(encoder, "embed_texts", lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw))
        first = client.get("/search", params={"q": "a red photo", "k": 2}).json()
        again = client.get("/search", params={"q": "a red photo", "k": 2}).json()
        assert first == again and calls == [["a red photo"]]
        for q in ("blue", "green", "a red photo"):  # two newer queries push it out of a cache of 2
            client.get("/search", params={"q": q, "k": 2})
        assert calls == [["a red photo"], ["blue"], ["green"], ["a red photo"]]
