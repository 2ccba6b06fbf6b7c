"""The FastAPI application: `create_app()` wires settings, store and queue into the routes."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from dam_core.queue import UploadQueue, make_queue
from dam_core.settings import Settings, get_settings
from dam_core.store import ObjectStore, StoreError, make_store
from dam_ingest_api.catalog import Catalog
from dam_ingest_api.routes import assets, health, page, search, upload

log = logging.getLogger("dam_ingest_api")


def create_app(
    settings: Settings | None = None, store: ObjectStore | None = None, queue: UploadQueue | None = None
) -> FastAPI:
    """Build the app; settings default to the environment, store and queue to what they select."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.catalog.start()
        yield
        app.state.catalog.stop()
        app.state.queue.close()

    app = FastAPI(title="dam-pipeline ingest API", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store or make_store(settings)
    app.state.queue = queue or make_queue(settings)
    app.state.catalog = Catalog(settings, app.state.store)

    origins = [o.strip() for o in settings.dam_cors_origins.split(",") if o.strip()]
    if origins:  # CORS stays off unless configured
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["X-API-Key"]
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()
        ]  # no input echo: it may be large or hostile
        return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(StoreError)
    async def _store_down(request: Request, exc: StoreError):
        # Any route: a store that fails (network, disk full, permissions) is an outage, not a bug.
        log.warning("object store failed on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "the object store is unavailable; try again"}, status_code=503, headers={"Retry-After": "5"}
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    # Every status a route can answer is in the schema, with its body: clients (and the fuzz
    # test) can rely on the document. The upload route lists its own.
    app.include_router(health.router, responses=_errors({503: "the object store or the queue is unavailable"}))
    app.include_router(upload.router, responses=_errors({}))
    app.include_router(
        assets.router,
        responses=_errors({
            400: "a cursor this API did not issue",
            401: "missing or wrong X-API-Key",
            404: "no asset with this id, or its bytes are not there yet",
            409: "the asset has no embedding yet (queued) or failed",
            503: "the object store is unavailable",
        }),
    )
    app.include_router(
        search.router,
        responses=_errors({
            400: "empty query",
            401: "missing or wrong X-API-Key",
            503: "no search index yet, or the store is unavailable",
        }),
    )
    app.include_router(page.router)
    _document_validation_errors(app)
    return app


class ErrorBody(BaseModel):
    """Every error answer: a sentence for people, never a traceback."""

    detail: str


def _errors(codes: dict[int, str]) -> dict[int, dict]:
    return {code: {"description": text, "model": ErrorBody} for code, text in codes.items()}


def _document_validation_errors(app: FastAPI) -> None:
    """The schema of a 422 is ours (`_invalid` above), not FastAPI's default list of errors."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("schemas", {})["HTTPValidationError"] = {
                "title": "HTTPValidationError",
                "type": "object",
                "required": ["detail"],
                "properties": {
                    "detail": {"type": "string"},
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"loc": {"type": "array"}, "msg": {"type": "string"}},
                        },
                    },
                },
            }
        return app.openapi_schema

    app.openapi = openapi


def app() -> FastAPI:
    """Factory for `uvicorn --factory dam_ingest_api.main:app`."""
    return create_app()
