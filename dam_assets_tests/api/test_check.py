"""POST /assets/check: each digest's state agrees with GET /assets/{id} (queued, processed, error,
deleted, absent), across API processes too; hostile bodies are a 4xx, never a 500; the key is
checked before the body is read; a stalled or oversized body over a real socket is cut off."""

from __future__ import annotations

import hashlib
import json

import pytest
from dagster import materialize
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from dam_assets.search.assets import search_index
from dam_assets_tests.conftest import jpeg_bytes, png_bytes
from dam_assets_tests.faults.http import send_raw
from dam_assets_tests.faults.server import serve
from dam_assets_tests.pipeline_harness import resources, run_pending
from dam_core.store import make_store
from dam_ingest_api.main import create_app
from dam_ingest_api.routes.check import MAX_BODY_BYTES, MAX_DIGESTS, MAX_ERRORS

CHECK = "/assets/check"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(client: TestClient, data: bytes, name: str = "a.jpg") -> str:
    """Upload the bytes (202); returns their SHA-256."""
    return uploaded(client, data, name)["sha256"]


def uploaded(client: TestClient, data: bytes, name: str = "a.jpg") -> dict:
    """Upload the bytes (202); returns the answer."""
    r = client.post("/upload", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == 202, r.text
    assert r.json()["sha256"] == sha(data)
    return r.json()


def states(client: TestClient, *digests: str) -> list[str]:
    """The states answered, in the order sent; the answer checked against its OpenAPI schema."""
    r = client.post(CHECK, json={"sha256": list(digests)})
    assert r.status_code == 200, r.text
    doc = client.get("/openapi.json").json()
    schema = doc["paths"][CHECK]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": doc["components"]}).validate(r.json())
    items = r.json()["items"]
    assert [(i["sha256"], i["id"]) for i in items] == [(d, d[:32]) for d in digests]
    return [i["state"] for i in items]


def get_status(client: TestClient, digest: str) -> str:
    """What GET /assets/{id} says of the digest's id: its status, or `404`."""
    r = client.get(f"/assets/{digest[:32]}")
    assert r.status_code in (200, 404), r.text
    return r.json()["status"] if r.status_code == 200 else "404"


def assert_agrees_with_get(client: TestClient, *digests: str) -> None:
    for digest, state in zip(digests, states(client, *digests), strict=True):
        expected = {"deleted": "404", "absent": "404"}.get(state, state)
        assert get_status(client, digest) == expected, (digest, state)


@pytest.fixture
def client(make_settings):
    with TestClient(create_app(make_settings())) as c:
        yield c


def test_queued_deleted_absent_and_repeats_in_the_order_sent(client):
    queued = upload(client, jpeg_bytes(64, 48, seed=1))
    deleted = upload(client, png_bytes(20, 20), "b.png")
    assert client.delete(f"/assets/{deleted[:32]}").status_code == 200
    absent = sha(jpeg_bytes(64, 48, seed=3))

    assert states(client, queued, absent, deleted, queued, absent) == [
        "queued",
        "absent",
        "deleted",
        "queued",
        "absent",
    ]
    assert_agrees_with_get(client, queued, absent, deleted)
    assert states(client) == []  # nothing asked, nothing answered


def test_a_deleted_asset_uploaded_again_is_queued_again(client):
    data = jpeg_bytes(64, 48, seed=4)
    digest = upload(client, data)
    assert client.delete(f"/assets/{digest[:32]}").status_code == 200
    assert states(client, digest) == ["deleted"]
    upload(client, data)  # a new upload, not a duplicate: the delete took the marker
    assert states(client, digest) == ["queued"]
    assert_agrees_with_get(client, digest)


def test_another_api_process_answers_queued_from_the_upload_marker(make_settings):
    settings = make_settings()
    with TestClient(create_app(settings)) as first:
        digest = upload(first, jpeg_bytes(64, 48, seed=5))
    # A new process has not seen the upload: only the marker in the store tells it.
    with TestClient(create_app(settings)) as second:
        assert states(second, digest) == ["queued"]
        assert_agrees_with_get(second, digest)


@pytest.mark.slow
def test_processed_and_error_after_the_pipeline(make_settings, tiny_models, instance):
    settings = make_settings(**tiny_models, DAM_BATCH_SIZE="16")
    app = create_app(settings)
    with TestClient(app) as client:
        good = upload(client, jpeg_bytes(96, 64, (30, 200, 30), seed=6))
        answer = uploaded(client, jpeg_bytes(96, 64, (30, 30, 200), seed=7))
        broken = answer["sha256"]
        # The original is damaged after the 202: the batch makes an error row of it.
        make_store(settings).put(answer["r2_key"], b"not an image any more")
        assert states(client, good, broken) == ["queued", "queued"]

        run_pending(instance)
        materialize([search_index], instance=instance, resources=resources())
        app.state.catalog.index.refresh()
        assert states(client, good, broken, good) == ["processed", "error", "processed"]
        assert_agrees_with_get(client, good, broken)

        assert client.delete(f"/assets/{good[:32]}").status_code == 200
        assert states(client, good) == ["deleted"]  # hidden at once, before the index drops it
        assert_agrees_with_get(client, good)


DIGEST = "ab" * 32
HOSTILE = {
    "not hex": {"sha256": ["zz" * 32]},
    "upper case": {"sha256": ["AB" * 32]},
    "too short": {"sha256": [DIGEST[:-1]]},
    "too long": {"sha256": [DIGEST + "a"]},
    "an asset id, not a digest": {"sha256": [DIGEST[:32]]},
    "with spaces": {"sha256": [f" {DIGEST} "]},
    "a string, not a list": {"sha256": DIGEST},
    "numbers": {"sha256": [1, 2]},
    "null": {"sha256": None},
    "a list of lists": {"sha256": [[DIGEST]]},
    "an object in the list": {"sha256": [{"sha256": DIGEST}]},
    "missing": {},
    "an unknown field": {"sha256": [DIGEST], "also": 1},
    "a list body": [DIGEST],
    "a string body": DIGEST,
    "null body": None,
    "too many": {"sha256": [DIGEST] * (MAX_DIGESTS + 1)},
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_malformed_body_is_422_naming_where(client, body):
    r = client.post(CHECK, json=body)
    assert r.status_code == 422, r.text
    answer = r.json()
    assert answer["detail"] == "invalid request"
    assert answer["errors"] and all(e["loc"][0] == "body" for e in answer["errors"])
    assert DIGEST not in r.text  # the input is never echoed


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b'{"sha256": [' * 5000, b"NaN"], ids=repr)
def test_a_body_that_is_not_json_is_422(client, raw):
    r = client.post(CHECK, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body"]


def test_too_many_digests_says_the_limit_and_the_limit_itself_is_fine(client):
    r = client.post(CHECK, json={"sha256": [DIGEST] * (MAX_DIGESTS + 1)})
    assert r.status_code == 422
    assert str(MAX_DIGESTS) in r.json()["errors"][0]["msg"]
    many = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(MAX_DIGESTS)]
    r = client.post(CHECK, json={"sha256": many})
    assert r.status_code == 200, r.text
    assert {i["state"] for i in r.json()["items"]} == {"absent"}


def test_many_bad_items_name_only_the_first_few(client):
    r = client.post(CHECK, json={"sha256": ["x"] * 900})
    assert r.status_code == 422
    assert len(r.json()["errors"]) == MAX_ERRORS


def test_a_body_over_the_cap_is_413_declared_or_not(client):
    big = json.dumps({"sha256": [DIGEST] * 4000}).encode()
    assert len(big) > MAX_BODY_BYTES
    r = client.post(CHECK, content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and str(MAX_DIGESTS) in r.json()["detail"]
    # Chunked, with no Content-Length: cut off while reading.
    r = client.post(CHECK, content=iter([big[i : i + 8192] for i in range(0, len(big), 8192)]))
    assert r.status_code == 413 and r.headers["connection"] == "close"


@pytest.mark.parametrize("key", [None, "wrong"], ids=["no key", "wrong key"])
def test_the_key_is_needed_and_checked_before_the_body(make_settings, key):
    with TestClient(create_app(make_settings(DAM_API_KEY="s3cret"))) as client:
        headers = {"X-API-Key": key} if key else {}
        assert client.post(CHECK, json={"sha256": [DIGEST]}, headers=headers).status_code == 401
        # Over the size cap and malformed: still 401, the body is not looked at without the key.
        r = client.post(CHECK, content=b"x" * (2 * MAX_BODY_BYTES), headers=headers)
        assert r.status_code == 401, r.text
        r = client.post(CHECK, json={"sha256": [DIGEST]}, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and r.json()["items"][0]["state"] == "absent"


def _head(url: str, content_length: int) -> bytes:
    host = url.removeprefix("http://")
    return (
        f"POST {CHECK} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


@pytest.mark.system
def test_over_a_socket_a_stalled_body_is_408_and_an_oversized_one_413(make_settings):
    with serve(create_app(make_settings(DAM_READ_TIMEOUT_SECONDS="1"))) as url:
        body = json.dumps({"sha256": [DIGEST]}).encode()
        resp = send_raw(url, _head(url, len(body)), [body[:10]], stall_after=10, timeout=15)
        assert resp.status == 408, resp
        assert resp.seconds < 1 + 8, resp  # the slack is for a loaded machine, not the server
        assert resp.headers.get("connection") == "close"

        # No body byte sent: answered from the declared length (waiting for the body would be a 408).
        resp = send_raw(url, _head(url, MAX_BODY_BYTES + 1), [], timeout=15)
        assert resp.status == 413, resp
        assert resp.seconds < 1, resp

        resp = send_raw(url, _head(url, len(body)), [body], timeout=15)
        assert resp.status == 200 and resp.json()["items"][0]["state"] == "absent"
