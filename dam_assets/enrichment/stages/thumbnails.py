"""Thumbnails: `thumbnails/{id}.webp` (long edge 256 px) for every decoded image, for the API to serve."""

from __future__ import annotations

import io

from PIL import Image

from dam_core.imaging import Decoded
from dam_core.layout import thumbnail_key
from dam_core.store import ObjectStore

THUMBNAIL_LONG_EDGE = 256


def thumbnail_batch(decoded: list[Decoded]) -> dict[str, bytes]:
    """WebP bytes by upload id, for every image that could be decoded."""
    return {d.upload.id: data for d in decoded if (data := thumbnail(d)) is not None}


def thumbnail(d: Decoded) -> bytes | None:
    """WebP thumbnail bytes for one decoded upload, or None when the image could not be read."""
    # The batch's one reduced decode is enough: upright, at least 384 px on the short side (or the
    # original size), and RGBA where the original has transparency.
    if d.image is None:
        return None
    thumb = d.image.copy()
    thumb.thumbnail((THUMBNAIL_LONG_EDGE, THUMBNAIL_LONG_EDGE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "WEBP", quality=80, method=4)
    return buf.getvalue()


def write_thumbnails(store: ObjectStore, thumbnails: dict[str, bytes]) -> None:
    for uid, data in thumbnails.items():
        store.put(thumbnail_key(uid), data, content_type="image/webp")
