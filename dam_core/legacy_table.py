"""The one-off move of a table written before Delta Lake (one Parquet file per batch) into the Delta table.

Each old file `metadata/assets/batch=B/part-0.parquet` becomes batch B's rows in the Delta table
(one commit per batch, the same overwrite a batch run does, so running it twice changes nothing),
and the old file is deleted only after its commit. Interrupted, it resumes where it stopped.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from dam_core.layout import TABLE_PREFIX, batch_of_legacy_table_key
from dam_core.table import remove_duplicates, write_batch

if TYPE_CHECKING:
    from dam_core.settings import Settings
    from dam_core.store import ObjectStore


def legacy_batches(store: "ObjectStore") -> list[tuple[str, str]]:
    """(batch, key) of every old per-batch file still in the store, oldest batch first."""
    found = ((batch_of_legacy_table_key(k), k) for k in store.list(TABLE_PREFIX))
    return sorted((b, k) for b, k in found if b is not None)


def migrate(settings: "Settings", store: "ObjectStore", progress: Callable[[str, int], None] | None = None) -> int:
    """Move every old batch file into the Delta table; returns how many batches moved."""
    moved = 0
    for batch, key in legacy_batches(store):
        rows = pq.read_table(io.BytesIO(store.get(key))).to_pylist()
        dim = next((len(r["embedding"]) for r in rows if r.get("embedding")), None)
        write_batch(settings, batch, rows, dim, store)
        store.delete(key)
        moved += 1
        if progress is not None:
            progress(batch, len(rows))
    if moved:
        remove_duplicates(settings)  # the old layout kept every copy and let its view pick one
    return moved
