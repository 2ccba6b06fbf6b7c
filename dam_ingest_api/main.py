"""The FastAPI application: `create_app()` wires settings, store and queue into the routes."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from dam_core.queue import UploadQueue, make_queue
from dam_core.settings import Settings, get_settings
from dam_core.store import ObjectStore, make_store
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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.include_router(health.router)
    app.include_router(upload.router)
    app.include_router(assets.router)
    app.include_router(search.router)
    app.include_router(page.router)
    return app


def app() -> FastAPI:
    """Factory for `uvicorn --factory dam_ingest_api.main:app`."""
    return create_app()
