"""The gallery page and the API docs (/docs): static files shipped in the package, no build step, no CDN.

On the S3/R2 store the page uploads with Uppy (`@uppy/aws-s3` against this API's /s3 routes, the
bytes PUT straight to the bucket); on the local folder with `POST /upload`. The page learns which
from a `<meta name="dam-upload">` filled in here, and the bucket's origin joins `connect-src`.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from dam_core.layout import staging_key
from dam_core.store import StoreError
from dam_ingest_api.deps import UploaderDep
from dam_ingest_api.direct import DirectUploads

router = APIRouter(tags=["page"], include_in_schema=False)

_STATIC = resources.files("dam_ingest_api").joinpath("static")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# Vendored browser libraries, each in static/vendor/<name>/ with its LICENSE.txt. Uppy 5.2.4 (MIT): the
# npm package `uppy`'s dist/uppy.min.js byte for byte (`npm pack uppy@5.2.4`; the file's sha256 is
# efcde62cb5911f9ac5d38cb9ec8a5da47b3964219336eab805ec22306109d0fd). Not 6.x: its @uppy/aws-s3 sends
# a form POST to the URL /s3/params answers, so it cannot use this API's presigned PUT.
_VENDOR = frozenset({"uppy"})
_UPLOAD_META = '<meta name="dam-upload" content="form">'


def _csp(connect: str) -> str:
    return (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        f"connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def _bucket_origin(direct: DirectUploads) -> str | None:
    """Where the browser PUTs (scheme://host[:port] of a presigned URL: path- or virtual-host style)."""
    try:
        url = urlsplit(direct.store.presign_put(staging_key("0" * 32), 60))  # signed locally: no request
    except StoreError:
        return None
    return f"{url.scheme}://{url.netloc}" if url.scheme in ("http", "https") and url.netloc else None


@router.get("/", response_class=HTMLResponse)
def index(uploader: UploaderDep) -> HTMLResponse:
    html = _STATIC.joinpath("index.html").read_text(encoding="utf-8")
    direct = DirectUploads.of(uploader)
    origin = _bucket_origin(direct) if direct is not None else None
    if origin is None:
        return HTMLResponse(html, headers={"Content-Security-Policy": _csp("'self'")})
    html = html.replace(_UPLOAD_META, '<meta name="dam-upload" content="direct">')
    return HTMLResponse(html, headers={"Content-Security-Policy": _csp(f"'self' {origin}")})


def _file(folder: Traversable, name: str) -> Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in _TYPES or "/" in name or name.startswith("."):
        raise HTTPException(404, "not found")
    f = folder.joinpath(name)
    if not f.is_file():
        raise HTTPException(404, "not found")
    return Response(f.read_bytes(), media_type=_TYPES[suffix], headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}")
def static(name: str) -> Response:
    return _file(_STATIC, name)


@router.get("/static/vendor/{library}/{name}")
def vendor(library: str, name: str) -> Response:
    if library not in _VENDOR:
        raise HTTPException(404, "not found")
    return _file(_STATIC.joinpath("vendor", library), name)


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
