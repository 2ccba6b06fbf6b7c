"""Per-image files for readers: `thumbnails/{id}.webp` (long edge 256 px) and `vectors/{id}.json`."""

from __future__ import annotations

import io
import json

from PIL import Image

from dam_assets.enrichment.stages import Embeddings
from dam_core.imaging import Decoded
from dam_core.layout import thumbnail_key, vector_key
from dam_core.store import ObjectStore

THUMBNAIL_LONG_EDGE = 256


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


def write_vectors(store: ObjectStore, embeddings: Embeddings) -> None:
    """One JSON file per embedded image, in the seed's format."""
    for uid, e in embeddings.items.items():
        if e.embedding is not None:
            body = {"id": uid, "model": embeddings.model, "dim": len(e.embedding), "embedding": e.embedding}
            store.put(vector_key(uid), json.dumps(body).encode(), content_type="application/json")
