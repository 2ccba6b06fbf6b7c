"""Thumbnails: `thumbnails/{id}.webp`, long edge 256 px, EXIF rotation applied, alpha kept."""

from __future__ import annotations

import io

from PIL import Image

from dam_core.imaging import Decoded

THUMBNAIL_LONG_EDGE = 256


def webp(img: Image.Image, long_edge: int = THUMBNAIL_LONG_EDGE) -> bytes:
    thumb = img.copy()
    thumb.thumbnail((long_edge, long_edge), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "WEBP", quality=80, method=4)
    return buf.getvalue()


def thumbnail(d: Decoded) -> bytes | None:
    """WebP thumbnail bytes for one decoded upload, or None when the image could not be read.

    The batch's one reduced decode serves it: upright, at least 384 px on the short side (or the
    original size), and RGBA where the original has transparency.
    """
    if d.image is None:
        return None
    return webp(d.image)
