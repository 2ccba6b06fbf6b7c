"""Reading assets: list, one item, original and thumbnail bytes, similar and near-duplicate images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import Response

from dam_core.layout import thumbnail_key
from dam_core.messages import ID_PATTERN
from dam_core.store import KeyNotFound, StoreError
from dam_ingest_api.catalog import BadCursor, Catalog
from dam_ingest_api.deps import ApiKey, SettingsDep, StoreDep

router = APIRouter(tags=["assets"], dependencies=[ApiKey])

AssetId = Annotated[str, Path(pattern=ID_PATTERN, description="32 lowercase hex characters")]
K = Annotated[int, Query(ge=1, le=1000, description="how many results (1-1000)")]


def catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def _known(request: Request, asset_id: str) -> dict:
    item = catalog(request).item(asset_id)
    if item is None:
        raise HTTPException(404, f"no asset with id {asset_id}")
    return item


@router.get("/assets")
def list_assets(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict:
    """Assets newest first, `limit` per page; pass `next` back as `cursor` for the next page."""
    try:
        items, nxt = catalog(request).list(limit, cursor)
    except BadCursor as err:
        raise HTTPException(400, str(err)) from None
    return {"items": items, "next": nxt}


@router.get("/assets/{asset_id}")
def get_asset(request: Request, asset_id: AssetId) -> dict:
    """One asset; `status` is queued, processed or error (with the error text)."""
    return _known(request, asset_id)


def _bytes(store, key: str, media_type: str, cache: str) -> Response:
    try:
        data = store.get(key)
    except KeyNotFound:
        raise HTTPException(404, "not available yet") from None
    except StoreError:
        raise HTTPException(503, "the object store is unavailable") from None
    return Response(
        data, media_type=media_type,
        headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"},
    )


@router.get("/assets/{asset_id}/original", response_class=Response)
def get_original(request: Request, asset_id: AssetId, store: StoreDep):
    """The uploaded bytes, with the Content-Type detected at upload."""
    item = _known(request, asset_id)
    key = catalog(request).original_key(asset_id)
    if key is None:
        raise HTTPException(404, "original not found")
    return _bytes(store, key, item["mime_type"] or "application/octet-stream", "private, max-age=86400, immutable")


@router.get("/assets/{asset_id}/thumbnail", response_class=Response)
def get_thumbnail(request: Request, asset_id: AssetId, store: StoreDep):
    """A 256 px WebP thumbnail; 404 until the pipeline has made it."""
    _known(request, asset_id)
    return _bytes(store, thumbnail_key(asset_id), "image/webp", "private, max-age=3600")


@router.get("/assets/{asset_id}/similar")
def similar(request: Request, asset_id: AssetId, k: K = 10) -> dict:
    """The k images most like this one by CLIP embedding, itself left out."""
    item = _known(request, asset_id)
    hits = catalog(request).similar(asset_id, k)
    if hits is None:
        raise HTTPException(409, f"asset {asset_id} is {item['status']} and has no embedding to compare")
    return {"items": hits}


@router.get("/assets/{asset_id}/duplicates")
def duplicates(request: Request, asset_id: AssetId, settings: SettingsDep, k: K = 100) -> dict:
    """Near duplicates: assets whose embedding cosine with this one is at least DAM_NEAR_DUPLICATE."""
    item = _known(request, asset_id)
    hits = catalog(request).similar(asset_id, k, min_score=settings.dam_near_duplicate)
    if hits is None:
        raise HTTPException(409, f"asset {asset_id} is {item['status']} and has no embedding to compare")
    return {"threshold": settings.dam_near_duplicate, "items": hits}
