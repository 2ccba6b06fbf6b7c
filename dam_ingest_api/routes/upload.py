"""POST /upload: one or several files in the multipart field `file`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from dam_core.images import ImageRejected
from dam_ingest_api import metrics
from dam_ingest_api.catalog import Catalog
from dam_ingest_api.deps import ApiKey, CatalogDep, UploaderDep, UploadSlotsDep
from dam_ingest_api.multipart import (
    BodyTooLarge,
    ClientTooSlow,
    MultiPartException,
    PartHeadersTooLong,
    SpoolFailed,
    max_body_bytes,
    parse_upload_form,
)
from dam_ingest_api.schemas import (
    DuplicateAnswer,
    ErrorBody,
    RejectedBatch,
    RejectedFile,
    UploadAnswer,
    UploadBatch,
)
from dam_ingest_api.service import ServiceUnavailable, Uploader

router = APIRouter(tags=["upload"])

FILE_FIELDS = ("file", "files")
Outcome = tuple[int, UploadAnswer | RejectedFile]  # the status this file alone gets, and its answer


def _answer(body: BaseModel, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _error(status: int, detail: str, *, unread_body: bool = False) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else {}
    if unread_body or status in (408, 413):
        headers["Connection"] = "close"  # the rest of the body is never read
    return _answer(ErrorBody(detail=detail), status, headers or None)


def _refused(description: str) -> dict:
    # One file: `{detail}`; several files, none accepted: the batch answer, with `detail` too.
    return {"description": description, "model": ErrorBody | RejectedBatch}


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
    response_model=None,
    responses={
        202: {"description": "stored and queued (several files: at least one)", "model": UploadAnswer | UploadBatch},
        200: {
            "description": "the same bytes were uploaded before: nothing stored or queued (several files: all were)",
            "model": DuplicateAnswer | UploadBatch,
        },
        400: _refused("missing or empty file, or a malformed body"),
        401: {"description": "missing or wrong X-API-Key", "model": ErrorBody},
        408: _refused("the body stalled, missed the upload deadline, or arrived under the minimum rate"),
        413: _refused("file or request over the size limit, too many files, or a part header (filename) too long"),
        415: _refused("not an image, or an unsupported format"),
        422: _refused("truncated or corrupt image, or a decompression bomb"),
        503: _refused(
            "object store, queue or the server's temporary storage unavailable, or too many uploads at once; "
            "retry later"
        ),
    },
)
async def upload(request: Request, uploader: UploaderDep, catalog: CatalogDep, slots: UploadSlotsDep) -> JSONResponse:
    """Store each image and queue it; 202 once the original is stored and the message confirmed."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        return _error(400, "send the image as multipart/form-data in a field named 'file'")
    if not slots.try_take():
        return _error(
            503,
            f"too many uploads in progress (the limit is {slots.limit}); nothing was stored, try again shortly",
            unread_body=True,
        )
    try:
        return await _upload(request, uploader, catalog)
    finally:
        slots.give_back()


async def _upload(request: Request, uploader: Uploader, catalog: Catalog) -> JSONResponse:
    settings = uploader.settings
    declared = request.headers.get("content-length")
    if (
        declared
        and declared.isdigit()
        and int(declared) > max_body_bytes(settings.dam_max_files_per_request, settings.dam_max_upload_bytes)
    ):
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
    except PartHeadersTooLong as err:
        return _error(413, f"{err}; nothing was stored")
    except SpoolFailed as err:  # e.g. ENOSPC in TMPDIR: an outage of this server, not a bad request
        return _error(503, f"{err}; nothing was stored, try again later")
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
        outcomes = await run_in_threadpool(_accept_all, files, uploader, catalog)
        metrics.files_counted(request.scope)  # each file was counted: the request is not, again
    finally:
        await form.close()

    if len(outcomes) == 1:
        status, answer = outcomes[0]
        if isinstance(answer, RejectedFile):
            return _error(status, answer.detail)
        return _answer(answer, status)
    accepted = [a for s, a in outcomes if s < 400]
    items = [a for _, a in outcomes]
    if not accepted:
        body = RejectedBatch(accepted=0, rejected=len(items), items=items, detail="no file was accepted")
        return _answer(body, outcomes[0][0])
    status = 202 if any(s == 202 for s, _ in outcomes) else 200
    return _answer(UploadBatch(accepted=len(accepted), rejected=len(items) - len(accepted), items=items), status)


def _accept_all(files: list[UploadFile], uploader: Uploader, catalog: Catalog) -> list[Outcome]:
    out: list[Outcome] = []
    for f in files:
        try:
            is_new, upload = uploader.accept(f.file, f.filename)
        except ImageRejected as err:
            metrics.file_rejected(metrics.image_reason(err), f.size)
            out.append((err.status, _rejected(f.filename, err.status, err.message)))
            continue
        except ServiceUnavailable as err:
            metrics.file_rejected(err.reason, f.size)
            # Only this file: the others of the request stand or fall on their own.
            out.append((503, _rejected(f.filename, 503, str(err))))
            continue
        if is_new:
            metrics.file_accepted(f.size)
            catalog.note_upload(upload)
            out.append((202, UploadAnswer.of(upload, "queued")))
        else:
            metrics.file_duplicate(f.size)
            out.append((200, DuplicateAnswer.of(upload, catalog.status(upload.id) or "queued")))
    return out


def _rejected(filename: str | None, code: int, detail: str) -> RejectedFile:
    # `code` tells a client which files to send again (503) and which never to (4xx).
    return RejectedFile(filename=filename, code=code, detail=detail)
