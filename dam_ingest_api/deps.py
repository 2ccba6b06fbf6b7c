"""Request dependencies: settings, store, queue and the API-key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader

from dam_core.queue import UploadQueue
from dam_core.settings import Settings
from dam_core.store import ObjectStore

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ObjectStore:
    return request.app.state.store


def get_queue(request: Request) -> UploadQueue:
    return request.app.state.queue


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    supplied: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    """When DAM_API_KEY is set, every protected route needs a matching X-API-Key header."""
    expected = settings.dam_api_key
    if expected is None:
        return
    if supplied is None or not hmac.compare_digest(
        supplied.encode("utf-8", "surrogateescape"), expected.get_secret_value().encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "API-Key"}
        )


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
QueueDep = Annotated[UploadQueue, Depends(get_queue)]
ApiKey = Depends(require_api_key)
