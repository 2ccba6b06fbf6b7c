"""Text search: images ranked by the cosine of their CLIP embedding with the query's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from dam_ingest_api.catalog import SearchUnavailable
from dam_ingest_api.catalog.search import SearchMode
from dam_ingest_api.deps import ApiKey, CatalogDep
from dam_ingest_api.schemas import SearchResults, ValidationErrorBody, errors

router = APIRouter(
    tags=["search"],
    dependencies=[ApiKey],
    responses={
        **errors(
            {
                400: "empty query",
                401: "missing or wrong X-API-Key",
                503: "the text encoder could not be loaded, or the store is unavailable",
            }
        ),
        **errors({422: "a parameter out of range"}, ValidationErrorBody),
    },
)


@router.get("/search")
async def search(
    catalog: CatalogDep,
    q: Annotated[str, Query(max_length=1000, description="what to look for, e.g. 'a dog on a beach'")],
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    mode: Annotated[
        SearchMode,
        Query(description="text: the words written in the image (OCR); meaning: the embedding; both: text hits first"),
    ] = "both",
) -> SearchResults:
    """The k images that best match the text; none before the first index.

    Text hits (`match: text`, the query's words found in the image's OCR text) come first, newest
    first; then meaning hits (`match: meaning`), highest cosine first. `mode` picks one kind alone.
    """
    text = q.strip()
    if not text:
        raise HTTPException(400, "q must not be empty")
    try:
        items = await run_in_threadpool(catalog.search.text, text, k, mode)
    except SearchUnavailable as err:
        raise HTTPException(503, str(err)) from None
    return SearchResults(query=text, items=items)
