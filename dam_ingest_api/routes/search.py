"""Text search: images ranked by the cosine of their CLIP embedding with the query's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from dam_ingest_api.catalog import SearchUnavailable
from dam_ingest_api.deps import ApiKey

router = APIRouter(tags=["search"], dependencies=[ApiKey])


@router.get("/search")
async def search(
    request: Request,
    q: Annotated[str, Query(max_length=1000, description="what to look for, e.g. 'a dog on a beach'")],
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> dict:
    """The k images that best match the text, highest cosine first."""
    text = q.strip()
    if not text:
        raise HTTPException(400, "q must not be empty")
    try:
        items = await run_in_threadpool(request.app.state.catalog.search_text, text, k)
    except SearchUnavailable as err:
        raise HTTPException(503, str(err)) from None
    return {"query": text, "items": items}
