"""A direct upload's two API calls answered as plain ASGI, in front of FastAPI.

A direct upload to an original's own key (content_puts.py) costs the API two requests, `GET
/s3/params` and `POST /s3/complete`, and FastAPI's own work on each (dependency solving, parameter
and response models, a thread hop for the signing) was about as much CPU as the signing, the
store's reads and the confirmed publish together (bench/NOTES.md, session 12). `DirectFastPath`
answers those two requests itself when they are the common, well-formed case: the API key matches
(or none is set), the parameters are within their limits, and the PUT is to an original's own key.
Anything else (a missing or wrong key, a parameter FastAPI would refuse, a staging key, a refusal
of the signing) goes on to the FastAPI routes in routes/direct.py, which stay the one definition
of those answers and of the OpenAPI document. The completion's refusals, which follow side
effects (a removed object), are answered here with the routes' own mapping (`refusal`,
`queued_answer`).

It sits inside the request metrics and CORS middlewares, so both see these requests as before;
the route it answers for is recorded in the scope like the router's.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from dam_core.store import StoreError
from dam_ingest_api.deps import api_key_accepted
from dam_ingest_api.direct import DirectUploads
from dam_ingest_api.routes.direct import (
    MAX_FILENAME_CHARS,
    MAX_KEY_CHARS,
    MAX_TYPE_CHARS,
    METADATA_PARAM,
    REFUSALS,
    queued_answer,
    refusal,
    router,
)
from dam_ingest_api.schemas import INTERNAL_ERROR, STORE_DOWN, ErrorBody, UploadParameters

log = logging.getLogger("dam_ingest_api")

PARAMS = ("GET", "/s3/params")
COMPLETE = ("POST", "/s3/complete")
_JSON = (b"content-type", b"application/json")

Answer = tuple[int, BaseModel, list[tuple[bytes, bytes]]]


class DirectFastPath:
    """ASGI middleware: `GET /s3/params` and `POST /s3/complete` for PUTs to an original's own key."""

    ROUTES = {PARAMS: "_params", COMPLETE: "_complete"}  # (method, path) -> the handler's name

    def __init__(self, app: Any):
        self.app = app
        # The routes these requests stand for: the router records the one it matched in the scope
        # (the request metrics label requests by its path); here, the same objects.
        self._routes = {(m, r.path): r for r in router.routes if isinstance(r, APIRoute) for m in r.methods or ()}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        name = self.ROUTES.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if name is not None:
            handler = getattr(self, name)
            fastapi_app = scope["app"]
            direct = DirectUploads.of(fastapi_app.state.uploader) if _key_accepted(fastapi_app, scope) else None
            answer = await handler(fastapi_app, scope, direct) if direct is not None else None
            if answer is not None:
                scope["route"] = self._routes.get((scope["method"], scope["path"]))
                await _send(send, *answer)
                return
        await self.app(scope, receive, send)

    async def _params(self, fastapi_app: Any, scope: dict, direct: DirectUploads) -> Answer | None:
        items = _query(scope)
        if items is None:
            return None
        values = dict(items)
        filename, content_type = values.get("filename"), values.get("type")
        if len(filename or "") > MAX_FILENAME_CHARS or len(content_type or "") > MAX_TYPE_CHARS:
            return None
        metadata = {m.group(1): v for k, v in items if (m := METADATA_PARAM.match(k))}
        try:
            started = direct.start_content_put(filename, metadata, content_type)
        except Exception:  # signing has no side effects: the route answers it again, its way
            return None
        if started is None:
            return None
        key, url, headers = started
        body = UploadParameters(url=url, fields={"key": key}, headers=headers, expires=direct.expires, key=key)
        return 200, body, []

    async def _complete(self, fastapi_app: Any, scope: dict, direct: DirectUploads) -> Answer | None:
        items = _query(scope)
        key = dict(items).get("key") if items is not None else None
        if key is None or len(key) > MAX_KEY_CHARS or not direct.completes_content(key):
            return None
        return await run_in_threadpool(_completed, direct, fastapi_app.state.catalog, key, scope)


def _completed(direct: DirectUploads, catalog: Any, key: str, scope: dict) -> Answer:
    """`POST /s3/complete` for a PUT to an original's key, on a worker thread: the route's answers."""
    try:
        status, body = queued_answer(direct.complete_put(key), catalog)
        return status, body, []
    except REFUSALS as err:
        refused = refusal(err)
        headers = [(k.lower().encode(), v.encode()) for k, v in (refused.headers or {}).items()]
        return refused.status_code, ErrorBody(detail=refused.detail), headers
    except StoreError as err:  # main.py's answer for a store that fails on any route
        log.warning("object store failed on %s %s: %s", scope["method"], scope["path"], err)
        return 503, ErrorBody(detail=STORE_DOWN), [(b"retry-after", b"5")]
    except Exception:
        log.exception("unhandled error on %s %s", scope["method"], scope["path"])
        return 500, ErrorBody(detail=INTERNAL_ERROR), []


def _key_accepted(fastapi_app: Any, scope: dict) -> bool:
    """require_api_key's test on the first X-API-Key header, read as Starlette reads it (else FastAPI's 401)."""
    supplied = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-api-key"), None)
    return api_key_accepted(fastapi_app.state.dam.settings, supplied)


def _query(scope: dict) -> list[tuple[str, str]] | None:
    """The query's pairs as Starlette parses them; None when it cannot be parsed (FastAPI decides)."""
    try:
        return parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return None


async def _send(send: Any, status: int, body: BaseModel, headers: list[tuple[bytes, bytes]]) -> None:
    data = body.model_dump_json().encode()
    start = [_JSON, (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": data})


__all__ = ["DirectFastPath"]
