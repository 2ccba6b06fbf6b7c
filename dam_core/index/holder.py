"""The API's live view of the index: holds the snapshot it serves and swaps to each new version."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dam_core.index.manifest import read_head
from dam_core.index.snapshot import Snapshot, load_snapshot
from dam_core.layout import CURRENT_INDEX_KEY
from dam_core.store import ObjectStore

log = logging.getLogger(__name__)


class IndexHolder:
    """Holds the current snapshot and swaps to a new version when one is published (polling)."""

    def __init__(self, store: ObjectStore, poll_seconds: float = 5.0):
        self.store = store
        self.poll_seconds = poll_seconds
        self._snapshot: Snapshot | None = None
        self._version: str | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_swap: Callable[[Snapshot], None] | None = None  # told of each new snapshot (metrics)

    @property
    def snapshot(self) -> Snapshot | None:
        if self._thread is None and time.monotonic() - self._checked > self.poll_seconds:
            self.refresh()  # no background thread (tests, CLI): refresh lazily
        return self._snapshot

    def refresh(self) -> bool:
        """Load a new version if one was published; True when the snapshot changed."""
        with self._lock:
            self._checked = time.monotonic()
            try:
                current = read_head(self.store)
            except Exception as err:
                log.warning("index: cannot read %s: %s", CURRENT_INDEX_KEY, err)
                return False
            if current is None or current.version == self._version:
                return False
            if self._snapshot is not None and current.seq and current.seq < self._snapshot.seq:
                return False  # never go back to an older version
            try:
                snap = load_snapshot(self.store, current, reuse=self._snapshot)
            except Exception as err:  # a pruned or half-visible version: keep the old one
                log.warning("index: cannot load version %s: %s", current.version, err)
                return False
            self._snapshot, self._version = snap, current.version
            log.info("index: now serving version %s (%d items)", snap.version, snap.size)
            if self.on_swap is not None:
                self.on_swap(snap)
            return True

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.poll_seconds):
                self.refresh()

        self.refresh()
        self._thread = threading.Thread(target=loop, name="index-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
