"""Request dependencies: the app's Dam (and its settings, store and queue), the uploader, catalog,
upload slots, the API-key check and a known asset.

Each per-app object is created once by `create_app` (on `app.state`) and reached only through
these; routes never read `app.state` themselves. The ones that only look something up are `async`:
FastAPI runs a plain `def` dependency on its thread pool, a thread hop (about 0.1-0.3 ms of CPU)
per dependency per request; `known_asset` may read the store, so it stays on the pool.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import APIKeyHeader

from dam_core.dam import Dam
from dam_core.messages import ID_PATTERN
from dam_core.queue import UploadQueue
from dam_core.settings import Settings
from dam_core.store import ObjectStore
from dam_ingest_api.catalog import Catalog
from dam_ingest_api.schemas import AssetDetail
from dam_ingest_api.service import Uploader

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


class UploadSlots:
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


async def get_dam(request: Request) -> Dam:
    return request.app.state.dam


DamDep = Annotated[Dam, Depends(get_dam)]


async def get_settings(dam: DamDep) -> Settings:
    return dam.settings


async def get_store(dam: DamDep) -> ObjectStore:
    return dam.store


async def get_queue(dam: DamDep) -> UploadQueue:
    return dam.queue


async def get_uploader(request: Request) -> Uploader:
    return request.app.state.uploader


async def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


async def get_upload_slots(request: Request) -> UploadSlots:
    return request.app.state.upload_slots


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
QueueDep = Annotated[UploadQueue, Depends(get_queue)]
UploaderDep = Annotated[Uploader, Depends(get_uploader)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
UploadSlotsDep = Annotated[UploadSlots, Depends(get_upload_slots)]
AssetIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="32 lowercase hex characters")]


def api_key_accepted(settings: Settings, supplied: str | None) -> bool:
    """No DAM_API_KEY, or `supplied` (the X-API-Key header as Starlette reads it) matches it."""
    expected = settings.dam_api_key
    if expected is None:
        return True
    return supplied is not None and hmac.compare_digest(
        supplied.encode("utf-8", "surrogateescape"), expected.get_secret_value().encode()
    )


async def require_api_key(settings: SettingsDep, supplied: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """When DAM_API_KEY is set, every protected route needs a matching X-API-Key header."""
    if not api_key_accepted(settings, supplied):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "API-Key"}
        )


def known_asset(asset_id: AssetIdPath, catalog: CatalogDep) -> AssetDetail:
    """The asset with this id, queued ones included; 404 when there is none (422 for a malformed id)."""
    item = catalog.item(asset_id)
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no asset with id {asset_id}")
    return item


ApiKey = Depends(require_api_key)
KnownAsset = Annotated[AssetDetail, Depends(known_asset)]
