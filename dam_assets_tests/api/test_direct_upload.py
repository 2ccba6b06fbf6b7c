"""Direct-to-store uploads (Uppy's @uppy/aws-s3 protocol) against real parts.

moto's S3 server over HTTP behind a strict front that checks presigned URLs as S3 and R2 do
(signature and expiry: faults/strict_s3.py), real SigV4 URLs from the API, the bytes PUT to them
with httpx, real multipart uploads, the real RabbitMQ; one test runs the real pipeline.
"""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import pytest
from dagster import DagsterInstance
from fastapi.testclient import TestClient

from dam_assets.maintenance.sweep import sweep_staging
from dam_assets_tests.conftest import jpeg_bytes, noise_png, png_bytes
from dam_assets_tests.faults.strict_s3 import strict_s3
from dam_assets_tests.pipeline_harness import run_pending
from dam_core.layout import INCOMING_PREFIX, staging_record_key, staging_token
from dam_core.queue import make_queue
from dam_core.store import make_store
from dam_core.table import make_table
from dam_ingest_api.main import create_app
from dam_ingest_api.routes.direct import NEEDS_S3

MiB = 1024 * 1024


@pytest.fixture
def api(make_api):
    return make_api()


def put_single(client, data: bytes, filename="photo.jpg", **metadata) -> tuple[str, httpx.Response]:
    """Uppy's single-PUT flow up to the PUT: GET /s3/params, then the PUT with the headers it names."""
    query = {"filename": filename, "type": "image/jpeg", **{f"metadata[{k}]": v for k, v in metadata.items()}}
    r = client.get("/s3/params", params=query)
    assert r.status_code == 200, r.text
    params = r.json()
    assert params["method"] == "PUT" and params["fields"] == {"key": params["key"]} and params["expires"] > 0
    assert staging_token(params["key"]) is not None  # only ever a staging key
    return params["key"], httpx.put(params["url"], content=data, headers=params["headers"])


def start_multipart(client, filename="big.png", **metadata) -> tuple[str, str]:
    r = client.post("/s3/multipart", json={"filename": filename, "type": "image/png", "metadata": metadata})
    assert r.status_code == 200, r.text
    body = r.json()
    assert staging_token(body["key"]) is not None
    return body["uploadId"], body["key"]


def put_part(client, upload_id: str, key: str, number: int, data: bytes) -> str:
    r = client.get(f"/s3/multipart/{upload_id}/{number}", params={"key": key})
    assert r.status_code == 200, r.text
    answer = httpx.put(r.json()["url"], content=data)
    assert answer.status_code == 200, answer.text
    return answer.headers["etag"]


def staging_left(settings) -> list[str]:
    return list(make_store(settings).list(INCOMING_PREFIX))


def queued(settings) -> int:
    return make_queue(settings).depth()


# ----------------------------------------------------------------------------- the good paths


def test_a_single_put_is_checked_moved_to_its_content_key_and_queued_once(make_api):
    # Through staging (DAM_DIRECT_CONTENT_KEYS=0: a store that ignores checksums); the content-key
    # path of a fully declared PUT is test_direct_content_keys.py.
    client, settings = make_api(DAM_DIRECT_CONTENT_KEYS="0")
    data = jpeg_bytes(320, 200, seed=7)
    sha = hashlib.sha256(data).hexdigest()
    key, put = put_single(client, data, "holiday.jpg", sha256=sha, size=len(data))
    assert put.status_code == 200, put.text

    r = client.post("/s3/complete", params={"key": key})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["id"] == sha[:32] and body["sha256"] == sha and body["bytes"] == len(data)
    assert body["r2_key"] == f"assets/{sha[:32]}.jpg" and body["mime_type"] == "image/jpeg"
    assert (body["width"], body["height"], body["filename"], body["status"]) == (320, 200, "holiday.jpg", "queued")
    store = make_store(settings)
    assert store.get(body["r2_key"]) == data
    assert staging_left(settings) == []  # staging object and record removed
    assert queued(settings) == 1
    assert client.get(f"/assets/{body['id']}").json()["status"] == "queued"

    # A replayed completion finds no record; a replayed PUT (its URL is still valid) lands in
    # staging but can never be completed: nothing more is queued, and the sweep removes it.
    assert client.post("/s3/complete", params={"key": key}).status_code == 404
    again = httpx.put(put.request.url, content=data, headers=dict(put.request.headers))
    assert again.status_code == 200
    r = client.post("/s3/complete", params={"key": key})
    assert r.status_code == 404 and "no direct upload in progress" in r.json()["detail"]
    assert queued(settings) == 1

    # The same bytes through a new upload: POST /upload's duplicate answer, nothing queued.
    key2, _ = put_single(client, data, "copy.jpg")
    r = client.post("/s3/complete", params={"key": key2})
    assert r.status_code == 200 and r.json()["duplicate"] is True and r.json()["id"] == body["id"]
    assert queued(settings) == 1


def test_a_multipart_upload_speaks_uppys_calls_and_is_queued(api):
    client, settings = api
    data = noise_png(6 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    upload_id, key = start_multipart(client, "big.png", sha256=sha)
    chunks = [data[: 5 * MiB], data[5 * MiB :]]
    etags = [put_part(client, upload_id, key, n, chunk) for n, chunk in enumerate(chunks, 1)]

    listed = client.get(f"/s3/multipart/{upload_id}", params={"key": key})
    assert listed.status_code == 200
    assert [(p["PartNumber"], p["Size"]) for p in listed.json()] == [(1, 5 * MiB), (2, len(data) - 5 * MiB)]
    assert [p["ETag"] for p in listed.json()] == etags

    parts = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
    r = client.post(f"/s3/multipart/{upload_id}/complete", params={"key": key}, json={"parts": parts})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["id"] == sha[:32] and body["mime_type"] == "image/png" and body["bytes"] == len(data)
    assert hashlib.sha256(make_store(settings).get(body["r2_key"])).hexdigest() == sha
    assert staging_left(settings) == [] and queued(settings) == 1
    # The upload id is spent: no more parts, no second completion.
    assert client.get(f"/s3/multipart/{upload_id}/3", params={"key": key}).status_code == 404
    r = client.post(f"/s3/multipart/{upload_id}/complete", params={"key": key}, json={"parts": parts})
    assert r.status_code == 404


def test_abort_drops_the_upload_and_its_record(api):
    client, settings = api
    upload_id, key = start_multipart(client)
    put_part(client, upload_id, key, 1, b"x" * 1000)
    r = client.delete(f"/s3/multipart/{upload_id}", params={"key": key})
    assert r.status_code == 200 and r.json() == {}
    assert staging_left(settings) == []
    assert client.get(f"/s3/multipart/{upload_id}", params={"key": key}).status_code == 404
    assert client.delete(f"/s3/multipart/{upload_id}", params={"key": key}).status_code == 404


# ----------------------------------------------------------------------------- bad input


def test_bytes_that_are_not_an_image_are_refused_and_removed(api):
    client, settings = api
    key, put = put_single(client, b"<html>not a photo</html>" * 20, "x.jpg")
    assert put.status_code == 200
    r = client.post("/s3/complete", params={"key": key})
    assert r.status_code == 415 and "not a supported image" in r.json()["detail"]
    assert staging_left(settings) == [] and queued(settings) == 0

    key, _ = put_single(client, b"", "empty.jpg")
    r = client.post("/s3/complete", params={"key": key})
    assert r.status_code == 400 and "empty" in r.json()["detail"]

    key, _ = put_single(client, png_bytes(20, 20)[:30], "cut.png")  # the header itself cut short
    assert client.post("/s3/complete", params={"key": key}).status_code == 422
    assert staging_left(settings) == [] and queued(settings) == 0


def test_declared_size_and_digest_must_match_the_bytes(api):
    client, settings = api
    data, other = jpeg_bytes(64, 64, seed=1), jpeg_bytes(64, 64, seed=2)
    declared = hashlib.sha256(data).hexdigest()

    # The declared digest is signed into the URL: the PUT must carry it (S3/R2 then check the bytes).
    r = client.get("/s3/params", params={"filename": "a.jpg", "metadata[sha256]": declared})
    params = r.json()
    assert params["headers"] == {"x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(declared)).decode()}
    assert httpx.put(params["url"], content=data).status_code == 403  # header left out: signature fails
    # Other bytes under the header: the store refuses them (S3 and R2 do; the strict front does for moto).
    refused = httpx.put(params["url"], content=other, headers=params["headers"])
    assert refused.status_code == 400 and "BadDigest" in refused.text
    # A store that ignored the checksum would keep them: the API reads and hashes staged bytes itself.
    make_store(settings).put(params["key"], other)
    r = client.post("/s3/complete", params={"key": params["key"]})
    assert r.status_code == 422 and declared in r.json()["detail"]

    key, _ = put_single(client, data, "a.jpg", size=len(data) + 1)
    r = client.post("/s3/complete", params={"key": key})
    assert r.status_code == 422 and "declared" in r.json()["detail"]

    assert client.get("/s3/params", params={"metadata[sha256]": "nope"}).status_code == 400
    assert client.get("/s3/params", params={"metadata[size]": "-3"}).status_code == 400
    assert staging_left(settings) == [] and queued(settings) == 0


def test_uploads_over_the_size_limit_are_refused_and_removed(make_api):
    client, settings = make_api(DAM_MAX_UPLOAD_BYTES=str(6 * MiB))
    big = noise_png(7 * MiB)
    key, put = put_single(client, big, "big.png")
    assert put.status_code == 200
    r = client.post("/s3/complete", params={"key": key})
    assert r.status_code == 413 and "DAM_MAX_UPLOAD_BYTES" in r.json()["detail"]

    # Multipart: the total of the parts is over; the upload is aborted before it is assembled.
    upload_id, key = start_multipart(client)
    etags = [put_part(client, upload_id, key, 1, big[: 5 * MiB]), put_part(client, upload_id, key, 2, big[5 * MiB :])]
    parts = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
    r = client.post(f"/s3/multipart/{upload_id}/complete", params={"key": key}, json={"parts": parts})
    assert r.status_code == 413 and "aborted" in r.json()["detail"]
    assert client.get(f"/s3/multipart/{upload_id}", params={"key": key}).status_code == 404

    # A declared size over the limit is refused before any byte is sent.
    r = client.post("/s3/multipart", json={"filename": "x.png", "metadata": {"size": 7 * MiB}})
    assert r.status_code == 413
    assert staging_left(settings) == [] and queued(settings) == 0


def test_thousands_of_parts_are_refused(api):
    client, settings = api  # 25 MiB: at most 5 parts of 5 MiB
    upload_id, key = start_multipart(client)
    r = client.get(f"/s3/multipart/{upload_id}/5000", params={"key": key})
    assert r.status_code == 413 and "limit of 5 parts" in r.json()["detail"]
    assert client.get(f"/s3/multipart/{upload_id}/10001", params={"key": key}).status_code == 400
    assert client.get(f"/s3/multipart/{upload_id}/0", params={"key": key}).status_code == 400
    parts = [{"PartNumber": n, "ETag": '"abc"'} for n in range(1, 3001)]
    r = client.post(f"/s3/multipart/{upload_id}/complete", params={"key": key}, json={"parts": parts})
    assert r.status_code == 413
    parts = [{"PartNumber": n, "ETag": '"abc"'} for n in range(1, 10_002)]
    r = client.post(f"/s3/multipart/{upload_id}/complete", params={"key": key}, json={"parts": parts})
    assert r.status_code == 422  # more than S3 allows at all: refused by validation
    assert staging_left(settings) == [] and queued(settings) == 0


def test_completing_with_parts_never_uploaded_is_a_400_and_the_upload_survives(api):
    client, settings = api
    data = noise_png(6 * MiB)
    upload_id, key = start_multipart(client)
    first = put_part(client, upload_id, key, 1, data[: 5 * MiB])
    url = f"/s3/multipart/{upload_id}/complete"
    missing = [{"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": '"0123456789abcdef0123456789abcdef"'}]
    r = client.post(url, params={"key": key}, json={"parts": missing})
    assert r.status_code == 400 and "part 2 was never uploaded" in r.json()["detail"]
    wrong = [{"PartNumber": 1, "ETag": '"0123456789abcdef0123456789abcdef"'}]
    r = client.post(url, params={"key": key}, json={"parts": wrong})
    assert r.status_code == 400 and "ETag" in r.json()["detail"]
    unordered = [{"PartNumber": 2, "ETag": first}, {"PartNumber": 1, "ETag": first}]
    assert client.post(url, params={"key": key}, json={"parts": unordered}).status_code == 400
    assert client.post(url, params={"key": key}, json={"parts": []}).status_code == 400
    assert client.post(url, params={"key": key}, json={"parts": "all"}).status_code == 422
    # Still there: the client can upload what is missing and complete.
    second = put_part(client, upload_id, key, 2, data[5 * MiB :])
    parts = [{"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}]
    assert client.post(url, params={"key": key}, json={"parts": parts}).status_code == 202
    assert queued(settings) == 1


def test_an_expired_url_is_refused_by_the_store_and_the_completion_says_so(make_api):
    client, settings = make_api(DAM_DIRECT_URL_EXPIRY_SECONDS="1")
    r = client.get("/s3/params", params={"filename": "late.jpg"})
    params = r.json()
    assert params["expires"] == 1
    time.sleep(2.2)
    put = httpx.put(params["url"], content=jpeg_bytes(40, 40))
    assert put.status_code == 403 and "expired" in put.text
    r = client.post("/s3/complete", params={"key": params["key"]})
    assert r.status_code == 409 and "nothing has been uploaded" in r.json()["detail"]
    assert queued(settings) == 0


def test_a_url_works_for_its_own_key_only_and_keys_outside_staging_are_never_signed(api):
    client, settings = api
    data = jpeg_bytes(40, 40)
    mine = client.get("/s3/params", params={"filename": "a.jpg"}).json()
    other = client.get("/s3/params", params={"filename": "b.jpg"}).json()
    for target in (other["key"], "assets/" + "0" * 32 + ".jpg", "uploads/x.json"):
        moved = mine["url"].replace(mine["key"], target)
        assert httpx.put(moved, content=data).status_code == 403  # SigV4 signs the key
    assert not make_store(settings).exists("assets/" + "0" * 32 + ".jpg")

    upload_id, key = start_multipart(client)
    for bad in ("assets/" + "0" * 32 + ".jpg", "incoming/../assets/x", INCOMING_PREFIX + "f" * 32 + "/x", "x"):
        r = client.get(f"/s3/multipart/{upload_id}/1", params={"key": bad})
        assert r.status_code == 400 and "not a direct-upload key" in r.json()["detail"]
        # An original's own key is a single PUT's (test_direct_content_keys.py): nothing is there yet.
        expected = 409 if bad.startswith("assets/") else 400
        assert client.post("/s3/complete", params={"key": bad}).status_code == expected
    unknown = INCOMING_PREFIX + "0" * 32
    assert client.get(f"/s3/multipart/{upload_id}/1", params={"key": unknown}).status_code == 404
    # Each completion route for its own kind of upload.
    assert client.post("/s3/complete", params={"key": key}).status_code == 409
    r = client.post(f"/s3/multipart/{upload_id}/complete", params={"key": mine["key"]}, json={"parts": []})
    assert r.status_code == 404
    assert queued(settings) == 0


def test_another_uploads_id_cannot_be_signed_listed_completed_or_aborted(api):
    client, settings = api
    id_a, key_a = start_multipart(client, "a.png")
    id_b, key_b = start_multipart(client, "b.png")
    put_part(client, id_b, key_b, 1, b"b" * 100)
    # B's id with A's key (and A's id with B's key): as if neither existed.
    for upload_id, key in ((id_b, key_a), (id_a, key_b), ("made-up", key_b)):
        assert client.delete(f"/s3/multipart/{upload_id}", params={"key": key}).status_code == 404
        assert client.get(f"/s3/multipart/{upload_id}/1", params={"key": key}).status_code == 404
        assert client.get(f"/s3/multipart/{upload_id}", params={"key": key}).status_code == 404
        r = client.post(
            f"/s3/multipart/{upload_id}/complete",
            params={"key": key},
            json={"parts": [{"PartNumber": 1, "ETag": '"x"'}]},
        )
        assert r.status_code == 404
    listed = client.get(f"/s3/multipart/{id_b}", params={"key": key_b})
    assert listed.status_code == 200 and [p["PartNumber"] for p in listed.json()] == [1]
    assert make_store(settings).exists(staging_record_key(staging_token(key_a) or ""))


def test_the_sweep_aborts_and_removes_what_is_never_completed(api):
    client, settings = api
    upload_id, key = start_multipart(client)
    put_part(client, upload_id, key, 1, b"x" * 100)
    single, put = put_single(client, jpeg_bytes(40, 40), "never.jpg")
    assert put.status_code == 200
    store = make_store(settings)
    young = sweep_staging(store, older_than_seconds=settings.dam_direct_abandon_seconds)
    assert young.deleted == [] and len(staging_left(settings)) == 3  # two records and one object
    # moto dates every multipart upload in 2010 (the first sweep aborts it already): only the object
    # ages are real here.
    later = datetime.now(UTC) + timedelta(seconds=settings.dam_direct_abandon_seconds + 60)
    report = sweep_staging(store, older_than_seconds=settings.dam_direct_abandon_seconds, now=lambda: later)
    assert key in young.aborted + report.aborted and staging_left(settings) == []
    assert len(report.deleted) == 3
    assert client.get(f"/s3/multipart/{upload_id}", params={"key": key}).status_code == 404
    assert client.post("/s3/complete", params={"key": single}).status_code == 404


def test_the_local_store_answers_that_the_direct_path_needs_s3(make_settings):
    client = TestClient(create_app(make_settings()))
    for method, path in (
        ("GET", "/s3/params?filename=a.jpg"),
        ("POST", "/s3/complete?key=incoming/" + "0" * 32),
        ("GET", "/s3/multipart/abc/1?key=incoming/" + "0" * 32),
        ("DELETE", "/s3/multipart/abc?key=incoming/" + "0" * 32),
    ):
        r = client.request(method, path)
        # `message` as well: Uppy's S3 plugin shows it in its error text (it never reads `detail`).
        assert r.status_code == 404 and r.json() == {"detail": NEEDS_S3, "message": NEEDS_S3}, (method, path)
    r = client.post("/s3/multipart", json={"filename": "a.png"})
    assert r.status_code == 404 and "POST /upload" in r.json()["detail"]


# ----------------------------------------------------------------------------- through the pipeline


def test_a_direct_upload_ends_as_one_row_and_a_bad_body_as_an_error_row(make_api, tiny_models):
    client, settings = make_api(**tiny_models, DAM_BATCH_SIZE="8")
    good = jpeg_bytes(160, 120, seed=11)
    key, _ = put_single(client, good, "direct.jpg")
    first = client.post("/s3/complete", params={"key": key})
    assert first.status_code == 202, first.text
    # A header that passes and a body cut short: only the full decode, in the pipeline, sees it.
    whole = noise_png(200_000)
    key, _ = put_single(client, whole[: len(whole) // 2], "cut.png")
    cut = client.post("/s3/complete", params={"key": key})
    assert cut.status_code == 202, cut.text

    with DagsterInstance.ephemeral() as instance:
        batches, _ = run_pending(instance)
    assert len(batches) == 1
    con = make_table(settings).connect()
    rows = {r[0]: r[1:] for r in con.execute("SELECT id, filename, error, width, height FROM assets").fetchall()}
    assert set(rows) == {first.json()["id"], cut.json()["id"]}
    assert rows[first.json()["id"]] == ("direct.jpg", None, 160, 120)
    assert rows[cut.json()["id"]][0] == "cut.png" and rows[cut.json()["id"]][1]  # an error row, not a failed batch


def test_r2_upload_ids_with_a_slash_reach_every_multipart_route(
    make_settings, s3_env, moto_endpoint, rabbit_url, queue_name
):
    # Cloudflare R2 makes ids like `…/…+…=`; Uppy and dam upload percent-encode them into the path.
    with strict_s3(moto_endpoint, r2_upload_ids=True) as r2:
        settings = make_settings(**{**s3_env, "R2_ENDPOINT": r2}, AMQP_URL=rabbit_url, DAM_QUEUE=queue_name)
        with TestClient(create_app(settings)) as client:
            data = noise_png(6 * MiB)
            upload_id, key = start_multipart(client, "r2.png")
            assert "/" in upload_id and "+" in upload_id
            encoded = quote(upload_id, safe="")
            etags = []
            for n, chunk in enumerate((data[: 5 * MiB], data[5 * MiB :]), 1):
                r = client.get(f"/s3/multipart/{encoded}/{n}", params={"key": key})
                assert r.status_code == 200, r.text
                answer = httpx.put(r.json()["url"], content=chunk)
                assert answer.status_code == 200, answer.text
                etags.append(answer.headers["etag"])
            listed = client.get(f"/s3/multipart/{encoded}", params={"key": key})
            assert listed.status_code == 200 and [p["PartNumber"] for p in listed.json()] == [1, 2]
            parts = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
            r = client.post(f"/s3/multipart/{encoded}/complete", params={"key": key}, json={"parts": parts})
            assert r.status_code == 202, r.text
            assert (
                hashlib.sha256(make_store(settings).get(r.json()["r2_key"])).hexdigest()
                == hashlib.sha256(data).hexdigest()
            )

            other_id, other_key = start_multipart(client, "gone.png")
            gone = client.delete(f"/s3/multipart/{quote(other_id, safe='')}", params={"key": other_key})
            assert gone.status_code == 200 and staging_left(settings) == []
            # Unencoded, the `/` splits the path: not this upload's route.
            assert client.get(f"/s3/multipart/{upload_id}", params={"key": key}).status_code in (404, 405, 422)
