"""POST /upload: one or several files in the multipart field `file`."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dam_core.images import ImageRejected
from dam_ingest_api.deps import ApiKey, QueueDep, SettingsDep, StoreDep
from dam_ingest_api.multipart import BodyTooLarge, ClientTooSlow, MultiPartException, parse_upload_form
from dam_ingest_api.service import ServiceUnavailable, accept_upload

log = logging.getLogger(__name__)
router = APIRouter(tags=["upload"])

FILE_FIELDS = ("file", "files")
READ_IDLE_TIMEOUT = 30.0  # the default of DAM_READ_TIMEOUT_SECONDS


def _error(status: int, detail: str, **extra) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    if status == 413:
        headers = {"Connection": "close"}  # the rest of the body is never read
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


@router.post(
    "/upload",
    status_code=202,
    dependencies=[ApiKey],
    summary="Upload images",
    responses={
        400: {"description": "missing or empty file"},
        401: {"description": "missing or wrong X-API-Key"},
        413: {"description": "file or request over the size limit"},
        415: {"description": "not an image, or an unsupported format"},
        422: {"description": "truncated or corrupt image, or a decompression bomb"},
        503: {"description": "object store or queue unavailable; nothing was kept"},
    },
)
async def upload(request: Request, settings: SettingsDep, store: StoreDep, queue: QueueDep):
    """Store each image and queue it; 202 once the original is stored and the message confirmed."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        return _error(400, "send the image as multipart/form-data in a field named 'file'")
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
        )
    except BodyTooLarge as err:
        return _error(413, f"{err}; nothing was stored")
    except ClientTooSlow as err:
        return _error(408, f"{err}; nothing was stored")
    except MultiPartException as err:
        msg = str(err)
        if "Too many files" in msg:
            return _error(413, f"too many files in one request: the limit is {settings.dam_max_files_per_request}")
        return _error(400, f"malformed multipart body: {msg}")
    try:
        files = [f for name in FILE_FIELDS for f in form.getlist(name) if isinstance(f, UploadFile)]
        if not files:
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
            out.append((err.status, {"filename": f.filename, "status": "rejected", "detail": err.message}))
        except ServiceUnavailable as err:
            out.append((503, {"filename": f.filename, "status": "rejected", "detail": str(err)}))
    return out
