"""Thumbnails: `thumbnails/{id}.webp`, long edge 256 px, EXIF rotation applied, alpha kept."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

from dam_assets.imaging import Decoded, to_rgb
from dam_core.images import FORMATS
from dam_core.store import ObjectStore

THUMBNAIL_LONG_EDGE = 256
# Formats that can carry transparency: their thumbnails are decoded again to keep alpha;
# the others reuse the batch's shared RGB decode.
_ALPHA_TYPES = {"image/png", "image/webp", "image/gif", "image/tiff"}


def webp(img: Image.Image, long_edge: int = THUMBNAIL_LONG_EDGE) -> bytes:
    thumb = img.copy()
    thumb.thumbnail((long_edge, long_edge), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "WEBP", quality=80, method=4)
    return buf.getvalue()


def _with_alpha(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data), formats=list(FORMATS)) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            return img.convert("RGBA")
        return to_rgb(img)


def thumbnail(store: ObjectStore, d: Decoded) -> bytes | None:
    """WebP thumbnail bytes for one decoded upload, or None when the image could not be read."""
    if d.image is None:
        return None
    if d.upload.mime_type in _ALPHA_TYPES:
        try:
            return webp(_with_alpha(store.get(d.upload.r2_key)))
        except Exception:
            pass  # fall back to the shared decode: a thumbnail without alpha beats none
    return webp(d.image)
