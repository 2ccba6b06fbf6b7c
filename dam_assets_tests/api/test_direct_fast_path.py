"""The direct upload's fast path (dam_ingest_api/direct_fast_path.py) answers as the FastAPI routes do.

Every scenario runs twice: through the app as served (the fast path answers what it can) and with
the fast path answering nothing (every request reaches routes/direct.py). Both must give the same
statuses and bodies; on the served app the fast path must have answered the common requests itself
and left the rest to FastAPI. moto behind the strict S3 front, the real RabbitMQ.
"""

from __future__ import annotations

import hashlib

import pytest

from dam_assets_tests.api.test_direct_content_keys import complete, put, sign
from dam_assets_tests.conftest import jpeg_bytes
from dam_core.layout import INCOMING_PREFIX
from dam_core.store import make_store
from dam_ingest_api import direct_fast_path
from dam_ingest_api.direct_fast_path import DirectFastPath

KEY = "s3cret-key"


@pytest.fixture(params=["fast", "framework"])
def answered(request, monkeypatch):
    """Which way the requests go; returns the list of (method, path) the fast path answered itself."""
    seen: list[tuple[str, str]] = []
    if request.param == "framework":
        monkeypatch.setattr(DirectFastPath, "ROUTES", {})
    real = direct_fast_path._send

    async def counting(send, status, body, headers):
        seen.append(status)
        await real(send, status, body, headers)

    monkeypatch.setattr(direct_fast_path, "_send", counting)
    return request.param, seen


COUNTED = [("/s3/complete", "POST", "202"), ("/s3/complete", "POST", "415"), ("/s3/params", "GET", "200")]


def _counted(client, handler: str, method: str, status: str) -> float:
    """http_requests_total for these labels, from /metrics."""
    prefix = f'http_requests_total{{handler="{handler}",method="{method}",status="{status}"}} '
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]
    return float(lines[0][len(prefix) :]) if lines else 0.0


def _declared(data: bytes) -> dict:
    return {
        "filename": "a.jpg",
        "type": "image/jpeg",
        "metadata[sha256]": hashlib.sha256(data).hexdigest(),
        "metadata[size]": str(len(data)),
    }


def test_signing_answers_the_same_either_way(make_api, answered):
    way, fast = answered
    client, _ = make_api()
    data = jpeg_bytes(64, 48, seed=11)

    signed = sign(client, data, "x.jpg")  # declared: a content key
    assert signed["key"].startswith("assets/") and signed["fields"] == {"key": signed["key"]}
    assert signed["method"] == "PUT" and signed["expires"] > 0 and signed["headers"]["If-None-Match"] == "*"

    staged = client.get("/s3/params", params={"filename": "x.jpg", "type": "image/jpeg"})  # undeclared: staging
    assert staged.status_code == 200 and staged.json()["key"].startswith(INCOMING_PREFIX)

    bad_sha = client.get("/s3/params", params={**_declared(data), "metadata[sha256]": "xyz"})
    assert bad_sha.status_code == 400 and "sha256" in bad_sha.json()["detail"]
    assert bad_sha.json()["message"] == bad_sha.json()["detail"]

    too_long = client.get("/s3/params", params={**_declared(data), "filename": "n" * 4097})
    assert too_long.status_code == 422 and too_long.json()["errors"][0]["loc"] == ["query", "filename"]

    huge = client.get("/s3/params", params={**_declared(data), "metadata[size]": str(10**12)})
    assert huge.status_code == 413 and "DAM_MAX_UPLOAD_BYTES" in huge.json()["detail"]

    # The fast path signed the declared PUT only; FastAPI answered the rest.
    assert fast == ([200] if way == "fast" else [])


def test_completion_answers_the_same_either_way(make_api, answered):
    way, fast = answered
    client, settings = make_api()
    before = [_counted(client, *labels) for labels in COUNTED]
    store = make_store(settings)
    data = jpeg_bytes(80, 60, seed=12)
    signed = sign(client, data)
    assert put(signed, data).status_code == 200

    first = complete(client, signed["key"])
    assert first.status_code == 202 and first.json()["status"] == "queued"
    assert first.json()["sha256"] == hashlib.sha256(data).hexdigest() and first.json()["width"] == 80
    again = complete(client, signed["key"])
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]

    nothing = complete(client, sign(client, jpeg_bytes(80, 60, seed=13))["key"])
    assert nothing.status_code == 409 and "nothing has been uploaded" in nothing.json()["detail"]

    text = b"not an image at all, just words" * 10
    fake = sign(client, text)  # declared as a JPEG: the store checks the digest, not the type
    assert put(fake, text).status_code == 200
    refused = complete(client, fake["key"])
    assert refused.status_code == 415 and "removed" in refused.json()["detail"]
    assert not store.exists(fake["key"])

    missing = client.post("/s3/complete")
    assert missing.status_code == 422 and missing.json()["errors"][0]["loc"] == ["query", "key"]
    assert client.post("/s3/complete", params={"key": "k" * 201}).status_code == 422
    staging = client.post("/s3/complete", params={"key": f"{INCOMING_PREFIX}nope"})
    assert staging.status_code in (400, 404)

    assert fast == ([200, 202, 200, 200, 409, 200, 415] if way == "fast" else [])  # sign, complete, ...
    # Labelled by route either way (the registry is the process's: counted from the test's start).
    assert _counted(client, "/s3/complete", "POST", "202") - before[0] == 1
    assert _counted(client, "/s3/complete", "POST", "415") - before[1] == 1
    assert _counted(client, "/s3/params", "GET", "200") - before[2] == 3


def test_the_api_key_is_checked_either_way(make_api, answered):
    way, fast = answered
    client, _ = make_api(DAM_API_KEY=KEY)
    data = jpeg_bytes(64, 48, seed=14)
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}):
        r = client.get("/s3/params", params=_declared(data), headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "API-Key"
        assert client.post("/s3/complete", params={"key": "assets/x.jpg"}, headers=headers).status_code == 401
    assert fast == []
    r = client.get("/s3/params", params=_declared(data), headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json()["key"].startswith("assets/")
    assert fast == ([200] if way == "fast" else [])


def test_a_store_that_fails_at_completion_is_a_503_either_way(make_api, answered):
    way, fast = answered
    client, _ = make_api(endpoint="http://127.0.0.1:9")  # nothing listens: signing works, reading fails
    signed = sign(client, jpeg_bytes(64, 48, seed=15))
    r = complete(client, signed["key"])
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["detail"] == "the object store is unavailable; try again"
    assert fast == ([200, 503] if way == "fast" else [])
