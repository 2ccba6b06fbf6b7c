"""Accepting one upload: check the bytes, store the original, publish a confirmed message."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from datetime import UTC, datetime
from typing import IO

from dam_core.images import ImageRejected, inspect_image
from dam_core.messages import UploadMessage, clean_filename, original_key, vector_key
from dam_core.queue import QueueError, UploadQueue
from dam_core.settings import Settings
from dam_core.store import ObjectStore, StoreError

log = logging.getLogger(__name__)


class ServiceUnavailable(RuntimeError):
    """The store or the queue is down; nothing was kept."""


def _sha256(fp: IO[bytes]) -> tuple[str, int]:
    fp.seek(0)
    h = hashlib.sha256()
    size = 0
    while chunk := fp.read(1024 * 1024):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def accept_upload(
    fp: IO[bytes], filename: str | None, settings: Settings, store: ObjectStore, queue: UploadQueue
) -> dict:
    """Store and queue one file; ImageRejected for bad bytes, ServiceUnavailable when a service is down.

    The id is derived from the content, so the same bytes always map to the same key and
    the pipeline's one-row-per-id rule makes a repeated upload harmless.
    """
    info = inspect_image(fp, settings.dam_max_image_pixels, settings.dam_max_frames)
    sha, size = _sha256(fp)
    asset_id = sha[:32]
    key = original_key(asset_id, info.ext)
    message = UploadMessage(
        id=asset_id,
        filename=clean_filename(filename),
        r2_key=key,
        mime_type=info.mime_type,
        bytes=size,
        sha256=sha,
        width=info.width,
        height=info.height,
        uploaded_at=datetime.now(UTC),
    )
    fp.seek(0)
    try:
        created = store.create(key, fp, content_type=info.mime_type)
    except StoreError as err:
        log.warning("store failed for %s: %s", asset_id, err)
        raise ServiceUnavailable("the object store is unavailable; nothing was stored, try again") from None
    try:
        queue.publish(message.to_json())
    except QueueError as err:
        log.warning("queue failed for %s: %s", asset_id, err)
        if created:
            # Nothing half-done: an original whose message was not confirmed is removed.
            with contextlib.suppress(StoreError):
                store.delete(key)
        raise ServiceUnavailable("the queue is unavailable; nothing was stored, try again") from None
    return {
        "id": asset_id,
        "filename": message.filename,
        "r2_key": key,
        "vector_key": vector_key(asset_id),
        "mime_type": info.mime_type,
        "bytes": size,
        "sha256": sha,
        "width": info.width,
        "height": info.height,
        "status": "queued",
    }


__all__ = ["accept_upload", "ServiceUnavailable", "ImageRejected"]
