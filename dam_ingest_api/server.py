"""Serving the API with uvicorn, plus what uvicorn lacks: a deadline for the request head, and a
connection policy under which idle or unauthenticated connections cannot lock out key holders."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TypedDict

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from dam_core.settings import get_settings

log = logging.getLogger("dam_ingest_api.server")

LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


# Past this share of DAM_MAX_CONNECTIONS open connections, idle keep-alive connections without a
# valid key are closed, and answers to requests without one carry `Connection: close`.
IDLE_SHED_FRACTION = 0.5
_SHED_EVERY_SECONDS = 0.1  # a sweep of the idle connections looks at all of them: not on every accept


@dataclass(frozen=True)
class ConnectionPolicy:
    """What a connection may hold: the request-head deadline, and who gets served when connections run short.

    ``max_connections`` (DAM_MAX_CONNECTIONS): open connections past which a request without a
    valid key gets 503; requests with a valid ``api_key`` are not counted against connections at
    all, only against their own allowance of as many requests in flight. So connections that
    anyone can open (idle keep-alives after a GET /healthz, silent sockets) cannot lock a key
    holder out. ``max_per_client`` (DAM_MAX_CONNECTIONS_PER_CLIENT): open connections from one
    address, 0 for no cap.
    """

    header_timeout: float = 10.0
    max_connections: int | None = None
    max_per_client: int = 0
    api_key: bytes | None = None

    @classmethod
    def from_settings(cls, settings) -> ConnectionPolicy:
        key = settings.dam_api_key.get_secret_value().encode() if settings.dam_api_key else None
        return cls(
            header_timeout=settings.dam_header_timeout_seconds,
            max_connections=settings.dam_max_connections,
            max_per_client=settings.dam_max_connections_per_client,
            api_key=key,
        )


class _Shared:
    """Per-server counters, kept on uvicorn's ServerState (one per process, shared by its connections)."""

    def __init__(self) -> None:
        self.per_client: Counter[str] = Counter()
        self.authorized_in_flight = 0
        self.last_shed = float("-inf")

    @staticmethod
    def of(server_state) -> _Shared:
        shared = getattr(server_state, "_dam_shared", None)
        if shared is None:
            shared = _Shared()
            server_state._dam_shared = shared
        return shared


def _json_503(detail: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    return headers, body


def _busy_app(detail: str):
    headers, body = _json_503(detail)

    async def busy(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return busy


_BUSY = _busy_app(
    "the server is at its connection limit (DAM_MAX_CONNECTIONS); nothing was done, try again shortly "
    "(requests with a valid X-API-Key are served apart from this limit)"
)
_BUSY_AUTHORIZED = _busy_app(
    "too many requests in flight (DAM_MAX_CONNECTIONS with a valid key); nothing was done, try again shortly"
)


def _closing(app):
    """`app`, with `Connection: close` on its answer: the connection ends after it instead of idling."""

    async def closing(scope, receive, send) -> None:
        async def send_closing(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(k.lower() == b"connection" and b"close" in v.lower() for k, v in headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_closing)

    return closing


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for the request head and a connection policy.

    The head: uvicorn 0.54 has no such timeout: its keep-alive timer is cancelled by the first
    byte, so a client sending one header line every few seconds (or nothing at all after
    connecting) holds a connection for as long as it likes. The clock starts when the connection
    opens and again when a keep-alive connection starts its next request; it stops once h11 has
    parsed the whole head (the body has its own limits).

    The policy (ConnectionPolicy) replaces uvicorn's `limit_concurrency`, which counted every open
    connection against every request: a thousand idle keep-alive connections (one unauthenticated
    GET /healthz each, renewed before the keep-alive timeout) answered every later request 503.
    Now (1) a request with a valid X-API-Key is admitted whatever the connections, up to its own
    allowance of requests in flight; (2) past IDLE_SHED_FRACTION of the cap, idle keep-alive
    connections whose last request had no valid key are closed when a new connection arrives,
    and such requests are answered with `Connection: close`; (3) one address holds at most
    `max_per_client` connections, the next is answered 503 and closed.
    """

    policy: ConnectionPolicy = ConnectionPolicy()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # the policy decides (see the `app` property)

    @property
    def header_timeout(self) -> float:
        return self.policy.header_timeout

    # uvicorn reads `self.app` once per request, right after parsing its head (self.headers is that
    # request's): the admission decision is made there.
    @property
    def app(self):
        return self._admit()

    @app.setter
    def app(self, value) -> None:
        self._asgi_app = value

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._authorized = False  # the latest request on this connection carried a valid key
        self._refused = False
        self._counted_host: str | None = None
        super().connection_made(transport)
        shared = _Shared.of(self.server_state)
        cap = self.policy.max_per_client
        host = self.client[0] if self.client else None
        if cap and host is not None:
            if shared.per_client[host] >= cap:
                self._refuse_connection(
                    f"too many connections from your address (DAM_MAX_CONNECTIONS_PER_CLIENT is {cap}); "
                    "close some or try again shortly"
                )
                return
            shared.per_client[host] += 1
            self._counted_host = host
        self._arm_head_timer()
        if self._under_pressure():
            self._shed_idle(shared)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered already; read and dropped until the close
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_timer()  # the head is in
        elif self._head_timer is None and not self.transport.is_closing():
            # Bytes of a next request on a keep-alive connection (the keep-alive timer
            # was just cancelled): its head gets the same deadline.
            self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm_head_timer()  # idle between requests: uvicorn's keep-alive timer applies

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        if self._counted_host is not None:
            shared = _Shared.of(self.server_state)
            shared.per_client[self._counted_host] -= 1
            if shared.per_client[self._counted_host] <= 0:
                del shared.per_client[self._counted_host]
            self._counted_host = None
        super().connection_lost(exc)

    # ------------------------------------------------------------------ the policy

    def _has_valid_key(self) -> bool:
        expected = self.policy.api_key
        if expected is None:
            return False
        for name, value in self.headers or ():
            if name == b"x-api-key":
                return hmac.compare_digest(value, expected)
        return False

    def _under_pressure(self) -> bool:
        limit = self.policy.max_connections
        return limit is not None and len(self.connections) >= max(1, int(limit * IDLE_SHED_FRACTION))

    def _admit(self):
        app = self._asgi_app
        limit = self.policy.max_connections
        self._authorized = self._has_valid_key()
        if limit is None:
            return app
        if self._authorized:
            shared = _Shared.of(self.server_state)
            if shared.authorized_in_flight >= limit:
                log.warning("503 for %s: %d requests with a valid key in flight", self.client, limit)
                return _BUSY_AUTHORIZED
            return self._counted(app, shared)
        if len(self.connections) >= limit or len(self.tasks) >= limit:
            log.info(
                "503 for %s: %d connections open, %d requests in flight",
                self.client,
                len(self.connections),
                len(self.tasks),
            )
            return _BUSY
        return _closing(app) if self._under_pressure() else app

    @staticmethod
    def _counted(app, shared: _Shared):
        async def counted(scope, receive, send) -> None:
            shared.authorized_in_flight += 1
            try:
                await app(scope, receive, send)
            finally:
                shared.authorized_in_flight -= 1

        return counted

    def _is_idle(self) -> bool:
        """Between requests of a keep-alive connection: uvicorn's keep-alive timer is armed only then."""
        return self.timeout_keep_alive_task is not None and not self.transport.is_closing()

    def _shed_idle(self, shared: _Shared) -> None:
        now = self.loop.time()
        if now - shared.last_shed < _SHED_EVERY_SECONDS:
            return
        shared.last_shed = now
        shed = 0
        for conn in list(self.connections):
            if conn is self or not isinstance(conn, HeaderTimeoutProtocol):
                continue
            if conn._is_idle() and not conn._authorized:
                conn.timeout_keep_alive_handler()  # what uvicorn does when keep-alive runs out
                shed += 1
        if shed:
            log.info(
                "closed %d idle keep-alive connections: %d open, the cap is %s",
                shed,
                len(self.connections),
                self.policy.max_connections,
            )

    def _refuse_connection(self, detail: str) -> None:
        """Answer 503 before any request and close: the client reads it as the answer to what it sends."""
        self._refused = True
        headers, body = _json_503(detail)
        head = b"HTTP/1.1 503 Service Unavailable\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
        self.transport.write(head + b"\r\n" + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        # Closing at once, with the client's request unread, would reset the connection and could
        # discard the answer on its way: read and drop for a moment first.
        self.loop.call_later(1.0, self.transport.close)

    # ------------------------------------------------------------------ the head timer

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered (pipelining): not an idle head
        log.info("closing %s: request head not complete within %g s", self.client, self.header_timeout)
        self.transport.close()


def header_timeout_protocol(timeout: float) -> type[H11Protocol]:
    """HeaderTimeoutProtocol with this timeout and no connection limits (for a server in this process)."""
    return protocol_for(ConnectionPolicy(header_timeout=timeout))


def protocol_for(policy: ConnectionPolicy) -> type[H11Protocol]:
    """HeaderTimeoutProtocol with this policy (for a server in this process)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"policy": policy})


class SettingsHeaderTimeoutProtocol(HeaderTimeoutProtocol):
    """HeaderTimeoutProtocol with the policy of this worker's settings.

    For worker processes: uvicorn starts each one fresh and imports its protocol and its app factory
    by name (WORKER_PROTOCOL, WORKER_APP), so the class lives at module level; the factory,
    `worker_app`, reads the settings once and sets this policy before the worker accepts a connection.
    """

    policy = ConnectionPolicy()


def worker_app():
    """The app of one `dam api --workers N` process, and its connection policy, from one read of the settings."""
    # Imported here: `dam` commands import this module for is_loopback alone, and the app pulls in
    # all of FastAPI and the API (about 0.6 s).
    from dam_ingest_api.main import create_app

    settings = get_settings()
    SettingsHeaderTimeoutProtocol.policy = ConnectionPolicy.from_settings(settings)
    return create_app(settings)


WORKER_PROTOCOL = f"{__name__}:SettingsHeaderTimeoutProtocol"
WORKER_APP = f"{__name__}:worker_app"


class _UvicornOptions(TypedDict):
    """What both ways of serving pass to uvicorn.run."""

    host: str
    port: int
    log_level: str
    timeout_keep_alive: int


def run(app, settings, host: str, port: int, log_level: str = "info", workers: int = 1) -> None:
    """Serve `app` with every connection-level limit from the settings.

    With workers > 1, uvicorn binds the socket once and starts that many processes that share
    it; each builds its own app from the environment (worker_app), so `app` is not used there,
    and every per-process limit (DAM_MAX_CONNECTIONS, DAM_MAX_CONCURRENT_UPLOADS,
    DAM_MAX_CONCURRENT_VALIDATIONS, DAM_PUBLISH_CONNECTIONS) applies to each worker.
    """
    # No uvicorn limit_concurrency: DAM_MAX_CONNECTIONS is applied by the protocol's policy, which
    # tells requests with a valid key from the rest (see HeaderTimeoutProtocol).
    common = _UvicornOptions(host=host, port=port, log_level=log_level, timeout_keep_alive=30)
    if workers > 1:
        uvicorn.run(WORKER_APP, factory=True, workers=workers, http=WORKER_PROTOCOL, **common)
        return
    uvicorn.run(app, http=protocol_for(ConnectionPolicy.from_settings(settings)), **common)
