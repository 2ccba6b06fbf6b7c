"""dam_core.sigv4 and dam_core.s3_http: the S3 store's own signing, checked against botocore's and
against the strict S3 front (which recomputes every signature with botocore) over real HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from dam_assets_tests.faults.strict_s3 import presigned_error, strict_s3
from dam_core.sigv4 import Credentials, SigV4, canonical_query, quote_key
from dam_core.store import KeyNotFound, StoreError, make_store

WHEN = datetime(2026, 12, 6, 4, 30, 15, tzinfo=UTC)


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """`handler` answering on a free local port (yielded) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def _botocore_authorization(method: str, url: str, headers: dict[str, str], body: bytes, token: str | None) -> str:
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    request.context["timestamp"] = WHEN.strftime("%Y%m%dT%H%M%SZ")
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    if token:
        request.headers["X-Amz-Security-Token"] = token
    signer = S3SigV4Auth(BotoCredentials("AKID", "s3cr3t", token), "s3", "auto")
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signer._inject_signature_to_request(request, signature)
    return request.headers["Authorization"]


@pytest.mark.parametrize("token", [None, "session-token/+="])
@pytest.mark.parametrize(
    ("method", "key", "params", "headers", "body"),
    [
        ("GET", "assets/0123abcd.jpg", [], {"Range": "bytes=0-65535"}, b""),
        ("PUT", "uploads/ab=c.json", [], {"Content-Type": "application/json", "If-None-Match": "*"}, b'{"a": 1}'),
        ("HEAD", "a/b/c d.txt", [("partNumber", "3"), ("uploadId", "x/y+z=")], {}, b""),
    ],
)
def test_header_signatures_are_botocores(method, key, params, headers, body, token):
    signer = SigV4(lambda: Credentials("AKID", "s3cr3t", token), "auto")
    path = "/bucket-1/" + quote_key(key)
    query = canonical_query(params)
    sent = signer.sign(method, "r2.example:9000", path, query, headers, hashlib.sha256(body).hexdigest(), WHEN)
    url = f"http://r2.example:9000{path}" + (f"?{query}" if query else "")
    assert sent["authorization"] == _botocore_authorization(method, url, headers, body, token)
    assert sent["x-amz-date"] == "20261206T043015Z"
    assert (sent.get("x-amz-security-token") is not None) == (token is not None)


def test_presigned_urls_pass_botocores_check_and_name_one_key_only():
    signer = SigV4(lambda: Credentials("AKID", "s3cr3t"), "auto")
    headers = {"If-None-Match": "*", "x-amz-checksum-sha256": "q83vEjRWeJA=", "content-length": "12"}
    url = signer.presign(
        "PUT", "http://127.0.0.1:9000", "127.0.0.1:9000", "/bkt/assets/ab.jpg", 900, headers=headers, now=WHEN
    )
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-SignedHeaders"] == ["content-length;host;if-none-match;x-amz-checksum-sha256"]
    sent = {**headers, "Host": "127.0.0.1:9000"}
    assert presigned_error("PUT", url, sent, "s3cr3t", WHEN + timedelta(seconds=60)) is None
    assert presigned_error("PUT", url, sent, "other", WHEN) == "SignatureDoesNotMatch"
    assert presigned_error("PUT", url.replace("/ab.jpg", "/zz.jpg"), sent, "s3cr3t", WHEN) == "SignatureDoesNotMatch"
    assert presigned_error("PUT", url, {**sent, "content-length": "13"}, "s3cr3t", WHEN) == "SignatureDoesNotMatch"
    assert presigned_error("PUT", url, sent, "s3cr3t", WHEN + timedelta(seconds=901)).startswith("AccessDenied")
    part = signer.presign(
        "PUT", "http://h", "h", "/bkt/k", 60, params=[("partNumber", "2"), ("uploadId", "a/b+c=")], now=WHEN
    )
    assert presigned_error("PUT", part, {"Host": "h"}, "s3cr3t", WHEN) is None


def test_the_store_speaks_signed_requests_that_s3_accepts(make_settings, s3_env, moto_endpoint):
    """Every request the store sends itself passes the strict front's signature and body checks; a
    wrong secret is refused (a StoreError, never a silent success)."""
    with strict_s3(moto_endpoint) as front:
        store = make_store(make_settings(**{**s3_env, "R2_ENDPOINT": front}))
        assert store.create("assets/a.jpg", b"bytes-a", "image/jpeg") is True
        assert store.create("assets/a.jpg", b"bytes-b", "image/jpeg") is False  # the key was taken
        store.put("uploads/m.json", b"{}", "application/json")
        assert store.get("assets/a.jpg") == b"bytes-a" and store.exists("uploads/m.json")
        peek = store.peek("assets/a.jpg", 3)
        assert (peek.size, peek.head) == (7, b"byt") and peek.etag.strip('"')
        assert store.head("assets/a.jpg").size == 7 and store.modified("assets/a.jpg") is not None
        store.delete("uploads/m.json")
        assert not store.exists("uploads/m.json") and store.modified("uploads/m.json") is None
        with pytest.raises(KeyNotFound):
            store.get("uploads/m.json")
        url = store.presign_put("incoming/x", 60, "ZXhhbXBsZQ==")
        assert httpx.put(url, content=b"nope", headers={"x-amz-checksum-sha256": "ZXhhbXBsZQ=="}).status_code == 400

        wrong = make_store(make_settings(**{**s3_env, "R2_ENDPOINT": front, "R2_SECRET_ACCESS_KEY": "wrong"}))
        with pytest.raises(StoreError, match="403"):
            wrong.get("assets/a.jpg")
        with pytest.raises(StoreError, match="403"):
            wrong.put("assets/b.jpg", b"x")


def test_the_store_goes_through_the_proxy_the_environment_names(make_settings, s3_env, monkeypatch):
    """HTTP_PROXY / NO_PROXY apply to the store's own requests as boto3 applies them to its own."""
    seen: list[str] = []

    class Forward(_Quiet):
        def _forward(self):
            seen.append(f"{self.command} {self.path}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
            with httpx.Client(trust_env=False) as direct:  # not through itself
                answer = direct.request(self.command, self.path, headers=headers, content=body)
            self.send_response(answer.status_code)
            for k, v in answer.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    self.send_header(k, v)
            data = b"" if self.command == "HEAD" else answer.content
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_HEAD = do_DELETE = _forward

    with _serving(Forward) as port:
        for var in ("NO_PROXY", "no_proxy", "HTTP_PROXY"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
        store = make_store(make_settings(**s3_env))
        store.put("uploads/p.json", b"{}", "application/json")
        assert store.get("uploads/p.json") == b"{}"
        assert [s.split(" ")[0] for s in seen] == ["PUT", "GET"] and seen[0].endswith("/uploads/p.json")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        seen.clear()
        assert make_store(make_settings(**s3_env)).get("uploads/p.json") == b"{}"
        assert seen == []


def test_busy_answers_are_retried_twice_then_reported():
    """5xx and 429 answers (and no answer) are retried twice; a third is the caller's S3Unreachable."""
    from dam_core.s3_http import S3Http, S3Unreachable

    answers = iter([503, 429, 200, 500, 502, 503])
    calls: list[str] = []

    class Busy(_Quiet):
        def do_GET(self):
            calls.append(self.path)
            status = next(answers)
            body = b"ok" if status == 200 else b"<Error><Code>SlowDown</Code></Error>"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with _serving(Busy) as port:
        http = S3Http(f"http://127.0.0.1:{port}", "bkt", SigV4(lambda: Credentials("a", "b"), "auto"))
        answer = http.request("GET", "k/x.json")
        assert (answer.status, answer.data, len(calls)) == (200, b"ok", 3)
        with pytest.raises(S3Unreachable, match="503"):
            http.request("GET", "k/x.json")
        assert len(calls) == 6 and set(calls) == {"/bkt/k/x.json"}


def test_listings_page_past_1000_keys_and_return_every_key_as_stored(make_settings, s3_env, moto_endpoint):
    """The store's own ListObjectsV2: every page, `start_after`, keys other clients wrote with bytes our
    keys never hold (spaces, `+`, `%`, non-ASCII: sent URL-encoded), and LastModified in UTC."""
    from concurrent.futures import ThreadPoolExecutor

    with strict_s3(moto_endpoint) as front:
        store = make_store(make_settings(**{**s3_env, "R2_ENDPOINT": front}))
        keys = [f"uploads/{i:05d}.json" for i in range(1003)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: store.put(k, b"{}"), keys))
        odd = "uploads/zz other client/a+b %41 é&<x>.txt"
        store.client.put_object(Bucket=s3_env["R2_BUCKET"], Key=odd, Body=b"x")
        assert list(store.list("uploads/")) == [*keys, odd]
        assert list(store.list("uploads/", start_after="uploads/01000.json")) == [*keys[1001:], odd]
        assert list(store.list("nothing/")) == []
        modified = dict(store.list_modified("uploads/"))
        assert len(modified) == 1004 and all(m.tzinfo is not None for m in modified.values())
        assert abs((modified[keys[0]] - datetime.now(UTC)).total_seconds()) < 300
