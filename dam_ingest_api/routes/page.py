"""The gallery page: static files shipped in the package, no build step, no CDN."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
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
    return HTMLResponse(_STATIC.joinpath("index.html").read_text(encoding="utf-8"), headers={"Content-Security-Policy": _CSP})


@router.get("/static/{name}")
def static(name: str) -> Response:
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix not in _TYPES or "/" in name or name.startswith("."):
        raise HTTPException(404, "not found")
    f = _STATIC.joinpath(name)
    if not f.is_file():
        raise HTTPException(404, "not found")
    return Response(f.read_bytes(), media_type=_TYPES[suffix], headers={"Cache-Control": "no-cache"})
