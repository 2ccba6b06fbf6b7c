"""Direct-to-store uploads under /s3: Uppy Companion's S3 routes, plus POST /s3/complete for a single PUT.

The service is dam_ingest_api/direct.py; docs/http-api.md describes the flow. With the local-folder
store every route answers 404: there is no store to sign for, and POST /upload is the way in.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from dam_core.images import ImageRejected
from dam_core.messages import UploadMessage
from dam_ingest_api import metrics
from dam_ingest_api.catalog import Catalog
from dam_ingest_api.deps import ApiKey, CatalogDep, UploaderDep
from dam_ingest_api.direct import S3_MAX_PART_NUMBER, DirectUploadError, DirectUploads
from dam_ingest_api.schemas import (
    Aborted,
    DuplicateAnswer,
    ErrorBody,
    MultipartStarted,
    SignedPart,
    UploadAnswer,
    UploadedPartInfo,
    UploadedParts,
    UploadParameters,
    ValidationErrorBody,
    errors,
)
from dam_ingest_api.service import ServiceUnavailable

router = APIRouter(prefix="/s3", tags=["direct upload"], dependencies=[ApiKey])

NEEDS_S3 = (
    "direct-to-store uploads need the S3/R2 object store (set R2_BUCKET); "
    "with the local-folder store, send the file to POST /upload"
)
METADATA_PARAM = re.compile(r"^metadata\[([^\]]{1,64})\]$")  # Uppy's `metadata[name]=value` query parameters
MAX_KEY_CHARS = 200
MAX_FILENAME_CHARS = 4096
MAX_TYPE_CHARS = 255

StagingKey = Annotated[str, Query(max_length=MAX_KEY_CHARS, description="the staging key the upload was started with")]
PutKey = Annotated[str, Query(max_length=MAX_KEY_CHARS, description="the key GET /s3/params answered")]
UploadId = Annotated[
    str, Path(min_length=1, max_length=1024, description="as POST /s3/multipart answered, percent-encoded")
]


def upload_id(raw: str) -> str:
    """The id as the store made it: the path segment arrives still percent-encoded (upload_id_paths.py)."""
    return unquote(raw)


async def get_direct(uploader: UploaderDep) -> DirectUploads:
    direct = DirectUploads.of(uploader)
    if direct is None:
        raise HTTPException(404, NEEDS_S3)
    return direct


DirectDep = Annotated[DirectUploads, Depends(get_direct)]


class MultipartStart(BaseModel):
    """Uppy's `createMultipartUpload` body; `type` is ignored: the type comes from the bytes."""

    filename: str | None = Field(default=None, max_length=4096)
    type: str | None = Field(default=None, max_length=255)
    metadata: dict[str, Any] = Field(default_factory=dict, description="may declare `sha256` (hex) and `size`")


class PartRef(BaseModel):
    PartNumber: int = Field(ge=1, le=S3_MAX_PART_NUMBER)
    ETag: str = Field(min_length=1, max_length=200)


class MultipartComplete(BaseModel):
    parts: list[PartRef] = Field(max_length=S3_MAX_PART_NUMBER)


def refusal(err: DirectUploadError | ImageRejected | ServiceUnavailable) -> HTTPException:
    """The HTTP answer (`{detail}`) to a refusal of the direct-upload service, counted in the metrics."""
    if isinstance(err, DirectUploadError):
        return HTTPException(err.status, err.detail)
    if isinstance(err, ImageRejected):
        metrics.file_rejected(metrics.image_reason(err), None)
        return HTTPException(err.status, f"{err.message}; the upload was removed")
    metrics.file_rejected(err.reason, None)
    return HTTPException(503, str(err), headers={"Retry-After": "5"})


REFUSALS = (DirectUploadError, ImageRejected, ServiceUnavailable)


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The service's refusals as HTTP answers; an unreachable store is main.py's 503."""
    try:
        yield
    except REFUSALS as err:
        raise refusal(err) from None


def queued_answer(outcome: tuple[bool, UploadMessage], catalog: Catalog) -> tuple[int, UploadAnswer | DuplicateAnswer]:
    """POST /upload's status and answer for one file: 202 queued, or 200 for bytes uploaded before."""
    is_new, upload = outcome
    if is_new:
        metrics.file_accepted(upload.bytes)
        catalog.note_upload(upload)
        return 202, UploadAnswer.of(upload, "queued")
    metrics.file_duplicate(upload.bytes)
    return 200, DuplicateAnswer.of(upload, catalog.status(upload.id) or "queued")


def _queued(outcome: tuple[bool, UploadMessage], catalog: Catalog) -> JSONResponse:
    status, body = queued_answer(outcome, catalog)
    return JSONResponse(body.model_dump(mode="json"), status_code=status)


COMMON = errors(
    {
        401: "missing or wrong X-API-Key",
        404: "no such upload in progress; or the store is the local folder (use POST /upload)",
        503: "the object store is unavailable; try again",
    }
) | {422: {"description": "a parameter failed validation", "model": ValidationErrorBody}}
COMPLETED = {
    202: {"description": "checked, stored and queued: POST /upload's answer", "model": UploadAnswer},
    200: {"description": "the same bytes were uploaded before: nothing queued", "model": DuplicateAnswer},
    **errors(
        {
            400: "not a direct-upload key, parts never uploaded or misnamed, or an empty file",
            409: "nothing arrived at the key yet, or it changed while being checked; or the wrong completion route",
            413: "over DAM_MAX_UPLOAD_BYTES, or too many parts (the upload is removed)",
            415: "not an image, or an unsupported format (the upload is removed)",
        }
    ),
    422: {
        "description": "declared size or SHA-256 not matching, a corrupt header or over the pixel limits (the upload "
        "is removed); or a parameter failed validation",
        "model": ErrorBody | ValidationErrorBody,
    },
}


@router.get(
    "/params",
    summary="Sign a single PUT",
    response_model=UploadParameters,
    responses=COMMON | errors({400: "malformed metadata[sha256] or metadata[size]"}),
)
def upload_parameters(
    request: Request,
    direct: DirectDep,
    filename: Annotated[str | None, Query(max_length=MAX_FILENAME_CHARS)] = None,
    content_type: Annotated[
        str | None,
        Query(alias="type", max_length=MAX_TYPE_CHARS, description="the file's media type, checked on completion"),
    ] = None,
) -> UploadParameters:
    """A presigned PUT; `metadata[sha256]` makes the store refuse other bytes.

    With `metadata[sha256]`, `metadata[size]` and a supported `type`, the URL is for the original's
    own key (nothing is copied later); otherwise for a fresh staging key.
    """
    metadata = {m.group(1): v for k, v in request.query_params.multi_items() if (m := METADATA_PARAM.match(k))}
    with _refusals():
        key, url, headers = direct.start_put(filename, metadata, content_type)
    # `fields.key` too: @uppy/aws-s3 reads the key of a single upload from there (Companion's shape), not from `key`.
    return UploadParameters(url=url, fields={"key": key}, headers=headers, expires=direct.expires, key=key)


@router.post(
    "/complete",
    status_code=202,
    summary="Complete a single PUT",
    response_model=None,
    responses=COMMON | COMPLETED,
)
def complete_put(key: PutKey, direct: DirectDep, catalog: CatalogDep) -> JSONResponse:
    """Check the PUT object, store it as its original and queue it; answers as POST /upload does."""
    with _refusals():
        return _queued(direct.complete_put(key), catalog)


@router.post(
    "/multipart",
    summary="Start a multipart upload",
    response_model=MultipartStarted,
    responses=COMMON | errors({400: "malformed metadata", 413: "declared size over DAM_MAX_UPLOAD_BYTES"}),
)
def create_multipart(body: MultipartStart, direct: DirectDep) -> MultipartStarted:
    """A multipart upload at a fresh staging key."""
    with _refusals():
        upload_id, key = direct.start_multipart(body.filename, body.metadata)
    return MultipartStarted(uploadId=upload_id, key=key)


@router.get(
    "/multipart/{uploadId}/{partNumber}",
    summary="Sign one part",
    response_model=SignedPart,
    responses=COMMON
    | errors({400: "not a direct-upload key, or a part number outside 1-10000", 413: "too many parts"}),
)
def sign_part(
    uploadId: UploadId,
    partNumber: Annotated[int, Path(description="1 to 10000")],
    key: StagingKey,
    direct: DirectDep,
) -> SignedPart:
    """A presigned PUT for one part of an upload this API started (its key and upload id together)."""
    with _refusals():
        url = direct.sign_part(key, upload_id(uploadId), partNumber)
    return SignedPart(url=url, expires=direct.expires)


@router.get(
    "/multipart/{uploadId}",
    summary="List the parts uploaded",
    response_model=UploadedParts,
    responses=COMMON | errors({400: "not a direct-upload key"}),
)
def list_parts(uploadId: UploadId, key: StagingKey, direct: DirectDep) -> UploadedParts:
    """The parts uploaded so far: `[{PartNumber, Size, ETag}]`."""
    with _refusals():
        parts = direct.parts(key, upload_id(uploadId))
    return UploadedParts([UploadedPartInfo(PartNumber=p.number, Size=p.size, ETag=p.etag) for p in parts])


@router.post(
    "/multipart/{uploadId}/complete",
    status_code=202,
    summary="Complete a multipart upload",
    response_model=None,
    responses=COMMON | COMPLETED,
)
def complete_multipart(
    uploadId: UploadId,
    key: StagingKey,
    body: MultipartComplete,
    direct: DirectDep,
    catalog: CatalogDep,
) -> JSONResponse:
    """Assemble the parts, check the object, store it as its original and queue it."""
    parts = [(p.PartNumber, p.ETag) for p in body.parts]
    with _refusals():
        return _queued(direct.complete_multipart(key, upload_id(uploadId), parts), catalog)


@router.delete(
    "/multipart/{uploadId}",
    summary="Abort a multipart upload",
    response_model=Aborted,
    responses=COMMON | errors({400: "not a direct-upload key"}),
)
def abort_multipart(uploadId: UploadId, key: StagingKey, direct: DirectDep) -> Aborted:
    """Drop the upload and its parts; another upload's id with this key is a 404."""
    with _refusals():
        direct.abort(key, upload_id(uploadId))
    return Aborted()


__all__ = [
    "MAX_FILENAME_CHARS",
    "MAX_KEY_CHARS",
    "MAX_TYPE_CHARS",
    "METADATA_PARAM",
    "NEEDS_S3",
    "REFUSALS",
    "queued_answer",
    "refusal",
    "router",
]
