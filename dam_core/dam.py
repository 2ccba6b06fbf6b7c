"""The composition root: `open_dam(settings)` builds the handles a process works with, once.

The API (`create_app`), every `dam` command and the Dagster `dam` resource each open one `Dam`;
code below them takes the handles it uses (a store, a queue, the table), never the settings.
"""

from __future__ import annotations

import threading

from dam_core.queue import UploadQueue, make_queue
from dam_core.settings import Settings
from dam_core.store import ObjectStore, make_store
from dam_core.table import AssetTable, make_table


class Dam:
    """The object store, the upload queue and the `assets` table of one configuration.

    Each is built on first use: a process that only reads the table never connects to the broker,
    and a command that only looks creates no folder. `close()` closes the queue if it was opened.
    """

    def __init__(self, settings: Settings, store: ObjectStore | None = None, queue: UploadQueue | None = None):
        self.settings = settings
        self._store = store
        self._queue = queue
        self._table: AssetTable | None = None
        self._lock = threading.Lock()  # API request threads may be the first to reach one

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = make_store(self.settings)
        return self._store

    @property
    def queue(self) -> UploadQueue:
        if self._queue is None:
            with self._lock:
                if self._queue is None:
                    self._queue = make_queue(self.settings)
        return self._queue

    @property
    def table(self) -> AssetTable:
        if self._table is None:
            self._table = make_table(self.settings)  # a description only: nothing opened yet
        return self._table

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()

    def __enter__(self) -> Dam:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dam(settings: Settings, *, store: ObjectStore | None = None, queue: UploadQueue | None = None) -> Dam:
    """The handles of this configuration; `store` and `queue` replace the ones the settings select (tests inject faults so)."""
    return Dam(settings, store=store, queue=queue)
