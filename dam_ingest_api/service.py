"""Accepting uploads (`Uploader`): check the bytes, store the original, publish a confirmed message."""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO

from dam_core.dam import Dam
from dam_core.images import ImageInfo, inspect_image
from dam_core.imaging import return_freed_memory
from dam_core.layout import original_key
from dam_core.markers import find_upload
from dam_core.messages import UploadMessage, clean_filename
from dam_core.queue import QueueError, UploadQueue
from dam_core.settings import Settings
from dam_core.store import ObjectStore, StoreError
from dam_ingest_api import metrics
from dam_ingest_api.marker_writer import MarkerWriter

log = logging.getLogger(__name__)


class ServiceUnavailable(RuntimeError):
    """The store or the queue is down; nothing was kept. `reason` names which (a metrics label)."""

    reason = "store_unavailable"


class BrokerUnavailable(ServiceUnavailable):
    """The queue failed or did not confirm the message."""

    reason = "broker_unavailable"


def _sha256(fp: IO[bytes]) -> tuple[str, int]:
    fp.seek(0)
    h = hashlib.sha256()
    size = 0
    while chunk := fp.read(1024 * 1024):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


_TRIM_ABOVE_PIXELS = 4_000_000


@functools.lru_cache(maxsize=None)
def _validation_slots(limit: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(limit)


class Uploader:
    """Accepts uploads: checks the bytes, stores the original, publishes a confirmed message, and has
    the upload's marker written after the answer. One per app, built from its Dam."""

    def __init__(self, settings: Settings, store: ObjectStore, queue: UploadQueue, markers: MarkerWriter):
        self.settings = settings  # the upload limits: sizes, files per request, timeouts, image bounds
        self.store = store
        self.queue = queue
        self.markers = markers

    @classmethod
    def of(cls, dam: Dam) -> Uploader:
        """The uploader over this Dam's store and queue (built now), with a marker writer of its own."""
        return cls(dam.settings, dam.store, dam.queue, MarkerWriter(dam.store))

    def close(self) -> None:
        """Land the markers in flight; before the store's clients go."""
        self.markers.close()

    def check_image(self, fp: IO[bytes]) -> ImageInfo:
        """inspect_image, at most DAM_MAX_CONCURRENT_VALIDATIONS at once in this process.

        It decodes every pixel (about 250 MB for an 8000x8000 PNG): without a cap, a burst of
        large images would take memory in proportion to the number of request threads.
        """
        settings = self.settings
        with _validation_slots(settings.dam_max_concurrent_validations):
            info = None
            try:
                info = inspect_image(
                    fp, settings.dam_max_image_pixels, settings.dam_max_frames, settings.dam_max_image_side
                )
                return info
            finally:
                # Inside the slot: the freed pixels go back to the OS before the next decode starts,
                # else each request thread's malloc arena keeps its largest image (the cap then
                # bounds decodes in flight but not memory). A small image's pixels are not worth
                # the trim (a few % of the upload's CPU): glibc reuses them.
                if info is None or info.width * info.height > _TRIM_ABOVE_PIXELS:
                    return_freed_memory()

    def accept(self, fp: IO[bytes], filename: str | None) -> tuple[bool, UploadMessage]:
        """Store and queue one file; returns (is_new, the upload: this one, or the first of these bytes).

        Raises ImageRejected for bad bytes and ServiceUnavailable when a service is down.
        The id is derived from the content: the same bytes map to the same key. Once an
        upload's message is confirmed, a marker `uploads/{id}.json` records it (written by
        `markers` after the answer), and the same bytes again are answered as a duplicate with
        nothing stored or queued. Two copies
        racing past the marker check both publish; the pipeline's one-row-per-id rule still
        makes them one asset.

        An original is never deleted here: another request with the same bytes may have been
        answered 202 for this very object. One whose message is never confirmed is an orphan,
        removed by the periodic sweep (`dam_assets.maintenance.sweep`) once older than DAM_ORPHAN_GRACE_SECONDS;
        re-writing an existing original before publishing restarts that clock.
        """
        info = self.check_image(fp)
        sha, size = _sha256(fp)
        message = self.message_for(sha, size, info, filename)

        def create() -> bool:
            fp.seek(0)
            return self.store.create(message.r2_key, fp, content_type=info.mime_type)

        def rewrite() -> None:
            fp.seek(0)
            self.store.put(message.r2_key, fp, content_type=info.mime_type)

        return self.admit(message, create, rewrite)

    @staticmethod
    def message_for(sha: str, size: int, info: ImageInfo, filename: str | None) -> UploadMessage:
        """The upload's message: its id and key derive from the bytes' SHA-256, never from the client."""
        asset_id = sha[:32]
        return UploadMessage(
            id=asset_id,
            filename=clean_filename(filename),
            r2_key=original_key(asset_id, info.ext),
            mime_type=info.mime_type,
            bytes=size,
            sha256=sha,
            width=info.width,
            height=info.height,
            uploaded_at=datetime.now(UTC),
        )

    def admit(
        self, message: UploadMessage, create: Callable[[], bool], rewrite: Callable[[], None]
    ) -> tuple[bool, UploadMessage]:
        """Store the checked original and queue its message: `accept`'s guarantees, for any source of bytes.

        `create` writes the original at `message.r2_key` only if the key is free (False when it was
        taken); `rewrite` writes it again (see `accept` for when and why). Raises ServiceUnavailable.
        """
        store, markers = self.store, self.markers
        asset_id = message.id
        try:
            with metrics.store_put_timer():
                created = create()
            # Only bytes seen before need the marker: it tells a confirmed duplicate from an
            # earlier attempt that stored the original but never got its message confirmed.
            existing = None if created else (markers.pending(asset_id) or find_upload(store, asset_id))
            if not created and existing is None:
                # Present without a marker: an attempt whose publish failed (an orphan the sweep
                # may be about to remove), or one still in flight. Writing the same bytes again
                # makes the object young, so the sweep leaves it alone while this message is queued.
                with metrics.store_put_timer():
                    rewrite()
        except StoreError as err:
            log.warning("store failed for %s: %s", asset_id, err)
            raise ServiceUnavailable("the object store is unavailable; nothing was queued, try again") from None
        if existing is not None:
            return False, existing
        try:
            with metrics.publish_timer():
                self.queue.publish(message.to_json())
        except QueueError as err:
            log.warning("queue failed for %s: %s", asset_id, err)
            raise BrokerUnavailable(
                "the queue is unavailable or did not confirm the upload; nothing was queued, "
                "send it again (repeating the same file is safe)"
            ) from None
        markers.submit(message)  # the message is confirmed: the upload will be processed, answer 202 now
        return True, message


__all__ = ["BrokerUnavailable", "ServiceUnavailable", "Uploader"]
