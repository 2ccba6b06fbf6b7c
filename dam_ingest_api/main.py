"""The FastAPI application: `create_app()` opens one Dam and wires it, the uploader and the catalog into the routes."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import dam_models
from dam_core.dam import open_dam
from dam_core.metrics import mark_process_dead
from dam_core.queue import UploadQueue
from dam_core.settings import Settings, get_settings
from dam_core.store import ObjectStore, StoreError
from dam_ingest_api import metrics
from dam_ingest_api.catalog import Catalog
from dam_ingest_api.deps import UploadSlots
from dam_ingest_api.direct_fast_path import DirectFastPath
from dam_ingest_api.request_metrics import RequestMetrics
from dam_ingest_api.routes import assets, check, direct, health, page, search, upload
from dam_ingest_api.routes import metrics as metrics_route
from dam_ingest_api.schemas import INTERNAL_ERROR, STORE_DOWN, ErrorBody, FieldError, ValidationErrorBody
from dam_ingest_api.service import Uploader
from dam_ingest_api.upload_id_paths import RawUploadIdPaths

log = logging.getLogger("dam_ingest_api")


def create_app(
    settings: Settings | None = None, store: ObjectStore | None = None, queue: UploadQueue | None = None
) -> FastAPI:
    """Build the app on one Dam; settings default to the environment, store and queue to what they select."""
    dam = open_dam(settings or get_settings(), store=store, queue=queue)
    settings = dam.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Decided here, once, for the process that serves the API; torch is loaded only by the
        # first text search (see dam_models.set_query_threads for why one thread).
        dam_models.set_query_threads(1)
        app.state.catalog.start()
        yield
        app.state.uploader.close()  # before the store's clients go: the markers in flight land
        app.state.catalog.stop()
        dam.close()
        mark_process_dead()  # a worker of `dam api --workers N`: its live gauges leave the sum

    # /docs is served from the package (routes/page.py), not FastAPI's CDN-loaded page; no ReDoc.
    app = FastAPI(title="dam-pipeline ingest API", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.dam = dam
    app.state.uploader = Uploader.of(dam)  # the store and the queue are built here: a bad configuration fails now
    app.state.catalog = Catalog(settings, dam.store)
    app.state.upload_slots = UploadSlots(settings.dam_max_concurrent_uploads)
    metrics.configure(settings.dam_metrics)
    if settings.dam_metrics:
        app.state.catalog.index.on_swap = metrics.index_swapped

    app.add_middleware(DirectFastPath)  # innermost of ours: CORS and the metrics see its answers too
    origins = [o.strip() for o in settings.dam_cors_origins.split(",") if o.strip()]
    if origins:  # CORS stays off unless configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type"],
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # No input echo: it may be large or hostile.
        body = ValidationErrorBody(
            detail="invalid request",
            errors=[FieldError(loc=list(e.get("loc", ())), msg=e.get("msg", "")) for e in exc.errors()],
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _refused(request: Request, exc: StarletteHTTPException):
        # FastAPI's own handler answers {"detail"}; ErrorBody adds `message`, which Uppy shows.
        if not isinstance(exc.detail, str):
            return await http_exception_handler(request, exc)
        body = ErrorBody(detail=exc.detail).model_dump(mode="json")
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(StoreError)
    async def _store_down(request: Request, exc: StoreError):
        # Any route: a store that fails (network, disk full, permissions) is an outage, not a bug.
        log.warning("object store failed on %s %s: %s", request.method, request.url.path, exc)
        body = ErrorBody(detail=STORE_DOWN)
        return JSONResponse(body.model_dump(mode="json"), status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(ErrorBody(detail=INTERNAL_ERROR).model_dump(mode="json"), status_code=500)

    # Every status a route can answer is in the schema, with its body model: clients (and the
    # fuzz test) can rely on the document. Each router declares its own.
    for module in (health, upload, assets, check, direct, search, page):
        app.include_router(module.router)
    app.add_middleware(RawUploadIdPaths)  # an R2 upload id's `/` stays in its path segment
    if settings.dam_metrics:
        app.include_router(metrics_route.router)
        app.add_middleware(RequestMetrics)  # outermost of ours: it times CORS and the routes
    return app


def app() -> FastAPI:
    """Factory for `uvicorn --factory dam_ingest_api.main:app`."""
    return create_app()
