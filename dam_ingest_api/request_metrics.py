"""ASGI middleware counting and timing every HTTP request by route template, and uploads in flight.

The handler label is the matched route's template (`/assets/{asset_id}`), never the raw path, so
ids do not multiply the series; a request no route matched is `none`. A pure ASGI middleware (not
Starlette's BaseHTTPMiddleware): it only wraps `send` to see the status, bodies stream through.
"""

from __future__ import annotations

import time

from dam_ingest_api import metrics

UPLOAD_PATH = "/upload"
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}  # any other: "other" (a client's word)


class RequestMetrics:
    """http_requests_total, http_request_duration_seconds, dam_uploads_in_flight, and upload refusals
    answered before the route read the files (401, 408, 413, busy 503, malformed)."""

    def __init__(self, app):
        self.app = app
        self._counters: dict[tuple[str, str, str], object] = {}  # label children, looked up once
        self._timers: dict[tuple[str, str], object] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in _METHODS else "other"
        upload = method == "POST" and scope["path"] == UPLOAD_PATH
        status = 500  # what the client gets when the app raises before answering
        started = time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if upload:
            metrics.UPLOADS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            if upload:
                metrics.UPLOADS_IN_FLIGHT.dec()
                if status >= 400 and not scope.get(metrics.FILES_COUNTED):
                    metrics.request_rejected(metrics.request_reason(status))
            handler = getattr(scope.get("route"), "path", None) or "none"
            self._counter(method, handler, str(status)).inc()
            self._timer(method, handler).observe(elapsed)

    def _counter(self, method: str, handler: str, status: str):
        key = (method, handler, status)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = metrics.HTTP_REQUESTS.labels(method, handler, status)
        return child

    def _timer(self, method: str, handler: str):
        key = (method, handler)
        child = self._timers.get(key)
        if child is None:
            child = self._timers[key] = metrics.HTTP_DURATION.labels(method, handler)
        return child


__all__ = ["RequestMetrics"]
