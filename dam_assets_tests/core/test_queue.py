"""One contract for both upload queues: the embedded SQLite queue and RabbitMQ (real broker)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pika
import pytest

from dam_assets_tests.conftest import free_port
from dam_core.queue import EmbeddedQueue, QueueError, RabbitQueue, UploadQueue

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["embedded", "rabbitmq"])
def queue(request, tmp_path) -> UploadQueue:
    if request.param == "embedded":
        q: UploadQueue = EmbeddedQueue(tmp_path / "queue", "uploads")
    else:
        rabbit_url = request.getfixturevalue("rabbit_url")
        name = request.getfixturevalue("queue_name")
        q = RabbitQueue(rabbit_url, name, f"{name}.dead")
    yield q
    q.close()


def _msg(i: int) -> bytes:
    return json.dumps({"n": i, "text": f"message {i} \u00e9"}).encode()


def _take_all(consumer, expected: int, wait: float = 2.0):
    """Take until `expected` messages arrived (a broker may hand them out over several calls)."""
    out = []
    deadline = time.monotonic() + 10
    while len(out) < expected and time.monotonic() < deadline:
        out += consumer.take(expected - len(out), wait)
    return out


def test_publish_take_ack_depth(queue):
    assert queue.depth() == 0
    for i in range(3):
        queue.publish(_msg(i))
    assert queue.depth() == 3
    with queue.consumer() as c:
        got = _take_all(c, 3)
        assert [d.body for d in got] == [_msg(i) for i in range(3)]  # FIFO, bytes unchanged
        c.ack(got)
        assert c.take(10, 0.2) == []
    assert queue.depth() == 0
    with queue.consumer() as c:
        assert c.take(10, 0.2) == []  # acked messages never come back


def test_take_respects_max_messages(queue):
    for i in range(5):
        queue.publish(_msg(i))
    with queue.consumer() as c:
        first = c.take(2, 2.0)
        assert len(first) == 2
        rest = _take_all(c, 3)
        assert [d.body for d in first + rest] == [_msg(i) for i in range(5)]
        c.ack(first + rest)
    assert queue.depth() == 0


def test_take_waits_at_most_wait_seconds(queue):
    with queue.consumer() as c:
        t0 = time.monotonic()
        assert c.take(5, 0.5) == []
        assert time.monotonic() - t0 < 3


def test_a_burst_arriving_while_taking_is_taken_whole(queue):
    """Messages 50 ms apart for 1 s: one take returns them all (the sensor makes one batch of a burst)."""
    with ThreadPoolExecutor(1) as pool:

        def burst() -> None:
            for i in range(20):
                queue.publish(_msg(i))
                time.sleep(0.05)

        with queue.consumer() as c:
            sending = pool.submit(burst)
            got = c.take(64, 0.5)
            sending.result()
            assert [d.body for d in got] == [_msg(i) for i in range(20)]
            c.ack(got)
            t0 = time.monotonic()
            assert c.take(64, 0.5) == [] and time.monotonic() - t0 < 3


def test_the_first_message_is_waited_for_up_to_first_wait_seconds(queue):
    """The long poll: an upload 1 s into a take with a 4 s first wait is taken when it arrives, and
    the take then returns after wait_seconds of quiet, not at the end of the first wait."""
    with ThreadPoolExecutor(1) as pool, queue.consumer() as c:
        t0 = time.monotonic()
        assert c.take(64, 0.2, first_wait_seconds=0.6) == []  # nothing came: the first wait bounds it
        assert 0.5 < time.monotonic() - t0 < 3

        def later() -> float:
            time.sleep(1.0)
            queue.publish(_msg(1))
            return time.monotonic()

        sent = pool.submit(later)
        got = c.take(64, 0.2, first_wait_seconds=4.0)
        returned = time.monotonic()
        assert [d.body for d in got] == [_msg(1)]
        assert returned - sent.result() < 1.5  # taken on arrival (+ wait_seconds of quiet), not after 4 s
        c.ack(got)


def test_unacked_messages_come_back_after_close(queue):
    queue.publish(_msg(1))
    queue.publish(_msg(2))
    with queue.consumer() as c:
        got = _take_all(c, 2)
        assert len(got) == 2
        c.ack(got[:1])  # only the first
    # The unacked one is back, counted as waiting, for any later consumer.
    assert queue.depth() == 1
    with queue.consumer() as c:
        again = _take_all(c, 1)
        assert [d.body for d in again] == [_msg(2)]
        assert c.take(5, 0.3) == []
        c.ack(again)
    assert queue.depth() == 0


def test_dead_letter_moves_message_with_reason_and_does_not_block(queue):
    queue.publish(b"{not json")
    queue.publish(_msg(7))
    with queue.consumer() as c:
        bad = c.take(1, 2.0)
        assert [d.body for d in bad] == [b"{not json"]
        c.dead_letter(bad[0], "malformed message: body is not JSON")
        good = _take_all(c, 1)
        assert [d.body for d in good] == [_msg(7)]
        c.ack(good)
    assert queue.depth() == 0
    dead = queue.dead_letters()
    assert len(dead) == 1
    assert dead[0].body == b"{not json"
    assert dead[0].headers["x-dam-reason"] == "malformed message: body is not JSON"
    assert dead[0].headers["x-dam-queue"] == queue.name
    # Peeking leaves the dead-letter queue unchanged, and a dead letter never returns to the main queue.
    assert len(queue.dead_letters()) == 1
    with queue.consumer() as c:
        assert c.take(5, 0.3) == []


def test_ping_and_describe(queue):
    queue.ping()
    text = queue.describe()
    assert queue.name in text
    assert "guest:guest" not in text  # never the credentials


def test_publish_is_thread_safe(queue):
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: queue.publish(_msg(i)), range(40)))
    assert queue.depth() == 40
    with queue.consumer() as c:
        got = _take_all(c, 40)
        assert sorted(d.body for d in got) == sorted(_msg(i) for i in range(40))
        c.ack(got)
    assert queue.depth() == 0


# --------------------------------------------------------------------------- embedded only


def test_embedded_queue_survives_a_restart(tmp_path):
    q = EmbeddedQueue(tmp_path / "queue", "uploads")
    q.publish(_msg(1))
    q.publish(_msg(2))
    with q.consumer() as c:
        taken = c.take(1, 1.0)
        assert [d.body for d in taken] == [_msg(1)]  # taken, never acked: the process "dies"
    q.close()
    del q

    q2 = EmbeddedQueue(tmp_path / "queue", "uploads")
    with q2.consumer() as c:
        got = _take_all(c, 2)
        assert sorted(d.body for d in got) == [_msg(1), _msg(2)]
        c.ack(got)
    assert q2.depth() == 0
    q2.close()


@pytest.mark.system
def test_embedded_queue_sees_messages_published_by_another_process(tmp_path):
    folder = tmp_path / "queue"
    q = EmbeddedQueue(folder, "uploads")
    q.publish(_msg(0))  # this process holds a producer open meanwhile
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dam_core.queue import EmbeddedQueue\n"
        "q = EmbeddedQueue(Path(sys.argv[1]), 'uploads')\n"
        "for i in (1, 2, 3):\n"
        "    q.publish(('{\"n\": %d}' % i).encode())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert q.depth() == 4
    with q.consumer() as c:
        got = _take_all(c, 4)
        assert [d.body for d in got] == [_msg(0), b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
        c.ack(got)
    assert q.depth() == 0
    q.close()


def test_embedded_queue_dead_letters_survive_a_restart(tmp_path):
    q = EmbeddedQueue(tmp_path / "queue", "uploads")
    q.publish(b"garbage")
    with q.consumer() as c:
        (d,) = c.take(1, 1.0)
        c.dead_letter(d, "not an upload")
    q.close()
    dead = EmbeddedQueue(tmp_path / "queue", "uploads").dead_letters()
    assert [(x.body, x.headers["x-dam-reason"]) for x in dead] == [(b"garbage", "not an upload")]


# --------------------------------------------------------------------------- RabbitMQ only


def test_rabbitmq_messages_are_persistent_and_queue_durable(rabbit_url, queue_name):
    q = RabbitQueue(rabbit_url, queue_name)
    try:
        q.publish(_msg(42))
    finally:
        q.close()
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    try:
        ch = conn.channel()
        method, props, body = ch.basic_get(queue_name, auto_ack=False)
        assert method is not None and body == _msg(42)
        assert props.delivery_mode == 2
        assert props.content_type == "application/json"
        ch.basic_nack(method.delivery_tag, requeue=True)
        # Redeclaring with the same durable arguments is accepted...
        ch.queue_declare(
            queue_name,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue_name}.dead"},
        )
        ch.queue_declare(f"{queue_name}.dead", durable=True)
        # ...and as non-durable the broker refuses it (PRECONDITION_FAILED): the queue is durable.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare(queue_name, durable=False)
        assert info.value.reply_code == 406
    finally:
        conn.close()


def test_rabbitmq_dead_letter_is_persistent(rabbit_url, queue_name):
    q = RabbitQueue(rabbit_url, queue_name)
    q.publish(b"bad")
    with q.consumer() as c:
        (d,) = c.take(1, 2.0)
        c.dead_letter(d, "why")
    q.close()
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    try:
        ch = conn.channel()
        method, props, body = ch.basic_get(f"{queue_name}.dead", auto_ack=False)
        assert body == b"bad" and props.delivery_mode == 2 and props.headers["x-dam-reason"] == "why"
    finally:
        conn.close()


def test_rabbitmq_unreachable_raises_queue_error_quickly():
    secret = "unreachable-broker-pw"
    q = RabbitQueue(f"amqp://guest:{secret}@127.0.0.1:{free_port()}/%2F", "uploads")
    t0 = time.monotonic()
    with pytest.raises(QueueError) as info:
        q.publish(b"{}")
    assert time.monotonic() - t0 < 5
    assert secret not in str(info.value)
    with pytest.raises(QueueError):
        q.ping()
    with pytest.raises(QueueError):
        q.depth()
    q.close()
