"""Upload markers written after the answer: the 202 waits for the original and the confirm, not the marker.

A marker (`uploads/{id}.json`, see dam_core.markers) only speeds up later reads: it answers a
repeat of the same bytes as a duplicate, shows the upload as queued to other API processes, and
lets the orphan sweep skip the original. Losing one is already handled (a repeat is queued again
and the pipeline keeps one row per id; the sweep checks the queue, manifests and table), so it
need not cost the client a third round trip to the store. Writes run on a few threads; when the
backlog is full the request writes its marker itself (back-pressure, nothing dropped), and
closing the app waits for the writes in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from dam_core.markers import write_marker
from dam_core.messages import UploadMessage
from dam_core.store import ObjectStore, StoreError
from dam_ingest_api import metrics

log = logging.getLogger(__name__)

MARKER_THREADS = 8
MARKER_BACKLOG = 1024
CLOSE_TIMEOUT_SECONDS = 10.0


class MarkerWriter:
    """Background writes of upload markers, with the not-yet-written ones readable by id."""

    def __init__(self, store: ObjectStore, threads: int = MARKER_THREADS, backlog: int = MARKER_BACKLOG):
        self.store = store
        self.backlog = backlog
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dam-marker")
        self._cond = threading.Condition()
        self._pending: dict[str, UploadMessage] = {}  # submitted, not written yet
        self._writing: dict[str, UploadMessage] = {}  # being written now
        self._in_flight = 0
        self._closed = False

    def submit(self, message: UploadMessage) -> None:
        """Write this confirmed upload's marker soon (now, in this thread, when the backlog is full)."""
        with self._cond:
            queued = not self._closed and self._in_flight < self.backlog
            if queued:
                self._in_flight += 1
                self._pending[message.id] = message
                metrics.marker_queued()
        if not queued:
            self._write(message)
            return
        try:
            self._pool.submit(self._run, message)
        except RuntimeError:  # the pool shut down between the check and the submit
            self._run(message)

    def pending(self, asset_id: str) -> UploadMessage | None:
        """A confirmed upload of this process whose marker is not written yet."""
        with self._cond:
            return self._pending.get(asset_id) or self._writing.get(asset_id)

    def settle(self, asset_id: str, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Before a delete: drop this id's marker if it is still waiting, wait for it if it is being
        written (so the delete, which removes markers, cannot run before a late write lands)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._pending.pop(asset_id, None)
            while asset_id in self._writing and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted marker is written (or failed); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Stop taking work and wait (bounded) for the markers in flight."""
        with self._cond:
            self._closed = True
        if not self.flush(timeout):
            log.warning("stopped with %d upload marker(s) unwritten (their uploads are queued)", self._in_flight)
        self._pool.shutdown(wait=False, cancel_futures=False)

    def _run(self, message: UploadMessage) -> None:
        with self._cond:
            # Not pending any more: settled by a delete (or replaced by a newer upload's marker).
            live = self._pending.get(message.id) is message
            if live:
                del self._pending[message.id]
                self._writing[message.id] = message
        try:
            if live:
                self._write(message)
        finally:
            with self._cond:
                self._in_flight -= 1
                metrics.marker_done()
                if self._writing.get(message.id) is message:
                    del self._writing[message.id]
                self._cond.notify_all()

    def _write(self, message: UploadMessage) -> None:
        try:
            write_marker(self.store, message)
        except StoreError as err:
            # The message is confirmed, so the upload will be processed. Without the marker a
            # repeat of these bytes is queued again, which the pipeline deduplicates.
            log.warning("could not write the upload marker for %s: %s", message.id, err)
        except Exception:
            log.exception("upload marker for %s failed", message.id)


__all__ = ["MarkerWriter"]
