"""The gallery page and the API docs (/docs): static files shipped in the package, no build step, no CDN."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

router = APIRouter(tags=["page"], include_in_schema=False)

_STATIC = resources.files("dam_ingest_api").joinpath("static")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    return HTMLResponse(
        _STATIC.joinpath("index.html").read_text(encoding="utf-8"), headers={"Content-Security-Policy": _CSP}
    )


@router.get("/static/{name}")
def static(name: str) -> Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in _TYPES or "/" in name or name.startswith("."):
        raise HTTPException(404, "not found")
    f = _STATIC.joinpath(name)
    if not f.is_file():
        raise HTTPException(404, "not found")
    return Response(f.read_bytes(), media_type=_TYPES[suffix], headers={"Cache-Control": "no-cache"})


# FastAPI's own /docs loads swagger-ui-dist@5 (whatever 5.x is newest) from a CDN with no integrity
# check: whoever serves that file runs script on this origin. Swagger UI is served from the package
# instead (swagger-ui-dist 5.35.0, Apache-2.0: static/swagger-ui.LICENSE.txt), so /docs also works
# offline. ReDoc (/redoc) is off for the same reason.
@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - docs",
        swagger_js_url=f"{root}/static/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/static/swagger-ui.css",
        swagger_favicon_url="data:,",  # no request for a favicon (FastAPI's default is on its own site)
    )
