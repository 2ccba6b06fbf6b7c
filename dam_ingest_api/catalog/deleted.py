"""Deleted assets on the read side: the tombstones, cached, and which snapshot rows they hide.

The index snapshot may still hold a deleted row until its next version; every read route asks
this module first. The cache is re-read every DAM_INDEX_POLL_SECONDS by a background thread (a
request never waits for the store, except the very first), and at once when a request sees a new
snapshot, so deletes by `dam delete` or another API process show within that; a DELETE answered by
this process updates it directly. A re-read lists `deleted/` and reads only the tombstones that
are new or rewritten since the last one.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from dam_core.index.holder import IndexHolder
from dam_core.index.snapshot import Snapshot
from dam_core.layout import TOMBSTONES_PREFIX
from dam_core.store import KeyNotFound, ObjectStore, StoreError
from dam_core.tombstones import is_deleted, parse_tombstone

log = logging.getLogger(__name__)


class DeletedAssets:
    """Tombstones by id (deleted_at), and the ids of the current snapshot that they hide."""

    def __init__(self, store: ObjectStore, index: IndexHolder, ttl_seconds: float):
        self.store = store
        self.index = index
        self.ttl = ttl_seconds
        self._lock = threading.Lock()
        self._tombs: dict[str, datetime] = {}
        self._seen: dict[str, datetime] = {}  # tombstone key -> modification time when read
        self._read_at: float | None = None
        self._read_for: str | None = None  # the snapshot version of the last re-read
        self.generation = 0  # bumped on every change: caches built from the tombstones compare it
        self._hidden: tuple[str | None, int, frozenset[str]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.ttl):
                self._try_reread(self._read_for)

        self._try_reread(None)
        self._thread = threading.Thread(target=loop, name="tombstones-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def tombstones(self) -> dict[str, datetime]:
        """Every tombstone, re-read when stale (see the module docstring)."""
        snap = self.index.snapshot
        version = snap.version if snap else None
        with self._lock:
            if self._read_at is not None and version == self._read_for:
                stale = self._thread is None and time.monotonic() - self._read_at >= self.ttl
                if not stale:
                    return self._tombs
        self._try_reread(version)
        return self._tombs

    def note(self, asset_id: str, deleted_at: datetime) -> None:
        """A delete this process just made: hidden from now on, before any re-read."""
        with self._lock:
            if self._tombs.get(asset_id) != deleted_at:
                self._tombs = {**self._tombs, asset_id: deleted_at}
                self.generation += 1

    def hides(self, asset_id: str, uploaded_at: datetime | float | None) -> bool:
        """Whether the upload of `asset_id` made at `uploaded_at` was deleted since."""
        return is_deleted(self.tombstones(), asset_id, uploaded_at)

    def hidden_in(self, snap: Snapshot | None) -> frozenset[str]:
        """The ids whose row in this snapshot a tombstone hides (few: the next version drops them)."""
        if snap is None:
            return frozenset()
        tombs = self.tombstones()
        with self._lock:
            if self._hidden and self._hidden[0] == snap.version and self._hidden[1] == self.generation:
                return self._hidden[2]
            generation = self.generation
        hidden = frozenset(
            i
            for i in tombs
            if (pos := snap.by_id.get(i)) is not None and is_deleted(tombs, i, float(snap.items.uploaded_ts[pos]))
        )
        with self._lock:
            self._hidden = (snap.version, generation, hidden)
        return hidden

    def _try_reread(self, version: str | None) -> None:
        try:
            self._reread(version)
        except StoreError as err:  # the store is down: serve what is known, try again later
            log.warning("tombstones: cannot read %s: %s", TOMBSTONES_PREFIX, err)
            with self._lock:
                self._read_at, self._read_for = time.monotonic(), version

    def _reread(self, version: str | None) -> None:
        listed = dict(self.store.list_modified(TOMBSTONES_PREFIX))
        with self._lock:
            seen = dict(self._seen)
        changed = {}
        for key, modified in listed.items():
            if seen.get(key) == modified:
                continue
            try:
                asset_id, deleted_at = parse_tombstone(self.store.get(key))
            except (KeyNotFound, ValueError):
                continue
            changed[asset_id] = deleted_at
            seen[key] = modified
        with self._lock:
            tombs = dict(self._tombs)
            for asset_id, deleted_at in changed.items():
                # Never older than what this process noted: its own DELETE may be newer than the listing.
                if asset_id not in tombs or deleted_at > tombs[asset_id]:
                    tombs[asset_id] = deleted_at
            if tombs != self._tombs:
                self._tombs = tombs
                self.generation += 1
            self._seen = {k: v for k, v in seen.items() if k in listed}
            self._read_at, self._read_for = time.monotonic(), version
