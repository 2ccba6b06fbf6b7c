"""POST /upload: one or several files in the multipart field `file`."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from dam_core.images import ImageRejected
from dam_ingest_api.deps import ApiKey, QueueDep, SettingsDep, StoreDep
from dam_ingest_api.multipart import (
    BodyTooLarge,
    ClientTooSlow,
    MultiPartException,
    parse_upload_form,
)
from dam_ingest_api.service import ServiceUnavailable, accept_upload

log = logging.getLogger(__name__)
router = APIRouter(tags=["upload"])

FILE_FIELDS = ("file", "files")
READ_IDLE_TIMEOUT = 30.0  # the default of DAM_READ_TIMEOUT_SECONDS


def _error(status: int, detail: str, *, unread_body: bool = False, **extra) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else {}
    if unread_body or status in (408, 413):
        headers["Connection"] = "close"  # the rest of the body is never read
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers or None)


class _UploadSlots:
    """How many uploads are being read or stored; the route runs on one event loop, so a plain count."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    def try_take(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def give_back(self) -> None:
        self.active -= 1


def _slots(request: Request, settings) -> _UploadSlots:
    slots = getattr(request.app.state, "upload_slots", None)
    if slots is None:
        slots = request.app.state.upload_slots = _UploadSlots(settings.dam_max_concurrent_uploads)
    return slots


@router.post(
    "/upload",
    status_code=202,
    dependencies=[ApiKey],
    summary="Upload images",
    # The body is parsed by hand (limits while reading), so FastAPI cannot infer it: declared here.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "oneOf": [
                                    {"type": "string", "format": "binary"},
                                    {"type": "array", "items": {"type": "string", "format": "binary"}},
                                ],
                                "description": "one image, or the field repeated for several",
                            }
                        },
                    }
                }
            },
        }
    },
    responses={
        400: {"description": "missing or empty file"},
        401: {"description": "missing or wrong X-API-Key"},
        408: {"description": "the body stalled, missed the upload deadline, or arrived under the minimum rate"},
        413: {"description": "file or request over the size limit"},
        415: {"description": "not an image, or an unsupported format"},
        422: {"description": "truncated or corrupt image, or a decompression bomb"},
        503: {"description": "object store or queue unavailable, or too many uploads at once; retry later"},
    },
)
async def upload(request: Request, settings: SettingsDep, store: StoreDep, queue: QueueDep):
    """Store each image and queue it; 202 once the original is stored and the message confirmed."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        return _error(400, "send the image as multipart/form-data in a field named 'file'")
    slots = _slots(request, settings)
    if not slots.try_take():
        return _error(
            503,
            f"too many uploads in progress (the limit is {slots.limit}); nothing was stored, try again shortly",
            unread_body=True,
        )
    try:
        return await _upload(request, settings, store, queue)
    finally:
        slots.give_back()


async def _upload(request: Request, settings, store, queue) -> JSONResponse:
    declared = request.headers.get("content-length")
    max_body = settings.dam_max_files_per_request * (settings.dam_max_upload_bytes + 16 * 1024) + 64 * 1024
    if declared and declared.isdigit() and int(declared) > max_body:
        return _error(413, f"request body of {declared} bytes is over the limit")
    try:
        form = await parse_upload_form(
            request.headers,
            request.stream(),
            max_file_bytes=settings.dam_max_upload_bytes,
            max_files=settings.dam_max_files_per_request,
            idle_timeout=settings.dam_read_timeout_seconds,
            deadline_seconds=settings.dam_upload_deadline_seconds,
            min_bytes_per_second=settings.dam_min_upload_bytes_per_second,
            rate_grace_seconds=settings.dam_upload_rate_grace_seconds,
        )
    except BodyTooLarge as err:
        return _error(413, f"{err}; nothing was stored")
    except ClientTooSlow as err:
        return _error(408, f"{err}; nothing was stored")
    except ClientDisconnect:
        return _error(400, "the client went away before the body was complete; nothing was stored")
    except MultiPartException as err:
        msg = str(err)
        if "Too many files" in msg:
            return _error(413, f"too many files in one request: the limit is {settings.dam_max_files_per_request}")
        return _error(400, f"malformed multipart body: {msg}")
    try:
        files = [f for name in FILE_FIELDS for f in form.getlist(name) if isinstance(f, UploadFile)]
        if not files:
            if any(form.getlist(name) for name in FILE_FIELDS):  # a plain form value, not a file part
                return _error(
                    400,
                    "no file: 'file' came as a plain value, send it as a file part with a filename "
                    "(curl -F file=@photo.jpg)",
                )
            return _error(400, "no file: send the image in a multipart field named 'file'")
        results = await run_in_threadpool(
            _accept_all, files, settings, store, queue, getattr(request.app.state, "catalog", None)
        )
    finally:
        await form.close()

    if len(results) == 1:
        status, body = results[0]
        if status >= 400:
            return _error(status, body["detail"])
        return JSONResponse(body, status_code=status)
    accepted = [b for s, b in results if s < 400]
    status = (202 if any(s == 202 for s, _ in results) else 200) if accepted else results[0][0]
    body = {
        "accepted": len(accepted),
        "rejected": len(results) - len(accepted),
        "items": [b for _, b in results],
    }
    if not accepted:
        body["detail"] = "no file was accepted"
    return JSONResponse(body, status_code=status)


def _accept_all(files: list[UploadFile], settings, store, queue, catalog=None) -> list[tuple[int, dict]]:
    out = []
    for f in files:
        try:
            is_new, body = accept_upload(f.file, f.filename, settings, store, queue)
            if catalog is not None:
                if is_new:
                    catalog.note_upload(body)
                else:
                    body["status"] = catalog.status(body["id"]) or body["status"]
            out.append((202 if is_new else 200, body))
        except ImageRejected as err:
            out.append((err.status, _rejected(f.filename, err.status, err.message)))
        except ServiceUnavailable as err:
            # Only this file: the others of the request stand or fall on their own.
            out.append((503, _rejected(f.filename, 503, str(err))))
    return out


def _rejected(filename: str | None, code: int, detail: str) -> dict:
    # `code` tells a client which files to send again (503) and which never to (4xx).
    return {"filename": filename, "status": "rejected", "code": code, "detail": detail}
