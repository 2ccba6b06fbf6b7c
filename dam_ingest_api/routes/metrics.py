"""GET /metrics: Prometheus text format, summed over every worker process; the API key as on every route.

Auth: when DAM_API_KEY is set, a scrape needs it, as `X-API-Key` or as `Authorization: Bearer`
(what Prometheus's `authorization` scrape setting sends). Without a key the API serves only on
loopback (`dam api` refuses another --host unless --insecure-no-auth), and so does /metrics.
Left out of the OpenAPI document: it is for Prometheus, not for API clients.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dam_core.metrics import scrape_registry
from dam_ingest_api.deps import SettingsDep
from dam_ingest_api.metrics import WithIndexAge

router = APIRouter(tags=["metrics"], include_in_schema=False)

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


def _same(supplied: str | None, expected: str) -> bool:
    return supplied is not None and hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"), expected.encode())


def require_scrape_key(
    settings: SettingsDep,
    api_key: Annotated[str | None, Depends(_api_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """With DAM_API_KEY set: the key, in X-API-Key or as a bearer token."""
    if settings.dam_api_key is None:
        return
    expected = settings.dam_api_key.get_secret_value()
    if not (_same(api_key, expected) or _same(bearer.credentials if bearer else None, expected)):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong X-API-Key header (or bearer token)",
            headers={"WWW-Authenticate": "API-Key"},
        )


@router.get("/metrics", dependencies=[Depends(require_scrape_key)])
def metrics() -> Response:
    """Every metric of this API (all its worker processes), in Prometheus text format."""
    return Response(generate_latest(WithIndexAge(scrape_registry())), media_type=CONTENT_TYPE_LATEST)
