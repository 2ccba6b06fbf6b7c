"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from dam_ingest_api.deps import QueueDep, StoreDep
from dam_ingest_api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process is up."""
    return Health()


@router.get(
    "/readyz", responses={503: {"description": "the object store or the queue is unavailable", "model": Readiness}}
)
async def readyz(store: StoreDep, queue: QueueDep, response: Response) -> Readiness:
    """The object store and the queue both answer."""
    checks = {}
    for name, probe in (("store", store.ping), ("queue", queue.ping)):
        try:
            await run_in_threadpool(probe)
            checks[name] = "ok"
        except Exception as err:
            checks[name] = f"unavailable: {type(err).__name__}"
    ok = all(v == "ok" for v in checks.values())
    if not ok:
        response.status_code = 503
    return Readiness(status="ok" if ok else "unavailable", **checks)
