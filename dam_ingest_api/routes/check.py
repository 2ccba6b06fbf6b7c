"""POST /assets/check: what the API holds of each of a list of SHA-256 digests, so a client sends only new files.

An id is the first 32 hex characters of its SHA-256 (see service.Uploader.accept), and each id is
looked up exactly as `GET /assets/{id}` looks it up (Catalog.status), so the two always agree.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dam_core.messages import SHA256_PATTERN
from dam_ingest_api.catalog import Catalog
from dam_ingest_api.deps import ApiKey, CatalogDep, SettingsDep
from dam_ingest_api.multipart import BodyTooLarge, ClientTooSlow, limited_stream
from dam_ingest_api.schemas import AssetId, Body, ValidationErrorBody, errors

MAX_DIGESTS = 1000
# 1,000 digests take 68 KB as compact JSON; the rest is room for indentation and spaces.
MAX_BODY_BYTES = 256 * 1024
MAX_ERRORS = 10  # a body of 256 KiB holds 100,000 bad items: the answer names the first few
LOOKUP_THREADS = 8  # an id the index lacks costs a read of its upload marker: a round trip on S3

Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN, description="64 lowercase hex characters")]
CheckState = Literal["processed", "error", "queued", "deleted", "absent"]


class CheckRequest(BaseModel):
    """The digests to look up, repeats allowed."""

    model_config = ConfigDict(extra="forbid")

    sha256: list[Sha256] = Field(max_length=MAX_DIGESTS, description=f"SHA-256 digests of files, at most {MAX_DIGESTS}")


class DigestState(Body):
    """One digest, its asset id, and what the API holds of it."""

    sha256: Sha256
    id: AssetId
    state: CheckState = Field(
        description=(
            "processed or error: in the index, as GET /assets/{id} shows it; queued: accepted, not processed yet; "
            "deleted: deleted, and not uploaded since; absent: unknown to the API. Uploading a file whose state is "
            "processed, error or queued stores nothing (a duplicate); deleted or absent makes a new asset"
        )
    )


class CheckAnswer(Body):
    """One item per digest sent, in the order sent (a repeated digest is answered each time)."""

    items: list[DigestState]


router = APIRouter(tags=["assets"], dependencies=[ApiKey])


@router.post(
    "/assets/check",
    summary="Check digests before uploading",
    # The body is read by hand (a size cap before parsing; FastAPI would read all of it before the
    # key is checked), so FastAPI cannot infer it: declared here.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CheckRequest.model_json_schema()}},
        }
    },
    responses={
        **errors(
            {
                400: "the client went away before the body was complete",
                401: "missing or wrong X-API-Key",
                408: "the body stalled or did not arrive within DAM_READ_TIMEOUT_SECONDS",
                413: f"a body over {MAX_BODY_BYTES} bytes",
                503: "the object store is unavailable",
            }
        ),
        **errors(
            {422: f"not JSON, not a list of SHA-256 hex digests, or over {MAX_DIGESTS} of them"}, ValidationErrorBody
        ),
    },
)
async def check(request: Request, catalog: CatalogDep, settings: SettingsDep) -> CheckAnswer:
    """The state of each SHA-256 digest: processed, error, queued, deleted or absent.

    Send only the files whose state is deleted or absent: the others would be answered as duplicates.
    """
    body = await _read_body(request, settings.dam_read_timeout_seconds)
    try:
        digests = CheckRequest.model_validate_json(body).sha256
    except ValidationError as err:
        # The app's handler answers it like any other bad parameter: 422, the input not echoed.
        raise RequestValidationError(
            [
                {"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]}
                for e in err.errors(include_url=False, include_context=False, include_input=False)[:MAX_ERRORS]
            ]
        ) from None
    ids = [digest[:32] for digest in digests]
    found = await run_in_threadpool(states, catalog, ids)
    return CheckAnswer(items=[DigestState(sha256=d, id=i, state=found[i]) for d, i in zip(digests, ids, strict=True)])


def states(catalog: Catalog, ids: list[str]) -> dict[str, CheckState]:
    """The state of each distinct id; the ids the index lacks are looked up a few at a time."""
    unique = list(dict.fromkeys(ids))
    if len(unique) < 2:
        return {i: state(catalog, i) for i in unique}
    with ThreadPoolExecutor(min(LOOKUP_THREADS, len(unique)), thread_name_prefix="dam-check") as pool:
        return dict(zip(unique, pool.map(partial(state, catalog), unique), strict=True))


def state(catalog: Catalog, asset_id: str) -> CheckState:
    """GET /assets/{id}'s status; else `deleted` when a tombstone hides the id's last upload, else `absent`.

    An original stored without a confirmed message (a publish that failed) is no asset: GET answers
    404, the orphan sweep removes it, and uploading it again queues it. So it is `absent`.
    """
    status = catalog.status(asset_id)
    if status is not None:
        return status
    return "deleted" if asset_id in catalog.deleted.tombstones() else "absent"


async def _read_body(request: Request, timeout: float) -> bytes:
    """The whole body, at most MAX_BODY_BYTES, within `timeout`; an HTTPException otherwise."""
    too_large = f"the body is over {MAX_BODY_BYTES} bytes: send at most {MAX_DIGESTS} digests per request"
    close = {"Connection": "close"}  # the rest of the body is never read
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, too_large, headers=close)
    body = bytearray()
    try:
        async for chunk in limited_stream(request.stream(), MAX_BODY_BYTES, timeout, deadline_seconds=timeout):
            body += chunk
    except BodyTooLarge:
        raise HTTPException(413, too_large, headers=close) from None
    except ClientTooSlow as err:
        raise HTTPException(408, str(err), headers=close) from None
    except ClientDisconnect:
        raise HTTPException(400, "the client went away before the body was complete") from None
    return bytes(body)
