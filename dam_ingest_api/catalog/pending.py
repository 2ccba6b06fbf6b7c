"""Uploads accepted but not in the index snapshot yet: the read side shows them as `queued`.

Four sources, newest knowledge first: uploads this process just accepted (before the sensor
writes their manifest), the batch manifests after the snapshot's low watermark (every manifest
at or before it has its batch in the snapshot; see dam_core.index.watermark), the upload markers found by
the marker scan, and, for one id, its upload marker. An upload that a later delete hides (see
deleted.py) is not queued; a snapshot row that one hides does not stop a newer upload of the
same bytes from being queued.

The marker scan is what an API restart, or another API process (`dam api --workers N`), relies on
while no manifest holds an upload yet (Dagster stopped, or before its next tick): the markers are
the durable record of accepted uploads. Their keys are ids, not times, so a scan lists all of
`uploads/` (one LIST request per 1,000 markers on S3); it reads only the markers of ids the
snapshot does not hold (the queued ones) and keeps them, so a re-scan reads only markers it has
not read yet, and never those of uploads this process accepted (it holds their messages). A
background thread scans once at start, without delaying it, then again every
max(DAM_INDEX_POLL_SECONDS, SCAN_COST_FACTOR x the last listing's duration): the listings take at
most 1/SCAN_COST_FACTOR of one thread's time however many markers there are. A request never lists.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from dam_core.index.holder import IndexHolder
from dam_core.layout import CURRENT_INDEX_KEY
from dam_core.manifests import batches_after, read_manifest
from dam_core.markers import find_upload, marker_ids
from dam_core.messages import BatchManifest, UploadMessage
from dam_core.store import KeyNotFound, ObjectStore, StoreError
from dam_ingest_api.catalog.deleted import DeletedAssets

log = logging.getLogger(__name__)

PENDING_TTL_SECONDS = 2.0
RECENT_MAX = 10_000
SCAN_COST_FACTOR = 20  # a marker scan waits at least this many times its own duration before the next
SCAN_READ_THREADS = 8  # markers read at once by a scan (S3 round trips)


class PendingUploads:
    """The queued uploads, listed from the store at most every PENDING_TTL_SECONDS per snapshot
    (the manifests after the low watermark), plus what the last marker scan found."""

    def __init__(self, store: ObjectStore, index: IndexHolder, deleted: DeletedAssets, scan_seconds: float = 5.0):
        self.store = store
        self.index = index
        self.deleted = deleted
        self.scan_seconds = scan_seconds  # the shortest wait between two marker scans
        self._lock = threading.Lock()
        self._listed: tuple[float, tuple[str | None, int, int], list[UploadMessage]] | None = None
        # Parsed manifests after the current low watermark only: bounded by the batches not
        # indexed yet, never by the history.
        self._manifests: dict[str, BatchManifest] = {}
        # Uploads this process accepted, shown as queued before the sensor writes their manifest.
        self._recent: dict[str, UploadMessage] = {}
        # Uploads found by the last marker scan that the snapshot did not hold (see the docstring).
        self._scanned: dict[str, UploadMessage] = {}
        self._scan_generation = 0  # bumped when the scan's findings change
        self._scanned_at: float | None = None  # monotonic end of the last complete scan
        self._scan_interval = scan_seconds
        self._scan_lock = threading.Lock()  # one scan at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Scan the markers in the background: at once, then periodically (see the docstring)."""

        def loop():
            while not self._stop.is_set():
                if not self.scan():
                    self._stop.wait(self.scan_seconds)  # the store or the index is not there yet
                    continue
                self._stop.wait(self._scan_interval)

        self._thread = threading.Thread(target=loop, name="markers-scan", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def scan(self) -> bool:
        """List the markers and keep the uploads the snapshot does not hold; False when it could not."""
        with self._scan_lock:
            try:
                return self._scan()
            except StoreError as err:  # the store is down: keep what is known, try again later
                log.warning("pending: cannot scan the upload markers: %s", err)
            except Exception:
                log.exception("pending: the upload marker scan failed")
            return False

    def _scan(self) -> bool:
        started = time.monotonic()
        snap = self.index.snapshot
        if snap is None and self.store.exists(CURRENT_INDEX_KEY):
            return False  # the index is not loaded yet: every processed id would look queued
        hidden = self.deleted.hidden_in(snap)
        with self._lock:
            known = self._scanned
            recent = dict(self._recent)  # accepted here: their markers hold these very messages
        found: dict[str, UploadMessage] = {}
        to_read: list[str] = []
        for asset_id in marker_ids(self.store):
            if snap is not None and asset_id in snap.by_id and asset_id not in hidden:
                continue  # indexed: never read (most markers, once the pipeline keeps up)
            upload = known.get(asset_id) or recent.get(asset_id)
            # A marker read before is kept, unless a delete hides it since: then the id's marker
            # may be a newer upload's (deleted, then uploaded again), so it is read again.
            if upload is not None and not self.deleted.hides(upload.id, upload.uploaded_at):
                found[asset_id] = upload
            else:
                to_read.append(asset_id)
        listed = time.monotonic() - started  # what every scan repeats (a marker is read once)
        if to_read:
            with ThreadPoolExecutor(min(SCAN_READ_THREADS, len(to_read)), thread_name_prefix="markers-read") as pool:
                for asset_id, upload in zip(to_read, pool.map(self._read_marker, to_read), strict=True):
                    if upload is not None:
                        found[asset_id] = upload
        with self._lock:
            if found != self._scanned:
                self._scanned = found
                self._scan_generation += 1
                self._listed = None
            self._scanned_at = time.monotonic()
            self._scan_interval = max(self.scan_seconds, SCAN_COST_FACTOR * listed)
        return True

    def _read_marker(self, asset_id: str) -> UploadMessage | None:
        try:
            return find_upload(self.store, asset_id)
        except ValueError:  # not an upload message: nothing to show
            return None

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
        if self._thread is None and (
            self._scanned_at is None or time.monotonic() - self._scanned_at >= self._scan_interval
        ):
            self.scan()  # no background thread (tests, CLI): scan lazily, at the same pace
        version = (snap.version if snap else None, self.deleted.generation, self._scan_generation)
        now = time.monotonic()
        with self._lock:
            if self._listed and self._listed[1] == version and now - self._listed[0] < PENDING_TTL_SECONDS:
                return self._listed[2]
            if snap is not None:
                for key in [k for k in self._recent if k in snap.by_id and k not in hidden]:
                    del self._recent[key]
            recent = list(self._recent.values())
            scanned = list(self._scanned.values())
            cached = self._manifests
        out: dict[str, UploadMessage] = {}

        def add(u: UploadMessage) -> None:
            if (snap is None or u.id not in snap.by_id or u.id in hidden) and not self.deleted.hides(
                u.id, u.uploaded_at
            ):
                if u.id not in out or u.uploaded_at > out[u.id].uploaded_at:
                    out[u.id] = u

        for u in recent:
            add(u)
        for u in scanned:
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
