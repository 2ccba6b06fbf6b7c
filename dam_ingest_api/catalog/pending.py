"""Uploads accepted but not in the index snapshot yet: the read side shows them as `queued`.

Three sources, newest knowledge first: uploads this process just accepted (before the sensor
writes their manifest), the batch manifests after the snapshot's low watermark (every manifest
at or before it has its batch in the snapshot; see dam_core.index), and, for one id, its upload
marker. An upload that a later delete hides (see deleted.py) is not queued; a snapshot row that
one hides does not stop a newer upload of the same bytes from being queued.
"""

from __future__ import annotations

import threading
import time

from dam_core.index import IndexHolder
from dam_core.manifests import batches_after, read_manifest
from dam_core.markers import find_upload
from dam_core.messages import BatchManifest, UploadMessage
from dam_core.store import KeyNotFound, ObjectStore
from dam_ingest_api.catalog.deleted import DeletedAssets

PENDING_TTL_SECONDS = 2.0
RECENT_MAX = 10_000


class PendingUploads:
    """The queued uploads, listed from the store at most every PENDING_TTL_SECONDS per snapshot."""

    def __init__(self, store: ObjectStore, index: IndexHolder, deleted: DeletedAssets):
        self.store = store
        self.index = index
        self.deleted = deleted
        self._lock = threading.Lock()
        self._listed: tuple[float, tuple[str | None, int], list[UploadMessage]] | None = None
        # Parsed manifests after the current low watermark only: bounded by the batches not
        # indexed yet, never by the history.
        self._manifests: dict[str, BatchManifest] = {}
        # Uploads this process accepted, shown as queued before the sensor writes their manifest.
        self._recent: dict[str, UploadMessage] = {}

    @property
    def cached_batches(self) -> set[str]:
        """The batches whose manifests are held in memory."""
        with self._lock:
            return set(self._manifests)

    def note(self, upload: UploadMessage) -> None:
        """Remember an upload this process just accepted (bounded; pruned once indexed)."""
        with self._lock:
            self._recent[upload.id] = upload
            if len(self._recent) > RECENT_MAX:
                for key in list(self._recent)[: len(self._recent) - RECENT_MAX]:
                    del self._recent[key]
            self._listed = None

    def find(self, asset_id: str) -> UploadMessage | None:
        """The queued upload with this id: its marker, else the manifests and recent uploads."""
        upload = find_upload(self.store, asset_id)
        if upload is not None and not self.deleted.hides(upload.id, upload.uploaded_at):
            return upload
        return next((u for u in self.list() if u.id == asset_id), None)

    def list(self) -> list[UploadMessage]:
        """Uploads not in the snapshot, newest first (by uploaded_at, then id)."""
        snap = self.index.snapshot
        hidden = self.deleted.hidden_in(snap)
        version = (snap.version if snap else None, self.deleted.generation)
        now = time.monotonic()
        with self._lock:
            if self._listed and self._listed[1] == version and now - self._listed[0] < PENDING_TTL_SECONDS:
                return self._listed[2]
            if snap is not None:
                for key in [k for k in self._recent if k in snap.by_id and k not in hidden]:
                    del self._recent[key]
            recent = list(self._recent.values())
            cached = self._manifests
        out: dict[str, UploadMessage] = {}

        def add(u: UploadMessage) -> None:
            if (snap is None or u.id not in snap.by_id or u.id in hidden) and not self.deleted.hides(u.id, u.uploaded_at):
                if u.id not in out or u.uploaded_at > out[u.id].uploaded_at:
                    out[u.id] = u

        for u in recent:
            add(u)
        # From the low watermark, not the newest indexed batch: an older batch whose run has not
        # finished (or waits for a retry) sorts before it, and its uploads are still queued.
        low = snap.low_watermark if snap else None
        manifests: dict[str, BatchManifest] = {}
        for batch in batches_after(self.store, after=low):
            manifest = cached.get(batch)  # manifests never change once written
            if manifest is None:
                try:
                    manifest = read_manifest(self.store, batch)
                except (KeyNotFound, ValueError):
                    continue
            manifests[batch] = manifest
            for u in manifest.uploads:
                add(u)
        pending = sorted(out.values(), key=lambda u: (-u.uploaded_at.timestamp(), u.id))
        with self._lock:
            # Replaced, not merged: manifests the low watermark has passed are dropped here.
            self._manifests = manifests
            self._listed = (now, version, pending)
        return pending
