"""Assets: list, one item, original and thumbnail bytes, similar and near-duplicate images, and delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from dam_core.deletion import DeletionFailed, delete_assets
from dam_core.layout import thumbnail_key
from dam_core.store import KeyNotFound, ObjectStore, StoreError
from dam_ingest_api.catalog import BadCursor, Catalog
from dam_ingest_api.deps import (
    ApiKey,
    AssetIdPath,
    CatalogDep,
    DamDep,
    KnownAsset,
    SettingsDep,
    StoreDep,
    UploaderDep,
    known_asset,
)
from dam_ingest_api.schemas import (
    AssetDetail,
    AssetPage,
    DeleteAnswer,
    NearDuplicates,
    ScoredAsset,
    SimilarAssets,
    ValidationErrorBody,
    errors,
)

_COMMON = {
    **errors({401: "missing or wrong X-API-Key", 503: "the object store is unavailable"}),
    **errors({422: "a malformed id or parameter"}, ValidationErrorBody),
}
_UNKNOWN = errors({404: "no asset with this id"})
_NO_VECTOR = errors({409: "the asset has no embedding yet (queued) or failed"})
_BYTES = {"description": "the bytes", "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}

router = APIRouter(tags=["assets"], dependencies=[ApiKey], responses=_COMMON)

K = Annotated[int, Query(ge=1, le=1000, description="how many results (1-1000)")]


@router.get("/assets", responses=errors({400: "a cursor this API did not issue"}))
def list_assets(
    catalog: CatalogDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> AssetPage:
    """Assets newest first, `limit` per page; pass `next` back as `cursor` for the next page."""
    try:
        items, nxt = catalog.list(limit, cursor)
    except BadCursor as err:
        raise HTTPException(400, str(err)) from None
    return AssetPage(items=items, next=nxt)


@router.get("/assets/{asset_id}", responses=_UNKNOWN)
def get_asset(item: KnownAsset) -> AssetDetail:
    """One asset with its EXIF fields; `status` is queued, processed or error (with the error text)."""
    return item


def _bytes(store: ObjectStore, key: str, media_type: str, cache: str) -> Response:
    try:
        data = store.get(key)
    except KeyNotFound:
        raise HTTPException(404, "not available yet") from None
    except StoreError:
        raise HTTPException(503, "the object store is unavailable") from None
    return Response(
        data,
        media_type=media_type,
        headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"},
    )


@router.get(
    "/assets/{asset_id}/original",
    response_class=Response,
    responses={200: _BYTES, **errors({404: "no asset with this id, or its original is not there"})},
)
def get_original(item: KnownAsset, catalog: CatalogDep, store: StoreDep) -> Response:
    """The uploaded bytes, with the Content-Type detected at upload."""
    key = catalog.original_key(item.id)
    if key is None:
        raise HTTPException(404, "original not found")
    return _bytes(store, key, item.mime_type or "application/octet-stream", "private, max-age=86400, immutable")


@router.get(
    "/assets/{asset_id}/thumbnail",
    response_class=Response,
    responses={200: _BYTES, **errors({404: "no asset with this id, or no thumbnail yet"})},
)
def get_thumbnail(item: KnownAsset, store: StoreDep) -> Response:
    """A 256 px WebP thumbnail; 404 until the pipeline has made it."""
    return _bytes(store, thumbnail_key(item.id), "image/webp", "private, max-age=3600")


# The two routes below look the asset up in the body, not through KnownAsset: a dependency runs
# before the route's own parameters are checked, and a bad `k` answers 422 even for an unknown id.


def _neighbours(catalog: Catalog, asset_id: str, k: int, min_score: float | None = None) -> list[ScoredAsset]:
    item = known_asset(asset_id, catalog)
    hits = catalog.similar(asset_id, k, min_score=min_score)
    if hits is None:
        raise HTTPException(409, f"asset {asset_id} is {item.status} and has no embedding to compare")
    return hits


@router.get("/assets/{asset_id}/similar", responses={**_UNKNOWN, **_NO_VECTOR})
def similar(asset_id: AssetIdPath, catalog: CatalogDep, k: K = 10) -> SimilarAssets:
    """The k images most like this one by CLIP embedding, itself left out."""
    return SimilarAssets(items=_neighbours(catalog, asset_id, k))


@router.get("/assets/{asset_id}/duplicates", responses={**_UNKNOWN, **_NO_VECTOR})
def duplicates(asset_id: AssetIdPath, catalog: CatalogDep, settings: SettingsDep, k: K = 100) -> NearDuplicates:
    """Near duplicates: assets whose embedding cosine with this one is at least DAM_NEAR_DUPLICATE."""
    hits = _neighbours(catalog, asset_id, k, min_score=settings.dam_near_duplicate)
    return NearDuplicates(threshold=settings.dam_near_duplicate, items=hits)


@router.delete(
    "/assets/{asset_id}",
    responses=errors(
        {
            404: "no asset with this id was ever stored",
            503: "the object store, the table or the index failed; the asset is hidden already, send the DELETE again",
        }
    ),
)
def delete_asset(asset_id: AssetIdPath, dam: DamDep, catalog: CatalogDep, uploader: UploaderDep) -> DeleteAnswer:
    """Delete an asset everywhere: original, thumbnail, vector, upload marker, table rows, index entry.

    Gone from every read route when this answers; uploading the same bytes again makes a new asset.
    """
    uploader.markers.settle(asset_id)  # a marker this process still owes would otherwise land after the delete
    try:
        [report] = delete_assets(dam, [asset_id])
    except DeletionFailed as err:
        # The tombstone is written: this process stops serving the id now, and a retry finishes.
        for done in err.reports:
            if done.deleted_at is not None:
                catalog.note_deleted(done.id, done.deleted_at)
        raise HTTPException(503, f"{err}; the asset is hidden already, send the DELETE again") from None
    if not report.found:
        raise HTTPException(404, f"no asset with id {asset_id}")
    assert report.deleted_at is not None  # set for every id found (dam_core.deletion)
    catalog.note_deleted(report.id, report.deleted_at)
    fields = vars(report)
    return DeleteAnswer(**{k: fields[k] for k in DeleteAnswer.model_fields})
