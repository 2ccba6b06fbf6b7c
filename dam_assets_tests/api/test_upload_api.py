"""POST /upload through the real app, on both backends: embedded (local folder + SQLite queue)
and production-shaped (RabbitMQ + the S3 API on moto). Every rejection keeps and queues nothing."""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field

import httpx
import pika
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from dam_assets_tests.conftest import free_port, jpeg_bytes, png_bytes
from dam_core.messages import UploadMessage
from dam_core.queue import RabbitQueue, UploadQueue
from dam_core.settings import Settings
from dam_core.store import ObjectStore
from dam_ingest_api.main import create_app

S3_SECRET = "s3-secret-do-not-leak-7c1e"
AMQP_SECRET = "amqp-secret-do-not-leak-4b9d"
API_KEY = "api-key-do-not-leak-0a2f"

EXPECTED = {
    "JPEG": ("image/jpeg", ".jpg"),
    "PNG": ("image/png", ".png"),
    "WEBP": ("image/webp", ".webp"),
    "GIF": ("image/gif", ".gif"),
    "TIFF": ("image/tiff", ".tiff"),
    "BMP": ("image/bmp", ".bmp"),
}


# --------------------------------------------------------------------------- images


def image_bytes(fmt: str, size=(96, 64), seed: int = 1) -> bytes:
    img = Image.new("RGB", size, ((seed * 40) % 256, 120, 200))
    d = ImageDraw.Draw(img)
    d.rectangle([5, 5, size[0] // 2, size[1] // 2], fill=(255, (seed * 90) % 256, 0))
    d.line([0, size[1] - 1, size[0] - 1, 0], fill=(0, 0, 0), width=3)
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height grayscale pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_with_bad_crc() -> bytes:
    img = Image.effect_noise((64, 64), 60).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IDAT")
    length = struct.unpack(">I", data[i - 4 : i])[0]
    assert length > 40
    data[i + 4 + length // 2] ^= 0xFF  # a byte in the middle of the compressed data; the CRC no longer matches
    return bytes(data)


def truncated_jpeg() -> bytes:
    data = jpeg_bytes(300, 300, seed=11)
    return data[: len(data) // 2]


# --------------------------------------------------------------------------- backends


@dataclass
class Backend:
    kind: str
    settings: Settings
    client: TestClient
    env: dict = field(default_factory=dict)

    @property
    def app(self):
        return self.client.app

    @property
    def store(self) -> ObjectStore:
        return self.app.state.dam.store

    @property
    def queue(self) -> UploadQueue:
        return self.app.state.dam.queue

    def assets(self) -> list[str]:
        return list(self.store.list("assets/"))

    def depth(self) -> int:
        return self.queue.depth()

    def assert_nothing_kept(self):
        assert self.assets() == []
        assert list(self.store.list("uploads/")) == []
        assert self.depth() == 0

    def queued(self) -> list[tuple[bytes, int | None]]:
        """Every message waiting on the queue as (body, delivery_mode); leaves them queued."""
        if isinstance(self.queue, RabbitQueue):
            conn = pika.BlockingConnection(pika.URLParameters(self.queue.url))
            try:
                ch = conn.channel()
                out = []
                while True:
                    method, props, body = ch.basic_get(self.queue.name, auto_ack=False)
                    if method is None:
                        return out
                    out.append((body, props.delivery_mode))
            finally:
                conn.close()  # unacked: they all go back
        with self.queue.consumer() as c:
            return [(d.body, None) for d in c.take(1000, 0.3)]


@pytest.fixture(params=["embedded", "rabbitmq-s3"])
def backend_env(request) -> dict:
    if request.param == "embedded":
        return {}
    s3_env = request.getfixturevalue("s3_env")
    return {
        **s3_env,
        "R2_SECRET_ACCESS_KEY": S3_SECRET,  # moto takes any credentials
        "AMQP_URL": request.getfixturevalue("rabbit_url"),
        "DAM_QUEUE": request.getfixturevalue("queue_name"),
    }


@pytest.fixture
def make_backend(backend_env, make_settings, request):
    stack = contextlib.ExitStack()
    kind = request.node.callspec.params.get("backend_env", "embedded")

    def build(**extra) -> Backend:
        env = {**backend_env, **extra}
        settings = make_settings(**env)
        client = stack.enter_context(TestClient(create_app(settings)))
        return Backend(kind, settings, client, env)

    with stack:
        yield build


@pytest.fixture
def backend(make_backend) -> Backend:
    return make_backend()


def upload(client, *files, headers=None):
    """POST /upload with (name, bytes, content_type) triples in the field `file`."""
    parts = [("file", (name, data, ctype)) for name, data, ctype in files]
    return client.post("/upload", files=parts, headers=headers or {})


def assert_no_secrets(text: str):
    for secret in (S3_SECRET, AMQP_SECRET, API_KEY, "guest:guest"):
        assert secret not in text


# --------------------------------------------------------------------------- accepted uploads


@pytest.mark.parametrize("fmt", list(EXPECTED))
def test_valid_image_is_stored_and_queued(backend, fmt):
    data = image_bytes(fmt)
    mime, ext = EXPECTED[fmt]
    r = upload(backend.client, (f"my picture{ext}", data, "application/octet-stream"))
    assert r.status_code == 202, r.text
    body = r.json()
    sha = hashlib.sha256(data).hexdigest()
    asset_id = body["id"]
    assert len(asset_id) == 32 and int(asset_id, 16) >= 0
    assert body["filename"] == f"my picture{ext}"
    assert body["r2_key"] == f"assets/{asset_id}{ext}"
    assert body["vector_key"] == f"vectors/{asset_id}.json"
    assert body["mime_type"] == mime
    assert body["sha256"] == sha
    assert body["bytes"] == len(data)
    assert (body["width"], body["height"]) == (96, 64)
    assert body["status"] == "queued"

    assert backend.assets() == [body["r2_key"]]
    assert backend.store.get(body["r2_key"]) == data  # byte-identical

    queued = backend.queued()
    assert len(queued) == 1
    raw, delivery_mode = queued[0]
    msg = UploadMessage.from_json(raw)
    assert msg.id == asset_id and msg.filename == body["filename"] and msg.r2_key == body["r2_key"]
    assert msg.mime_type == mime and msg.sha256 == sha and msg.bytes == len(data)
    assert (msg.width, msg.height) == (96, 64)
    assert msg.uploaded_at.isoformat() == body["uploaded_at"]
    if backend.kind == "rabbitmq-s3":
        assert delivery_mode == 2  # persistent
    assert backend.depth() == 1
    assert_no_secrets(r.text)


def test_lying_content_type_uses_the_bytes(backend):
    data = png_bytes(40, 30)
    r = upload(backend.client, ("photo.jpg", data, "image/jpeg"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["mime_type"] == "image/png"
    assert body["r2_key"] == f"assets/{body['id']}.png"
    assert body["filename"] == "photo.jpg"  # the name is data, kept as given
    assert backend.store.get(body["r2_key"]) == data
    ((raw, _),) = backend.queued()
    assert UploadMessage.from_json(raw).mime_type == "image/png"


def test_hostile_filename_is_data_not_a_key(backend):
    data = jpeg_bytes(64, 48, seed=5)
    r = upload(backend.client, ("../../etc/\u202epasswd.jpg", data, "image/jpeg"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["filename"] == "passwd.jpg"
    assert backend.assets() == [f"assets/{body['id']}.jpg"]


def test_several_files_in_one_request(backend):
    files = [
        ("a.jpg", jpeg_bytes(80, 60, seed=1), "image/jpeg"),
        ("b.png", png_bytes(20, 20), "image/png"),
        ("c.gif", image_bytes("GIF", seed=3), "image/gif"),
    ]
    r = upload(backend.client, *files)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 3 and body["rejected"] == 0
    items = body["items"]
    assert [it["filename"] for it in items] == ["a.jpg", "b.png", "c.gif"]
    assert all(it["status"] == "queued" for it in items)
    assert sorted(backend.assets()) == sorted(it["r2_key"] for it in items)
    for (_, data, _), it in zip(files, items, strict=True):
        assert backend.store.get(it["r2_key"]) == data
    assert sorted(UploadMessage.from_json(raw).id for raw, _ in backend.queued()) == sorted(it["id"] for it in items)
    assert backend.depth() == 3


def test_mixed_request_keeps_the_good_and_rejects_the_bad(backend):
    good = jpeg_bytes(80, 60, seed=21)
    r = upload(backend.client, ("good.jpg", good, "image/jpeg"), ("notes.jpg", b"just some text\n" * 20, "image/jpeg"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1 and body["rejected"] == 1
    ok, bad = body["items"]
    assert ok["status"] == "queued" and bad["status"] == "rejected" and bad["filename"] == "notes.jpg"
    assert backend.assets() == [ok["r2_key"]]
    assert backend.depth() == 1


def test_same_bytes_twice_is_a_duplicate(backend):
    data = jpeg_bytes(64, 64, seed=9)
    first = upload(backend.client, ("one.jpg", data, "image/jpeg"))
    assert first.status_code == 202
    again = upload(backend.client, ("two.jpg", data, "image/jpeg"))
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] and again.json()["duplicate"] is True
    assert backend.assets() == [first.json()["r2_key"]]
    assert backend.depth() == 1


# --------------------------------------------------------------------------- rejected uploads


def test_no_file_field(backend):
    r = backend.client.post("/upload", files={"attachment": ("a.jpg", jpeg_bytes(seed=2), "image/jpeg")})
    assert r.status_code == 400, r.text
    assert "file" in r.json()["detail"]
    r = backend.client.post("/upload", json={"file": "not multipart"})
    assert r.status_code == 400
    r = backend.client.post("/upload", data={"file": "a text field, not a file"}, files={"x": ("x", b"", "text/plain")})
    assert r.status_code == 400
    backend.assert_nothing_kept()


@pytest.mark.parametrize(
    "name, make, status, says",
    [
        ("empty.jpg", lambda: b"", 400, "empty"),
        (
            "notes.jpg",
            lambda: b"hello, this is plain text and not an image at all\n" * 10,
            415,
            "not a supported image",
        ),
        ("page.png", lambda: b"<!doctype html><html><body>hi</body></html>", 415, "not a supported image"),
        ("half.jpg", truncated_jpeg, 422, "truncated"),
        ("badcrc.png", png_with_bad_crc, 422, "corrupt"),
        ("bomb.png", lambda: png_declaring(30000, 30000), 422, "bomb"),
    ],
    ids=["empty", "text", "html", "truncated-jpeg", "png-bad-crc", "decompression-bomb"],
)
def test_bad_bytes_are_rejected_and_nothing_kept(backend, name, make, status, says):
    data = make()
    r = upload(backend.client, (name, data, "image/jpeg"))
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]
    assert_no_secrets(r.text)
    backend.assert_nothing_kept()


def test_image_over_the_pixel_limit(make_backend):
    backend = make_backend(DAM_MAX_IMAGE_PIXELS="1000000")
    r = upload(backend.client, ("wide.png", png_declaring(2000, 1000), "image/png"))
    assert r.status_code == 422, r.text
    assert "pixels" in r.json()["detail"]
    backend.assert_nothing_kept()


def test_file_over_the_size_limit(make_backend):
    backend = make_backend(DAM_MAX_UPLOAD_BYTES="10000")
    big = jpeg_bytes(800, 600, quality=95, seed=4)
    assert len(big) > 10000
    r = upload(backend.client, ("big.jpg", big, "image/jpeg"))
    assert r.status_code == 413, r.text
    backend.assert_nothing_kept()
    # Under the limit is fine on the same app.
    small = jpeg_bytes(40, 30, seed=4)
    assert len(small) < 10000
    assert upload(backend.client, ("small.jpg", small, "image/jpeg")).status_code == 202


def test_declared_body_over_the_limit_is_refused_before_reading(make_backend):
    backend = make_backend(DAM_MAX_UPLOAD_BYTES="10000", DAM_MAX_FILES_PER_REQUEST="1")
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        + b"\0" * 500_000
        + b"\r\n--b--\r\n"
    )
    r = backend.client.post("/upload", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413, r.text
    backend.assert_nothing_kept()


def test_too_many_files(make_backend):
    backend = make_backend(DAM_MAX_FILES_PER_REQUEST="2")
    files = [(f"{i}.jpg", jpeg_bytes(40, 30, seed=30 + i), "image/jpeg") for i in range(3)]
    r = upload(backend.client, *files)
    assert r.status_code == 413, r.text
    assert "2" in r.json()["detail"]
    backend.assert_nothing_kept()
    assert upload(backend.client, *files[:2]).status_code == 202


def test_api_key(make_backend):
    backend = make_backend(DAM_API_KEY=API_KEY)
    data = jpeg_bytes(50, 40, seed=12)
    r = upload(backend.client, ("a.jpg", data, "image/jpeg"))
    assert r.status_code == 401
    assert_no_secrets(r.text)
    r = upload(backend.client, ("a.jpg", data, "image/jpeg"), headers={"X-API-Key": "wrong"})
    assert r.status_code == 401
    assert_no_secrets(r.text)
    r = upload(backend.client, ("a.jpg", data, "image/jpeg"), headers={"X-API-Key": API_KEY[:-1]})
    assert r.status_code == 401
    backend.assert_nothing_kept()
    r = upload(backend.client, ("a.jpg", data, "image/jpeg"), headers={"X-API-Key": API_KEY})
    assert r.status_code == 202, r.text
    assert backend.assets() == [r.json()["r2_key"]]
    assert backend.depth() == 1
    # Health stays open: probes carry no key.
    assert backend.client.get("/healthz").status_code == 200


# --------------------------------------------------------------------------- services down


def _dead_s3(backend_env: dict) -> dict:
    return {
        "R2_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "R2_ACCESS_KEY_ID": "AKIDDEAD",
        "R2_SECRET_ACCESS_KEY": S3_SECRET,
        "R2_BUCKET": backend_env.get("R2_BUCKET", "dead-bucket"),
        "R2_REGION": "us-east-1",
    }


def _dead_amqp() -> str:
    return f"amqp://guest:{AMQP_SECRET}@127.0.0.1:{free_port()}/%2F"


def test_store_down_is_503_and_nothing_queued(make_backend, backend_env):
    backend = make_backend(**_dead_s3(backend_env))
    r = upload(backend.client, ("a.jpg", jpeg_bytes(60, 40, seed=14), "image/jpeg"))
    assert r.status_code == 503, r.text
    assert r.headers.get("retry-after")
    assert_no_secrets(r.text)
    assert backend.depth() == 0
    ready = backend.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["store"] != "ok"
    assert_no_secrets(ready.text)


def test_queue_down_is_503_and_nothing_is_marked(make_backend):
    backend = make_backend(AMQP_URL=_dead_amqp(), DAM_QUEUE="uploads")
    t0 = time.monotonic()
    r = upload(backend.client, ("a.jpg", jpeg_bytes(60, 40, seed=15), "image/jpeg"))
    assert time.monotonic() - t0 < 10
    assert r.status_code == 503, r.text
    assert_no_secrets(r.text)
    # The original stays (a concurrent copy may have been answered 202 for it); without a
    # marker it is an orphan that the sweep removes after DAM_ORPHAN_GRACE_SECONDS.
    assert len(backend.assets()) == 1
    assert list(backend.store.list("uploads/")) == []
    ready = backend.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["queue"] != "ok" and ready.json()["store"] == "ok"
    assert_no_secrets(ready.text)


def test_health_and_readiness(backend):
    r = backend.client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = backend.client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "store": "ok", "queue": "ok"}


# --------------------------------------------------------------------------- real HTTP


@contextlib.contextmanager
def serve(app):
    """uvicorn for real, in a thread, on a free port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.mark.system
def test_over_real_http_with_uvicorn(backend_env, make_settings):
    settings = make_settings(**backend_env, DAM_MAX_UPLOAD_BYTES="10000")
    app = create_app(settings)
    store, queue = app.state.dam.store, app.state.dam.queue
    with serve(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200

        data = jpeg_bytes(60, 40, seed=16)
        r = client.post("/upload", files={"file": ("real.jpg", data, "image/jpeg")})
        assert r.status_code == 202, r.text
        key = r.json()["r2_key"]
        assert store.get(key) == data
        assert queue.depth() == 1

        # An oversized body streamed without Content-Length: refused at the limit, nothing kept.
        boundary = "dam-test-boundary"
        sent = {"bytes": 0}

        def body():
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="huge.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            yield head + jpeg_bytes(64, 64, seed=17)
            for _ in range(256):  # 4 MiB of trailing garbage, far over the 10000-byte limit
                sent["bytes"] += 16384
                yield b"\xa5" * 16384
            yield f"\r\n--{boundary}--\r\n".encode()

        req = client.build_request(
            "POST", "/upload", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
        assert "content-length" not in req.headers and req.headers["transfer-encoding"] == "chunked"
        r = client.send(req)
        assert r.status_code == 413, r.text
        assert list(store.list("assets/")) == [key]
        assert queue.depth() == 1

        # The server is still fine afterwards.
        r = client.post("/upload", files={"file": ("after.png", png_bytes(10, 10), "image/png")})
        assert r.status_code == 202, r.text
        assert queue.depth() == 2
