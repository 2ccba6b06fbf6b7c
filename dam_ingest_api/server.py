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


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is not complete within `header_timeout`.

    uvicorn 0.54 has no such timeout: its keep-alive timer is cancelled by the first byte, so a
    client sending one header line every few seconds (or nothing at all after connecting) holds
    a connection, and with it a slot of `limit_concurrency`, for as long as it likes. The clock
    starts when the connection opens and again when a keep-alive connection starts its next
    request; it stops once h11 has parsed the whole head (the body has its own limits).
    """

    header_timeout: float = 10.0

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


def header_timeout_protocol(timeout: float) -> type[H11Protocol]:
    """HeaderTimeoutProtocol with this timeout (for a server in this process)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": timeout})


class SettingsHeaderTimeoutProtocol(HeaderTimeoutProtocol):
    """HeaderTimeoutProtocol with the timeout of this process's settings.

    For worker processes: uvicorn starts each one fresh and imports its protocol by name
    (WORKER_PROTOCOL), so the class must live at module level and read its own settings.
    """

    @property
    def header_timeout(self) -> float:  # type: ignore[override]
        from dam_core.settings import get_settings

        return get_settings().dam_header_timeout_seconds


WORKER_PROTOCOL = f"{__name__}:SettingsHeaderTimeoutProtocol"
WORKER_APP = "dam_ingest_api.main:app"  # the factory each worker calls: settings from the environment


def run(app, settings, host: str, port: int, log_level: str = "info", workers: int = 1) -> None:
    """Serve `app` with every connection-level limit from the settings.

    With workers > 1, uvicorn binds the socket once and starts that many processes that share
    it; each builds its own app from the environment (WORKER_APP), so `app` is not used there,
    and every per-process limit (DAM_MAX_CONNECTIONS, DAM_MAX_CONCURRENT_UPLOADS,
    DAM_MAX_CONCURRENT_VALIDATIONS, DAM_PUBLISH_CONNECTIONS) applies to each worker.
    """
    import uvicorn

    common = dict(
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=30,
        limit_concurrency=settings.dam_max_connections,
    )
    if workers > 1:
        uvicorn.run(WORKER_APP, factory=True, workers=workers, http=WORKER_PROTOCOL, **common)
        return
    uvicorn.run(app, http=header_timeout_protocol(settings.dam_header_timeout_seconds), **common)
