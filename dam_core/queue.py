"""Upload queue: one interface, RabbitMQ through pika and a durable embedded queue (SQLite).

pika is imported inside the RabbitMQ queue's methods, not at the top: a process on the embedded
queue (the default) never loads it. pika ships no type information: its objects are `Any`.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import persistqueue
from persistqueue.exceptions import Empty

if TYPE_CHECKING:
    from dam_core.settings import Settings

log = logging.getLogger(__name__)


class QueueError(RuntimeError):
    """The queue could not be reached, or did not confirm a message."""


@dataclass
class Delivery:
    """One message taken from the queue and not yet acknowledged."""

    tag: Any
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)


class Consumer(abc.ABC):
    """A session that takes messages; whatever it has not acked comes back when it closes or dies."""

    @abc.abstractmethod
    def take(self, max_messages: int, wait_seconds: float, first_wait_seconds: float = 0.0) -> list[Delivery]:
        """Up to max_messages, waiting at most wait_seconds for each next one.

        A burst of uploads that arrive less than wait_seconds apart is taken whole (up to
        max_messages), not as whatever happened to be there when the call began: a sensor tick
        that falls during a burst makes one batch of it, not one per message the API had
        published so far (each batch is a run, and a small one wastes a model's batching).
        The first message is waited for up to the longer of wait_seconds and first_wait_seconds
        (a long poll: an upload arriving then is taken at once, not at the next call).
        """

    @abc.abstractmethod
    def ack(self, deliveries: list[Delivery]) -> None: ...

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a message to the dead-letter queue with the reason, then ack it."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the session; unacknowledged messages return to the queue."""


class UploadQueue(abc.ABC):
    """What the producer and the sensor need from the queue."""

    name: str

    @abc.abstractmethod
    def publish(self, body: bytes) -> None:
        """Publish a persistent message and return only once the queue confirmed it."""

    @contextlib.contextmanager
    def consumer(self) -> Iterator[Consumer]:
        c = self._open_consumer()
        try:
            yield c
        finally:
            c.close()

    @abc.abstractmethod
    def _open_consumer(self) -> Consumer: ...

    @abc.abstractmethod
    def depth(self) -> int:
        """Messages waiting (ready) in the main queue."""

    @abc.abstractmethod
    def dead_letters(self) -> list[Delivery]:
        """Peek at the dead-letter queue (for tests and operators); leaves it unchanged."""

    @abc.abstractmethod
    def ping(self) -> None: ...

    def close(self) -> None:  # noqa: B027  (not abstract: a queue that holds no connection has nothing to close)
        pass

    @abc.abstractmethod
    def describe(self) -> str: ...


# --------------------------------------------------------------------------- RabbitMQ


def _queue_arguments(dead_letter_queue: str) -> dict[str, str]:
    # Messages rejected by a consumer route to the dead-letter queue via the default exchange.
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letter_queue}


@contextlib.contextmanager
def _abort_at(conn: Any, deadline: float | None) -> Iterator[None]:
    """Abort `conn` if the block is still waiting on the broker at `deadline` (monotonic).

    pika's blocking calls (a publisher confirm, a declare) wait for the broker without a
    timeout, and the publishing connection has no heartbeats: a broker that stops answering
    without closing the socket would hold the caller, and everyone behind the lock, forever.
    This arms the same stream abort pika's heartbeat checker uses; the blocked call then
    raises AMQPConnectionError.
    """
    impl: Any = getattr(conn, "_impl", None)  # pika's connection internals
    handle = None
    if deadline is not None and impl is not None and hasattr(impl, "_terminate_stream"):
        import pika  # RabbitMQ only: see the module docstring

        def abort() -> None:
            with contextlib.suppress(Exception):
                impl._terminate_stream(pika.exceptions.AMQPConnectionError("no answer from RabbitMQ in time"))

        handle = impl._adapter_call_later(max(0.0, deadline - time.monotonic()), abort)
    try:
        yield
    finally:
        if handle is not None:
            with contextlib.suppress(Exception):
                impl._adapter_remove_timeout(handle)


class _Publisher:
    """One connection with a confirm channel; used by one thread at a time (pika is not thread-safe)."""

    def __init__(self, conn: Any, channel: Any, generation: int):
        self.conn = conn
        self.channel = channel
        self.generation = generation

    def healthy(self) -> bool:
        # Reads whatever arrived while the connection sat idle: a broker that restarted or
        # closed it shows up here, before a message is sent on it, not after.
        try:
            if not self.channel.is_open:
                return False
            self.conn.process_data_events(0)
            return bool(self.channel.is_open)
        except Exception:
            return False

    def close(self) -> None:
        # A clean close waits for the broker's Close-Ok, forever on a partitioned network.
        with contextlib.suppress(Exception), _abort_at(self.conn, time.monotonic() + 2.0):
            if self.conn.is_open:
                self.conn.close()


class RabbitQueue(UploadQueue):
    """A durable RabbitMQ queue with publisher confirms and a dead-letter queue.

    Publishing goes through a pool of up to `publishers` connections, each with its own confirm
    channel and checked out by one request at a time: confirms of different requests overlap
    instead of queueing behind one lock, so N concurrent publishes take about one round trip, not N.
    """

    def __init__(
        self,
        url: str,
        name: str,
        dead_letter_queue: str | None = None,
        publish_timeout: float = 10.0,
        publishers: int = 16,
    ):
        self.url = url
        self.name = name
        self.dlq = dead_letter_queue or f"{name}.dead"
        # The longest publish() may take, the wait for a free connection included: a broker that
        # stops answering (a partition, a frozen node) gives the caller a QueueError, never a hang.
        self.publish_timeout = publish_timeout
        self.publishers = publishers
        self._cond = threading.Condition()
        self._idle: list[_Publisher] = []  # last in, first out: the pool stays as small as the load
        self._open = 0  # publishers that exist (idle, in use, or being connected)
        self._generation = 0  # close() bumps it: connections in use then are closed when returned

    def _params(self, heartbeat: int | None = None, deadline: float | None = None) -> Any:
        import pika  # RabbitMQ only: see the module docstring

        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 10
        params.stack_timeout = 10
        if deadline is not None:
            left = max(0.1, deadline - time.monotonic())
            params.socket_timeout = min(5, left)
            params.stack_timeout = min(10, left)
        if heartbeat is not None:
            params.heartbeat = heartbeat
        return params

    def _connect(self, heartbeat: int | None = None, deadline: float | None = None) -> tuple[Any, Any]:
        import pika  # RabbitMQ only: see the module docstring

        try:
            conn = pika.BlockingConnection(self._params(heartbeat, deadline))
            with _abort_at(conn, deadline):
                ch = conn.channel()
                ch.queue_declare(self.dlq, durable=True)
                ch.queue_declare(self.name, durable=True, arguments=_queue_arguments(self.dlq))
                ch.confirm_delivery()
            return conn, ch
        except Exception as err:
            raise QueueError(f"RabbitMQ at {self.describe()} unreachable: {type(err).__name__}") from err

    def _timed_out(self) -> QueueError:
        return QueueError(f"RabbitMQ at {self.describe()} did not confirm within {self.publish_timeout:g} s")

    def _checkout(self, deadline: float) -> _Publisher:
        """A healthy publisher for this thread alone: an idle one, or a new connection if the pool has room."""
        while True:
            with self._cond:
                while not self._idle and self._open >= self.publishers:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._timed_out()
                    self._cond.wait(left)
                if self._idle:
                    pub = self._idle.pop()
                else:
                    self._open += 1  # a slot for the connection opened below, outside the lock
                    pub = None
                generation = self._generation
            if pub is not None:
                if pub.healthy():
                    return pub
                self._discard(pub)
                continue
            if time.monotonic() >= deadline:
                self._release_slot()
                raise self._timed_out()
            try:
                # No heartbeats: a connection sits idle between requests; a dead one is found
                # by the health check above and replaced.
                conn, ch = self._connect(heartbeat=0, deadline=deadline)
            except BaseException:
                self._release_slot()
                raise
            return _Publisher(conn, ch, generation)

    def _release_slot(self) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify()

    def _checkin(self, pub: _Publisher) -> None:
        with self._cond:
            if pub.generation == self._generation:
                self._idle.append(pub)
                self._cond.notify()
                return
        self._discard(pub)

    def _discard(self, pub: _Publisher) -> None:
        pub.close()
        self._release_slot()

    def publish(self, body: bytes) -> None:
        import pika  # RabbitMQ only: see the module docstring

        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")
        deadline = time.monotonic() + self.publish_timeout
        pub = self._checkout(deadline)
        if time.monotonic() >= deadline:
            self._checkin(pub)
            raise self._timed_out()
        try:
            with _abort_at(pub.conn, deadline):  # the confirm wait has no timeout of its own
                pub.channel.basic_publish("", self.name, body, props, mandatory=True)
        except pika.exceptions.UnroutableError as err:
            self._checkin(pub)  # the broker answered: the channel is fine
            raise QueueError(f"queue {self.name!r} did not route the message") from err
        except pika.exceptions.NackError as err:
            self._checkin(pub)
            raise QueueError(f"queue {self.name!r} refused the message") from err
        except BaseException as err:
            # No retry once the message may have left: a lost confirm is the client's 503, and its
            # retry is safe (the pipeline is idempotent by id), but a 202 stands for one message.
            self._discard(pub)
            if time.monotonic() >= deadline:
                raise self._timed_out() from err
            if isinstance(err, (pika.exceptions.AMQPError, OSError)):
                raise QueueError(f"RabbitMQ at {self.describe()} failed: {type(err).__name__}") from err
            raise
        self._checkin(pub)

    def _open_consumer(self) -> Consumer:
        conn, ch = self._connect()
        return _RabbitConsumer(self, conn, ch)

    def depth(self) -> int:
        conn, ch = self._connect()
        try:
            return int(ch.queue_declare(self.name, passive=True).method.message_count)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def dead_letters(self) -> list[Delivery]:
        conn, ch = self._connect()
        out: list[Delivery] = []
        try:
            while True:
                method, props, body = ch.basic_get(self.dlq, auto_ack=False)
                if method is None:
                    break
                out.append(Delivery(method.delivery_tag, body, dict(props.headers or {})))
        finally:
            with contextlib.suppress(Exception):
                conn.close()  # closing without ack puts them all back
        return out

    def ping(self) -> None:
        """Raise QueueError unless a publishing connection is (or can be) open within the deadline."""
        self._checkin(self._checkout(time.monotonic() + self.publish_timeout))

    def close(self) -> None:
        """Close the idle connections now, the ones in use when they come back; publish() reconnects."""
        with self._cond:
            self._generation += 1
            idle, self._idle = self._idle, []
        for pub in idle:
            self._discard(pub)

    def describe(self) -> str:
        u = urlparse(self.url)
        return f"{u.scheme}://{u.hostname}:{u.port or 5672}{u.path or '/'} queue={self.name}"


class _RabbitConsumer(Consumer):
    def __init__(self, queue: RabbitQueue, conn: Any, channel: Any):
        self.queue = queue
        self.conn = conn
        self.channel = channel
        self._prefetch = 0
        # (method, properties, body) per message; all None when nothing arrived in time.
        self._gen: Iterator[tuple[Any, Any, Any]] | None = None
        self._wait: float | None = None

    def take(self, max_messages: int, wait_seconds: float, first_wait_seconds: float = 0.0) -> list[Delivery]:
        if self._gen is None or self._prefetch != max_messages or self._wait != wait_seconds:
            if self._gen is not None:
                self.channel.cancel()
            self.channel.basic_qos(prefetch_count=max_messages)
            self._prefetch, self._wait = max_messages, wait_seconds
            self._gen = self.channel.consume(self.queue.name, auto_ack=False, inactivity_timeout=wait_seconds)
        out: list[Delivery] = []
        first_deadline = time.monotonic() + first_wait_seconds
        for method, props, body in self._gen:
            if method is None:  # nothing arrived within wait_seconds
                if not out and time.monotonic() < first_deadline:
                    continue  # the long poll: the generator yields None every wait_seconds
                break
            out.append(Delivery(method.delivery_tag, body, dict((props.headers if props else None) or {})))
            if len(out) >= max_messages:
                break
        return out

    def ack(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            # Tags on one channel grow monotonically: one multiple-ack covers the batch.
            self.channel.basic_ack(max(d.tag for d in deliveries), multiple=True)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        import pika  # RabbitMQ only: see the module docstring

        headers = dict(delivery.headers)
        headers.update(
            {"x-dam-reason": reason[:1000], "x-dam-queue": self.queue.name, "x-dam-failed-at": int(time.time())}
        )
        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, headers=headers)
        self.channel.basic_publish("", self.queue.dlq, delivery.body, props, mandatory=True)
        self.channel.basic_ack(delivery.tag)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._gen is not None:
                self.channel.cancel()
        with contextlib.suppress(Exception):
            self.conn.close()


# --------------------------------------------------------------------------- embedded


class EmbeddedQueue(UploadQueue):
    """A durable local queue in SQLite (persist-queue); survives restarts, one consumer at a time."""

    def __init__(self, directory: Path, name: str):
        self.directory = Path(directory)
        self.name = name
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._producer: persistqueue.SQLiteAckQueue | None = None

    def _open(self, name: str, resume: bool) -> persistqueue.SQLiteAckQueue:
        try:
            return persistqueue.SQLiteAckQueue(
                str(self.directory),
                db_file_name=f"{name}.sqlite",
                auto_resume=resume,
                multithreading=True,
                serializer=_TolerantJson,
                timeout=30,
            )
        except Exception as err:
            raise QueueError(f"embedded queue at {self.directory} unusable: {type(err).__name__}: {err}") from err

    def publish(self, body: bytes) -> None:
        with self._lock:
            try:
                if self._producer is None:
                    # The producer never resumes unacked messages: that is the consumer's job.
                    self._producer = self._open(self.name, resume=False)
                # SQLite commits (and syncs) the insert before put() returns: that is our confirm.
                self._producer.put({"body": body.decode("utf-8"), "headers": {}})
            except QueueError:
                raise
            except Exception as err:
                self._producer = None
                raise QueueError(f"embedded queue write failed: {type(err).__name__}") from err

    def _open_consumer(self) -> Consumer:
        # Opening with resume=True returns messages a crashed consumer had taken but not acked.
        return _EmbeddedConsumer(self, self._open(self.name, resume=True))

    def depth(self) -> int:
        q = self._open(self.name, resume=False)
        try:
            return q.qsize()  # counted from SQLite when opened: includes other processes' puts
        finally:
            q.close()

    def dead_letters(self) -> list[Delivery]:
        q = self._open(f"{self.name}.dead", resume=False)
        try:
            rows = q.queue()
            out: list[Delivery] = []
            for row in rows:
                data = row["data"]
                out.append(Delivery(row["id"], data["body"].encode(), data.get("headers", {})))
            return out
        finally:
            q.close()

    def ping(self) -> None:
        with self._lock:
            if self._producer is None:
                self._producer = self._open(self.name, resume=False)
            try:
                self._producer.qsize()
            except Exception as err:
                self._producer = None
                raise QueueError(f"embedded queue unreadable: {type(err).__name__}") from err

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                with contextlib.suppress(Exception):
                    self._producer.close()
                self._producer = None

    def describe(self) -> str:
        return f"sqlite://{self.directory}/{self.name}.sqlite"


class _TolerantJson:
    """persist-queue's JSON serializer, except that a row it cannot decode becomes a value the
    consumer dead-letters instead of an exception that would stop the queue at that row forever."""

    @staticmethod
    def dumps(value: Any) -> bytes:
        return json.dumps(value).encode("utf-8")

    @staticmethod
    def loads(blob: bytes | str) -> Any:
        try:
            return json.loads(blob)
        except Exception:
            raw = blob if isinstance(blob, (bytes, bytearray)) else str(blob).encode("utf-8", "surrogatepass")
            return {"body": bytes(raw).decode("utf-8", "replace"), "headers": {"x-dam-undecodable-row": True}}


def _row_message(data: Any) -> tuple[bytes, dict[str, Any]]:
    """A stored row as (body, headers). publish() writes {"body": str, "headers": {}}; anything
    else (a foreign writer, a damaged row) becomes a body that fails to parse, never an exception."""
    if isinstance(data, dict) and isinstance(data.get("body"), str):
        headers = data.get("headers")
        return data["body"].encode("utf-8", "surrogatepass"), headers if isinstance(headers, dict) else {}
    return json.dumps(data, default=str).encode("utf-8"), {}


class _EmbeddedConsumer(Consumer):
    def __init__(self, queue: EmbeddedQueue, q: persistqueue.SQLiteAckQueue):
        self.queue = queue
        self.q = q
        self._dead: persistqueue.SQLiteAckQueue | None = None

    def take(self, max_messages: int, wait_seconds: float, first_wait_seconds: float = 0.0) -> list[Delivery]:
        out: list[Delivery] = []
        deadline = time.monotonic() + max(wait_seconds, first_wait_seconds)
        while len(out) < max_messages:
            try:
                row = self.q.get(block=False, raw=True)
            except Empty:
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
                continue
            body, headers = _row_message(row["data"])
            out.append(Delivery(row["pqid"], body, headers))
            deadline = time.monotonic() + wait_seconds  # as RabbitMQ's inactivity timeout: per message
        return out

    def ack(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            self.q.ack(id=d.tag)
        self.q.clear_acked_data(keep_latest=0)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if self._dead is None:
            self._dead = self.queue._open(f"{self.queue.name}.dead", resume=False)
        headers = dict(delivery.headers)
        headers.update(
            {"x-dam-reason": reason[:1000], "x-dam-queue": self.queue.name, "x-dam-failed-at": int(time.time())}
        )
        self._dead.put({"body": delivery.body.decode("utf-8", "replace"), "headers": headers})
        self.q.ack(id=delivery.tag)

    def close(self) -> None:
        # As with RabbitMQ, what this session took and did not ack is ready again (and counted by
        # depth()) once it closes. After a crash the rows stay 'unack' until the next consumer opens.
        with contextlib.suppress(Exception):
            self.q.resume_unack_tasks()
        for q in (self.q, self._dead):
            if q is not None:
                with contextlib.suppress(Exception):
                    q.close()


def make_queue(settings: "Settings") -> UploadQueue:
    """The queue the settings ask for: RabbitMQ when AMQP_URL is set, else the embedded one."""
    if settings.uses_rabbitmq:
        assert settings.amqp_url is not None  # what uses_rabbitmq checks
        return RabbitQueue(
            settings.amqp_url.get_secret_value(),
            settings.dam_queue,
            settings.dead_letter_queue,
            publishers=settings.dam_publish_connections,
        )
    return EmbeddedQueue(settings.data_dir / "queue", settings.dam_queue)
