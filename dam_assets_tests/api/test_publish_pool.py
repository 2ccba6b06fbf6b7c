"""Publishing through the pool of confirm channels: concurrent, each publish its own confirm, bounded.

Real RabbitMQ throughout, reached directly, through a delay proxy (bench.netem, a remote broker)
or through a TCP proxy the tests cut (dam_assets_tests/faults/proxy.py); uploads over HTTP to the
real app under uvicorn, with moto's S3 server as the store.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pika
import pytest

from dam_assets_tests.conftest import free_port, jpeg_bytes
from dam_assets_tests.faults.proxy import TcpProxy
from dam_assets_tests.faults.server import serve
from dam_core.messages import UploadMessage
from dam_core.queue import QueueError, RabbitQueue
from dam_core.store import make_store
from dam_ingest_api.main import create_app

REPO = Path(__file__).resolve().parents[2]


def _drain(rabbit_url: str, queue: str) -> list[bytes]:
    """Every message in the queue, taken and acked."""
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    out = []
    try:
        ch = conn.channel()
        while True:
            method, _, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append(body)
    finally:
        conn.close()


class DelayProxy:
    """bench.netem in its own process: the broker `one_way_ms` away in each direction."""

    def __init__(self, target_port: int, one_way_ms: float):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.netem",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--target",
                f"127.0.0.1:{target_port}",
                "--delay-ms",
                str(one_way_ms),
            ],
            cwd=REPO,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "delay proxy did not start"
                time.sleep(0.05)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait()


def test_concurrent_publishes_each_get_their_own_confirm(rabbit_url, queue_name):
    """48 threads publish at once through 8 pooled connections: every call returns once its own
    message is confirmed, each message is in the queue exactly once, and the pool never grows past 8."""
    q = RabbitQueue(rabbit_url, queue_name, publishers=8)
    bodies = [json.dumps({"n": i}).encode() for i in range(48)]
    start = threading.Barrier(48)
    peak = [0]
    lock = threading.Lock()

    def publish(body):
        start.wait()
        q.publish(body)
        with lock:
            peak[0] = max(peak[0], q._open)
        return body

    try:
        with ThreadPoolExecutor(48) as pool:
            done = list(pool.map(publish, bodies))
        assert done == bodies
        assert 1 <= q._open <= 8 and peak[0] <= 8
        assert q.depth() == 48
    finally:
        q.close()
    assert q._open == 0  # close() closed every idle connection
    got = Counter(_drain(rabbit_url, queue_name))
    assert got == Counter(bodies)


def test_confirm_round_trips_overlap_instead_of_queueing(rabbit_url, queue_name):
    """With the broker 100 ms away, 16 concurrent publishes take about one round trip, not 16."""
    proxy = DelayProxy(5672, one_way_ms=50)
    far = rabbit_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    q = RabbitQueue(far, queue_name, publishers=16)
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: q.publish(b'{"warm": %d}' % i), range(16)))  # open the connections
        start = threading.Barrier(16)

        def publish(i):
            start.wait()
            t = time.monotonic()
            q.publish(b'{"n": %d}' % i)
            return time.monotonic() - t

        with ThreadPoolExecutor(16) as pool:
            t0 = time.monotonic()
            took = list(pool.map(publish, range(16)))
            wall = time.monotonic() - t0
        # Behind one lock this is 16 confirm round trips (>= 1.6 s); pooled, a few at most.
        assert wall < 0.8, (wall, sorted(took))
        assert min(took) >= 0.09  # and each still waited for its confirm, a full round trip
        assert q.depth() == 32
    finally:
        q.close()
        proxy.close()


@pytest.mark.system
def test_a_publish_waiting_for_a_pooled_connection_keeps_its_deadline(rabbit_url, queue_name):
    """Partitioned broker, 2 pooled connections, 8 publishers: all fail within the deadline, none hangs."""
    with TcpProxy("127.0.0.1", 5672) as proxy:
        q = RabbitQueue(
            rabbit_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}"),
            queue_name,
            publish_timeout=1.5,
            publishers=2,
        )
        q.publish(b'{"before": 1}')
        proxy.cut("blackhole")

        def publish(i):
            t = time.monotonic()
            try:
                q.publish(b'{"n": %d}' % i)
                return "confirmed", time.monotonic() - t
            except QueueError:
                return "QueueError", time.monotonic() - t

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(publish, range(8)))
        assert {r for r, _ in results} == {"QueueError"}, results
        assert max(t for _, t in results) < 1.5 + 1.0, results
        proxy.restore()
        q.close()


@pytest.mark.system
@pytest.mark.parametrize("mode", ["reset", "blackhole"])
def test_concurrent_uploads_through_a_broker_cut_answer_202_or_503_and_each_202_is_one_message(
    make_settings, s3_env, rabbit_url, queue_name, mode
):
    """16 clients upload over HTTP while the broker is cut and restored: only 202 or 503, never a
    hang past the deadline, and every 202 has exactly one message in the queue."""
    n, clients, publish_timeout = 64, 16, 2.0
    blobs = [jpeg_bytes(64, 48, color=(i * 37 % 256, i * 11 % 256, 90), seed=500 + i) for i in range(n)]
    with TcpProxy("127.0.0.1", 5672) as proxy:
        proxied = rabbit_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
        settings = make_settings(**s3_env, AMQP_URL=proxied, DAM_QUEUE=queue_name)
        queue = RabbitQueue(
            proxied, queue_name, settings.dead_letter_queue, publish_timeout=publish_timeout, publishers=8
        )
        app = create_app(settings, store=make_store(settings), queue=queue)
        with serve(app) as url:
            sent = threading.Event()
            counter = iter(range(n))
            answered = [0]
            lock = threading.Lock()

            def client(_):
                out = []
                with httpx.Client(timeout=60) as c:
                    while True:
                        with lock:
                            i = next(counter, None)
                        if i is None:
                            return out
                        t = time.monotonic()
                        r = c.post(f"{url}/upload", files={"file": (f"cut-{i}.jpg", blobs[i], "image/jpeg")})
                        out.append((i, r.status_code, r.json(), time.monotonic() - t))
                        with lock:
                            answered[0] += 1
                            if answered[0] == n // 4:  # cut once uploads flow, however slow the start
                                sent.set()
                        time.sleep(0.02)

            def cutter():
                sent.wait(30)
                proxy.cut(mode)
                time.sleep(1.0 if mode == "reset" else 3.0)
                proxy.restore()

            th = threading.Thread(target=cutter)
            th.start()
            with ThreadPoolExecutor(clients) as pool:
                results = [r for part in pool.map(client, range(clients)) for r in part]
            th.join()
    assert len(results) == n
    statuses = Counter(s for _, s, _, _ in results)
    print(f"[broker {mode}, {clients} clients] answers: {dict(statuses)}, slowest {max(t for *_, t in results):.2f} s")
    assert set(statuses) <= {202, 503}, statuses
    assert statuses[202] > 0 and statuses[503] > 0, statuses  # the cut was exercised
    # The deadline covers the wait for a pooled connection and the confirm; the rest is store and HTTP.
    assert max(t for *_, t in results) < publish_timeout + 5
    for _, s, body, _ in results:
        if s == 503:
            assert "unavailable" in body["detail"] and "Traceback" not in json.dumps(body)
    time.sleep(0.5)  # what the proxy held is delivered or dropped by now
    messages = Counter(UploadMessage.from_json(b).id for b in _drain(rabbit_url, queue_name))
    accepted = {body["id"] for _, s, body, _ in results if s == 202}
    assert {i: messages[i] for i in accepted} == {i: 1 for i in accepted}
    # A 503 may still have reached the broker (its confirm was lost with the connection): at most once.
    assert all(count == 1 for count in messages.values()), messages
