"""Multipart upload ids that hold a `/` (Cloudflare R2's do: `…/…+…=`) reach their /s3 route whole.

Uppy and `dam upload` percent-encode the id into the path (`/s3/multipart/{uploadId}/…`); the
server hands the app the path decoded, where `%2F` is a `/` like any other, so the route no longer
matched (a 404 for every multipart call on R2). This ASGI middleware routes that one segment as
it was sent, still encoded; the routes decode it (`routes/direct.py`, `upload_id`). The rest of
the path, and every other path, is left as the server decoded it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

PREFIX = "/s3/multipart/"
_RAW_PREFIX = PREFIX.encode()


class RawUploadIdPaths:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and raw.startswith(_RAW_PREFIX):
            segment, slash, rest = raw[len(_RAW_PREFIX) :].split(b"?", 1)[0].partition(b"/")
            # In place: the middleware outside this one (request_metrics.py) reads the route the
            # router records in this same scope.
            scope["path"] = PREFIX + segment.decode("latin-1") + slash.decode() + unquote(rest.decode("latin-1"))
        await self.app(scope, receive, send)


__all__ = ["RawUploadIdPaths"]
