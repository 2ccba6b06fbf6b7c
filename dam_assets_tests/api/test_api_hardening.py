"""The API against clients and failures that used to cost a 202'd original, a 500, or a held
connection: a publish failure racing a duplicate, slow and greedy clients (over a real socket
against `dam api` as a subprocess), disk errors, hostile cursors, corrupt images, open binds."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import http.client
import io
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dam_assets_tests.conftest import free_port, jpeg_bytes, png_bytes
from dam_assets_tests.faults.http import multipart_head, send_raw
from dam_assets_tests.faults.proxy import TcpProxy
from dam_assets_tests.faults.server import serve
from dam_assets_tests.processes import stop
from dam_core.queue import RabbitQueue
from dam_core.store import make_store
from dam_ingest_api.main import create_app

DAM = str(Path(sys.executable).parent / "dam")
BOUNDARY = "dam-hardening-boundary-91c2"


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_")) and k != "AMQP_URL"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def dam_api(tmp_path):
    """Start `dam api` as a subprocess with extra environment; yields (url, data_dir)."""
    procs = []

    def start(*args: str, wrap: tuple[str, ...] = (), **env) -> tuple[str, Path]:
        """`wrap`: a command line that runs the rest (`dam api ...`) as its arguments."""
        port = free_port()
        data_dir = tmp_path / f"data-{port}"
        log = open(tmp_path / f"api-{port}.log", "w+b")
        proc = subprocess.Popen(
            [*wrap, DAM, "api", "--port", str(port), "--log-level", "warning", *args],
            env=_clean_env(DAM_DATA_DIR=data_dir, **env),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"dam api exited with {proc.returncode}: {log.read().decode(errors='replace')}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return url, data_dir
            assert time.monotonic() < deadline, "dam api did not answer /healthz within 60 s"
            time.sleep(0.1)

    yield start
    for proc, log in procs:
        stop(proc)
        log.close()


def _multipart(data: bytes, filename: str = "a.jpg") -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def _originals(data_dir: Path) -> list[str]:
    root = data_dir / "store" / "assets"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _drip(body: bytes, seconds: float, pause: float):
    """The first bytes of `body`, one per chunk: enough for `seconds` at one chunk per `pause`."""
    for i in range(min(len(body), int(seconds / pause))):
        yield body[i : i + 1]


# ----------------------------------------------------------------------------- 1. the lost 202


@pytest.mark.system
def test_a_failed_publish_never_deletes_the_original_another_request_got_202_for(
    make_settings, s3_env, rabbit_url, queue_name
):
    """Two API replicas share the bucket and the queue; replica A is cut off from the broker.

    A stores the original and waits on a publish that cannot be confirmed; meanwhile B gets the
    same bytes, finds the object, publishes and answers 202. A then fails: its original must
    stay, because B's message points to it.
    """
    settings = make_settings(**s3_env, AMQP_URL=rabbit_url, DAM_QUEUE=queue_name)
    data = jpeg_bytes(120, 90, seed=41)
    with TcpProxy("127.0.0.1", 5672) as proxy:
        proxy.cut("blackhole")  # a partition: connects hang, nothing is ever confirmed
        cut_off = RabbitQueue(
            rabbit_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}"), queue_name, publish_timeout=4
        )
        app_a = create_app(settings, store=make_store(settings), queue=cut_off)
        app_b = create_app(settings)
        store = make_store(settings)
        with serve(app_a) as url_a, serve(app_b) as url_b:
            answers = {}

            def post_a():
                answers["a"] = httpx.post(f"{url_a}/upload", files={"file": ("a.jpg", data, "image/jpeg")}, timeout=30)

            thread = threading.Thread(target=post_a)
            thread.start()
            deadline = time.monotonic() + 10
            while not list(store.list("assets/")):  # A has stored the original and is publishing
                assert time.monotonic() < deadline, "replica A never stored the original"
                time.sleep(0.02)
            b = httpx.post(f"{url_b}/upload", files={"file": ("b.jpg", data, "image/jpeg")}, timeout=30)
            thread.join(30)
    assert b.status_code == 202, b.text
    assert answers["a"].status_code == 503, answers["a"].text
    key = b.json()["r2_key"]
    # B's confirmed message names this object: it must still be there after A gave up.
    assert store.get(key) == data
    assert app_b.state.uploader.markers.flush(10)  # written after the answer
    assert store.exists(f"uploads/{b.json()['id']}.json")
    assert app_b.state.dam.queue.depth() == 1


# ----------------------------------------------------------------------------- 2. slow clients


@pytest.mark.system
def test_a_dripping_client_gets_408_at_the_upload_deadline(dam_api):
    deadline = 3.0
    url, data_dir = dam_api(
        DAM_UPLOAD_DEADLINE_SECONDS=deadline, DAM_MIN_UPLOAD_BYTES_PER_SECOND=0, DAM_READ_TIMEOUT_SECONDS=30
    )
    body = _multipart(jpeg_bytes(64, 64, seed=42))
    # One byte every half second: each chunk is well inside the 30 s read timeout, forever.
    resp = send_raw(url, multipart_head(url, BOUNDARY, len(body)), _drip(body, 15, 0.5), pause=0.5, timeout=15)
    assert resp.status == 408, resp
    # The drip lasts 15 s; the slack over the deadline is for a loaded CI machine, not the server.
    assert resp.seconds < deadline + 8, resp
    assert "deadline" in resp.json()["detail"]
    assert resp.headers.get("connection") == "close"
    assert _originals(data_dir) == []


@pytest.mark.system
def test_a_client_under_the_minimum_rate_gets_408_after_the_grace(dam_api):
    url, data_dir = dam_api(
        DAM_MIN_UPLOAD_BYTES_PER_SECOND=200, DAM_UPLOAD_RATE_GRACE_SECONDS=1, DAM_READ_TIMEOUT_SECONDS=30
    )
    body = _multipart(jpeg_bytes(64, 64, seed=43))
    resp = send_raw(url, multipart_head(url, BOUNDARY, len(body)), _drip(body, 15, 0.25), pause=0.25, timeout=15)
    assert resp.status == 408, resp
    assert resp.seconds < 1 + 8, resp
    assert "bytes per second" in resp.json()["detail"]
    assert _originals(data_dir) == []


def _hold_open_until_closed(url: str, lines: list[bytes], every: float, give_up: float) -> float | None:
    """Send `lines` one per `every` seconds; seconds until the server closed, None if it never did."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    start = time.monotonic()
    try:
        i = 0
        while time.monotonic() - start < give_up:
            if i < len(lines):
                try:
                    sock.sendall(lines[i])
                except OSError:
                    return time.monotonic() - start
                i += 1
            r, _, _ = select.select([sock], [], [], every)
            if r:
                try:
                    if sock.recv(4096) == b"":
                        return time.monotonic() - start
                except OSError:
                    return time.monotonic() - start
        return None
    finally:
        sock.close()


@pytest.mark.system
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_slow_request_head_is_disconnected_at_the_header_timeout(dam_api, workers):
    """The same in every worker process of `dam api --workers N` (each builds its protocol by name)."""
    timeout = 2.0
    url, data_dir = dam_api("--workers", workers, DAM_HEADER_TIMEOUT_SECONDS=timeout)
    if workers != "1":  # and the workers serve the app itself, not just the socket
        r = httpx.post(
            f"{url}/upload", files={"file": ("w.jpg", jpeg_bytes(64, 48, seed=46), "image/jpeg")}, timeout=30
        )
        assert r.status_code == 202, r.text
        assert _originals(data_dir) == [f"{r.json()['id']}.jpg"]
    lines = [b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n"] + [f"X-Slow-{i}: {i}\r\n".encode() for i in range(30)]
    closed = _hold_open_until_closed(url, lines, every=0.7, give_up=12)
    assert closed is not None and closed < timeout + 1.5, closed
    # A connection that never sends a byte is closed the same way.
    closed = _hold_open_until_closed(url, [], every=0.2, give_up=12)
    assert closed is not None and closed < timeout + 1.5, closed
    # The clock runs only while a head is arriving: an idle keep-alive connection survives it.
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read()
    sock_before = conn.sock
    time.sleep(timeout + 1)  # longer than the header timeout, shorter than keep-alive (30 s)
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    assert r.status == 200 and conn.sock is sock_before  # the same connection, still open
    conn.close()


@pytest.mark.system
def test_uploads_over_the_concurrency_cap_get_503_at_once(dam_api):
    url, data_dir = dam_api(DAM_MAX_CONCURRENT_UPLOADS=2, DAM_READ_TIMEOUT_SECONDS=60)
    body = _multipart(jpeg_bytes(200, 150, seed=44))
    host, port = url.removeprefix("http://").split(":")
    held = []
    for _ in range(2):  # two uploads that send half their body and stop
        s = socket.create_connection((host, int(port)))
        s.sendall(multipart_head(url, BOUNDARY, len(body)) + body[: len(body) // 2])
        held.append(s)
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        r = httpx.post(
            f"{url}/upload", files={"file": ("c.jpg", jpeg_bytes(80, 60, seed=45), "image/jpeg")}, timeout=10
        )
        assert r.status_code == 503, r.text
        assert time.monotonic() - t0 < 2
        assert r.headers.get("retry-after")
        assert "too many uploads" in r.json()["detail"]
        assert _originals(data_dir) == []
    finally:
        for s in held:
            s.close()
    # The held slots come back once those clients are gone.
    deadline = time.monotonic() + 10
    while True:
        r = httpx.post(
            f"{url}/upload", files={"file": ("d.jpg", jpeg_bytes(80, 60, seed=46), "image/jpeg")}, timeout=10
        )
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 202, r.text


# ----------------------------------------------------------------------------- 3. disk errors


def test_a_disk_error_is_503_not_500(make_settings):
    """A file where the store expects its assets/ folder: a real OSError that root cannot bypass."""
    settings = make_settings()
    app = create_app(settings)
    root = settings.data_dir / "store"
    (root / "assets").write_bytes(b"not a folder")
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/upload", files={"file": ("a.jpg", jpeg_bytes(60, 40, seed=47), "image/jpeg")})
    assert r.status_code == 503, r.text
    assert r.headers.get("retry-after") and "unavailable" in r.json()["detail"]
    assert app.state.dam.queue.depth() == 0
    # Reads fail the same way: an upload marker path under a file.
    (root / "uploads").write_bytes(b"not a folder either")
    r = client.get(f"/assets/{'0' * 32}")
    assert r.status_code == 503, r.text


def test_one_failing_file_in_a_request_fails_alone_and_says_so(make_settings):
    settings = make_settings()
    app = create_app(settings)
    good, bad = jpeg_bytes(60, 40, seed=48), png_bytes(20, 20)
    bad_id = hashlib.sha256(bad).hexdigest()[:32]
    # A folder where this file's original must go: replacing it fails (EISDIR) for root too.
    (settings.data_dir / "store" / "assets" / f"{bad_id}.png").mkdir(parents=True)
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post(
        "/upload",
        files=[("file", ("good.jpg", good, "image/jpeg")), ("file", ("bad.png", bad, "image/png"))],
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1 and body["rejected"] == 1
    ok, failed = body["items"]
    assert ok["status"] == "queued" and ok["filename"] == "good.jpg"
    assert failed == {"filename": "bad.png", "status": "rejected", "code": 503, "detail": failed["detail"]}
    assert "unavailable" in failed["detail"]
    assert app.state.dam.queue.depth() == 1  # only the good one was queued


# ----------------------------------------------------------------------------- 4. cursors, corrupt images


def test_a_cursor_with_a_huge_timestamp_is_a_400(make_settings):
    client = TestClient(create_app(make_settings()), raise_server_exceptions=False)
    for ts in ("9" * 320, "1e400", "NaN", "Infinity", "true"):
        cursor = base64.urlsafe_b64encode(f'[{ts}, "{"a" * 32}"]'.encode()).decode().rstrip("=")
        r = client.get("/assets", params={"cursor": cursor})
        assert r.status_code == 400, (ts, r.text)
        assert "cursor" in r.json()["detail"]


def _png_with_bad_header_crc() -> bytes:
    data = bytearray(png_bytes(32, 32))
    data[29] ^= 0xFF  # the IHDR chunk's CRC: Pillow cannot even identify the file
    return bytes(data)


def test_a_png_with_a_bad_crc_is_a_corrupt_image_not_a_non_image(make_settings):
    client = TestClient(create_app(make_settings()))
    r = client.post("/upload", files={"file": ("x.png", _png_with_bad_header_crc(), "image/png")})
    assert r.status_code == 422, r.text
    assert "corrupt" in r.json()["detail"]
    for not_an_image in (b"BMW is a brand of cars, not a bitmap", b"%PDF-1.7\n" + b"x" * 64):
        r = client.post("/upload", files={"file": ("x.bmp", not_an_image, "image/bmp")})
        assert r.status_code == 415, r.text


# ----------------------------------------------------------------------------- 5. open by default


def _run_briefly(args: list[str], env: dict, cwd: Path, seconds: float = 30) -> tuple[int | None, str]:
    """Run a dam command; if it is still running after `seconds` (it started serving), stop it."""
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=seconds)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # `dam dev` stops its children on SIGTERM
        _, err = proc.communicate(timeout=60)
        return None, err


@pytest.mark.system
@pytest.mark.parametrize("command", ["api", "dev"])
def test_no_key_on_a_public_address_is_refused(tmp_path, command):
    rc, err = _run_briefly(
        [DAM, command, "--host", "0.0.0.0", "--port", str(free_port())],
        _clean_env(DAM_DATA_DIR=tmp_path / "data"),
        tmp_path,
    )
    assert rc == 2, err
    assert "DAM_API_KEY" in err and "--insecure-no-auth" in err


@pytest.mark.system
def test_a_public_address_is_served_with_a_key_or_the_explicit_flag(dam_api):
    url, _ = dam_api("--host", "0.0.0.0", DAM_API_KEY="k-123")
    assert httpx.get(f"{url}/assets", headers={"X-API-Key": "k-123"}, timeout=5).status_code == 200
    url, _ = dam_api("--host", "0.0.0.0", "--insecure-no-auth")
    assert httpx.get(f"{url}/assets", timeout=5).status_code == 200


# ----------------------------------------------------------------------------- validation cap


def _large_png(seed: int) -> bytes:
    """A legal 6000x6000 PNG (a few hundred KiB on disk, ~100 MB of pixels to verify)."""
    img = Image.new("RGB", (6000, 6000), (seed % 256, 80, 160))
    img.putpixel((seed, seed), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _peak_rss_during_burst(url: str, pid: int, bodies: list[bytes]) -> tuple[int, int, list[int]]:
    """Baseline RSS, peak RSS while `bodies` are uploaded at once, and their status codes."""
    proc = psutil.Process(pid)
    baseline = proc.memory_info().rss
    peak, done = baseline, threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    codes: list[int] = []

    def post(i, body):
        r = httpx.post(f"{url}/upload", files={"file": (f"big{i}.png", body, "image/png")}, timeout=120)
        codes.append(r.status_code)

    threads = [threading.Thread(target=post, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    done.set()
    watcher.join()
    return baseline, peak, codes


@pytest.mark.system
def test_concurrent_validations_are_capped_so_a_burst_of_large_images_takes_one_decode_of_memory(dam_api):
    bodies = [_large_png(i) for i in range(5)]
    peaks = {}
    for cap in (1, 4):
        url, _ = dam_api(DAM_MAX_CONCURRENT_VALIDATIONS=cap, DAM_MAX_CONCURRENT_UPLOADS=16)
        pid = _pid_listening(url)
        # Warm the process (imports, first decode) so the burst measures only concurrent decodes.
        httpx.post(f"{url}/upload", files={"file": ("warm.png", _large_png(250), "image/png")}, timeout=120)
        baseline, peak, codes = _peak_rss_during_burst(url, pid, bodies)
        assert sorted(codes) == [202] * len(bodies), codes
        peaks[cap] = peak - baseline
        print(f"validation cap {cap}: burst of {len(bodies)} 6000x6000 PNGs, peak RSS +{peaks[cap] / 2**20:.0f} MiB")
    # 6000x6000 RGB is ~108 MB of pixels per decode: one at a time stays near one decode's worth,
    # while four at once hold several.
    assert peaks[1] < 300 * 2**20, peaks
    assert peaks[1] < 0.6 * peaks[4], peaks


def _pid_listening(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise AssertionError(f"no process listens on {port}")


# ----------------------------------------------------------------------------- issue 22


def _upload_three(client) -> list[str]:
    ids = []
    for i in range(3):
        r = client.post("/upload", files={"file": (f"{i}.jpg", jpeg_bytes(40, 30, seed=60 + i), "image/jpeg")})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def test_a_cursor_the_api_did_not_issue_is_a_400(make_settings):
    """Issue 22, 6c: a well-formed made-up cursor answered 200 with an empty page."""
    settings = make_settings()
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    _upload_three(client)
    first = client.get("/assets", params={"limit": 1}).json()
    assert len(first["items"]) == 1 and first["next"]
    second = client.get("/assets", params={"limit": 1, "cursor": first["next"]})
    assert second.status_code == 200 and len(second.json()["items"]) == 1
    assert second.json()["items"][0]["id"] != first["items"][0]["id"]
    # Forged: a plausible position in the format the API used before signing...
    payload = base64.urlsafe_b64encode(f'[1700000000.0, "{"f" * 32}"]'.encode()).decode().rstrip("=")
    r = client.get("/assets", params={"cursor": payload})
    assert r.status_code == 400, r.text
    assert "cursor" in r.json()["detail"] and "not issued" in r.json()["detail"]
    # ... with a made-up signature, and an issued cursor's signature on another position.
    real_payload, real_sig = first["next"].rsplit(".", 1)
    for forged in (f"{payload}.{'A' * 22}", f"{real_payload}.{'A' * 22}", f"{payload}.{real_sig}"):
        r = client.get("/assets", params={"cursor": forged})
        assert r.status_code == 400, (forged, r.text)
        assert "not issued" in r.json()["detail"]
    # Issued cursors stay valid in another process on the same store (a restart, a worker, a replica).
    other = TestClient(create_app(settings), raise_server_exceptions=False)
    again = other.get("/assets", params={"limit": 1, "cursor": first["next"]})
    assert again.status_code == 200 and again.json()["items"] == second.json()["items"]


def _can_mount_tmpfs(where: Path) -> bool:
    probe = (
        subprocess.run(
            [
                "unshare",
                "-rm",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount -t tmpfs -o size=64k tmpfs "$0"',
                str(where),
            ],
            capture_output=True,
        )
        if shutil.which("unshare")
        else None
    )
    return probe is not None and probe.returncode == 0


@pytest.mark.system
def test_a_full_spool_folder_is_503_not_500(dam_api, tmp_path):
    """Issue 22, 3: Starlette spools an upload over 1 MiB to a temp file (TMPDIR); a full disk there
    answered 500 "internal error". A real 256 KiB tmpfs, mounted in the server's own mount namespace."""
    spool = tmp_path / "spool"
    spool.mkdir()
    if not _can_mount_tmpfs(spool):
        pytest.skip("no tmpfs in a user namespace here; test_a_spool_write_error_is_503 covers it in-process")
    mount = 'mount -t tmpfs -o size=256k tmpfs "$0" && exec "$@"'
    url, data_dir = dam_api(
        wrap=("unshare", "-rm", "--propagation", "private", "sh", "-c", mount, str(spool)), TMPDIR=spool
    )
    big = os.urandom(3 * 1024 * 1024)  # over the 1 MiB kept in memory: it must go to the spool
    r = httpx.post(f"{url}/upload", files={"file": ("big.jpg", big, "image/jpeg")}, timeout=30)
    assert r.status_code == 503, r.text
    assert r.headers.get("retry-after")
    assert "temporary storage is full" in r.json()["detail"] and "nothing was stored" in r.json()["detail"]
    assert _originals(data_dir) == []
    # The server is fine otherwise: a file small enough to stay in memory goes through.
    r = httpx.post(f"{url}/upload", files={"file": ("s.jpg", jpeg_bytes(64, 48, seed=70), "image/jpeg")}, timeout=30)
    assert r.status_code == 202, r.text


def test_a_spool_write_error_is_503(make_settings, monkeypatch):
    """The same in-process, anywhere: the spool's rollover to disk fails with EDQUOT."""

    def over_quota(*args, **kwargs):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    app = create_app(make_settings())
    client = TestClient(app, raise_server_exceptions=False)
    monkeypatch.setattr(tempfile, "TemporaryFile", over_quota)  # what SpooledTemporaryFile.rollover calls
    r = client.post("/upload", files={"file": ("big.jpg", os.urandom(2 * 1024 * 1024), "image/jpeg")})
    assert r.status_code == 503, r.text
    assert r.headers.get("retry-after") and "temporary storage is full" in r.json()["detail"]
    assert app.state.dam.queue.depth() == 0 and list(app.state.dam.store.list("assets/")) == []


KEY = "hardening-key-3e7d"


def _idle_keepalive(host: str, port: int) -> socket.socket:
    """A connection that did one GET /healthz (no key) and then stays open, idle, if the server lets it."""
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 "), "no answer to GET /healthz"
    return s


def _still_open(socks: list[socket.socket]) -> int:
    n = 0
    for s in socks:
        r, _, _ = select.select([s], [], [], 0)
        if not r:
            n += 1  # nothing to read, not even the EOF of a close
    return n


@pytest.mark.system
def test_idle_and_unauthenticated_connections_cannot_lock_out_a_key_holder(dam_api):
    """Issue 22, 4: connections without a key filled DAM_MAX_CONNECTIONS and every request with the key got 503."""
    limit = 20
    url, data_dir = dam_api(DAM_API_KEY=KEY, DAM_MAX_CONNECTIONS=limit, DAM_HEADER_TIMEOUT_SECONDS=60)
    host, port = url.removeprefix("http://").split(":")
    authorized = {"X-API-Key": KEY}
    idle = [_idle_keepalive(host, int(port)) for _ in range(5 * limit)]
    silent: list[socket.socket] = []
    try:
        r = httpx.get(f"{url}/assets", headers=authorized, timeout=5)
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{url}/upload",
            headers=authorized,
            timeout=5,
            files={"file": ("k.jpg", jpeg_bytes(64, 48, seed=71), "image/jpeg")},
        )
        assert r.status_code == 202, r.text
        # Past half the cap the idle ones were closed, so clients without a key get in as well.
        assert _still_open(idle) <= limit // 2, _still_open(idle)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        # Connections that never send a request fill the cap (until their head deadline): requests
        # without a key get 503, requests with one are still served.
        silent = [socket.create_connection((host, int(port))) for _ in range(2 * limit)]
        time.sleep(0.3)
        r = httpx.get(f"{url}/healthz", timeout=5)
        assert r.status_code == 503 and r.headers.get("retry-after"), r.text
        assert "DAM_MAX_CONNECTIONS" in r.json()["detail"]
        r = httpx.get(f"{url}/assets", headers=authorized, timeout=5)
        assert r.status_code == 200, r.text
        # A wrong key is no key.
        r = httpx.get(f"{url}/assets", headers={"X-API-Key": KEY + "x"}, timeout=5)
        assert r.status_code == 503, r.text
    finally:
        for s in idle + silent:
            s.close()


@pytest.mark.system
def test_one_address_holds_at_most_its_share_of_connections(dam_api):
    url, _ = dam_api(DAM_MAX_CONNECTIONS_PER_CLIENT=5, DAM_HEADER_TIMEOUT_SECONDS=60)
    host, port = url.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port))) for _ in range(5)]
    try:
        time.sleep(0.3)
        r = httpx.get(f"{url}/healthz", timeout=5)
        assert r.status_code == 503 and r.headers.get("retry-after"), r.text
        assert "DAM_MAX_CONNECTIONS_PER_CLIENT" in r.json()["detail"]
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while (r := httpx.get(f"{url}/healthz", timeout=5)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)  # the server sees the closes
    assert r.status_code == 200, r.text


def test_docs_load_no_script_from_elsewhere_without_integrity(make_settings):
    """Issue 22, 6f: /docs loaded swagger-ui-dist@5 (any 5.x) from a CDN with no integrity check."""
    client = TestClient(create_app(make_settings()))
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    tags = re.findall(r"<(script|link)\b([^>]*)>", page.text)
    refs = []
    for tag, attrs in tags:
        m = re.search(r'\b(src|href)="([^"]*)"', attrs)
        if not m or m.group(2).startswith("data:"):
            continue
        ref = m.group(2)
        if not ref.startswith("/") or ref.startswith("//"):
            assert "integrity=" in attrs and "crossorigin" in attrs, f"unpinned {tag} from elsewhere: {ref}"
            continue
        refs.append(ref)
    assert any(r.endswith(".js") for r in refs) and any(r.endswith(".css") for r in refs), refs
    for ref in refs:
        r = client.get(ref)
        assert r.status_code == 200 and len(r.content) > 10_000, ref
        assert r.headers["content-type"].startswith(("text/javascript", "text/css")), ref
    assert client.get("/redoc").status_code == 404  # ReDoc loaded an unpinned CDN script too: off
