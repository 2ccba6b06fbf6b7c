"""Serving the API with uvicorn, plus what uvicorn lacks: a deadline for the request head."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

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


def header_timeout_protocol(timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head is not complete within `timeout`.

    uvicorn 0.54 has no such timeout: its keep-alive timer is cancelled by the first byte, so a
    client sending one header line every few seconds (or nothing at all after connecting) holds
    a connection, and with it a slot of `limit_concurrency`, for as long as it likes. The clock
    starts when the connection opens and again when a keep-alive connection starts its next
    request; it stops once h11 has parsed the whole head (the body has its own limits).
    """

    class HeaderTimeoutProtocol(H11Protocol):
        header_timeout = timeout

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._head_timer: asyncio.TimerHandle | None = None
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
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
            super().connection_lost(exc)

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

    return HeaderTimeoutProtocol


def run(app, settings, host: str, port: int, log_level: str = "info") -> None:
    """Serve `app` with every connection-level limit from the settings."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=30,
        http=header_timeout_protocol(settings.dam_header_timeout_seconds),
        limit_concurrency=settings.dam_max_connections,
    )
