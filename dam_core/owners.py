"""Which batch owns each id's row in the `assets` table: one row per id, enforced when a batch writes.

An id reaches more than one batch only by accident: a message redelivered after a crash between
the manifest and the ack, a recovery re-enqueue, two copies of the same bytes uploaded at the same
moment. Each batch that is about to write a row for an id first leaves a claim `owners/{id}/{batch}`
(an empty object: no read-modify-write, so claims never conflict), then lists the id's claims:

- a claim by a *later* batch (batch keys sort by creation time): that batch owns the row, and this
  batch leaves the id out;
- claims by *earlier* batches: this batch owns the row and its commit deletes theirs, in the same
  commit that writes its own rows; except that an error row never replaces a row without error;
- after the commit the claims are listed again: a later batch that claimed meanwhile (and may have
  committed first, finding no row of ours to delete) owns the id, so this batch deletes its own row.

Work per batch is proportional to the batch (a listing per id), not to the table. `compact()` also
removes any duplicate left by an interrupted batch as a safety net.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from dam_core.layout import owner_key, owner_prefix
from dam_core.store import LocalStore, ObjectStore, StoreError

_PARALLEL = 16

T = TypeVar("T")
R = TypeVar("R")


def _each(store: ObjectStore, fn: Callable[[T], R], items: list[T]) -> list[R]:
    # In parallel on both stores: S3 round trips, and a local folder's fsyncs, wait outside the GIL.
    if len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(_PARALLEL if not isinstance(store, LocalStore) else 8, len(items))) as pool:
        return list(pool.map(fn, items))


def claim(store: ObjectStore, batch: str, ids: Iterable[str]) -> None:
    """Record that `batch` is about to write a row for each id."""
    _each(store, lambda i: _put_claim(store, owner_key(i, batch)), sorted(set(ids)))


def _put_claim(store: ObjectStore, key: str) -> None:
    try:
        store.put(key, b"")
    except StoreError:
        if not isinstance(store, LocalStore):
            raise
        # A delete of the id removed its empty folder between our mkdir and rename (release_all): once more.
        store.put(key, b"")


def claimants(store: ObjectStore, ids: Iterable[str]) -> dict[str, list[str]]:
    """Every batch that claimed each id, oldest first."""
    ids = sorted(set(ids))
    found = _each(store, lambda i: sorted(k[len(owner_prefix(i)) :] for k in store.list(owner_prefix(i))), ids)
    return dict(zip(ids, found, strict=True))


def release(store: ObjectStore, pairs: Iterable[tuple[str, str]]) -> None:
    """Drop the claims (id, batch) of rows that are gone or were never written."""
    _each(store, lambda p: store.delete(owner_key(*p)), sorted(set(pairs)))


def release_all(store: ObjectStore, asset_id: str) -> None:
    """Every claim of a deleted id, and on a local store its folder: nothing is left under owners/{id}/.

    The same bytes uploaded again start afresh.
    """
    prefix = owner_prefix(asset_id)
    for key in list(store.list(prefix)):
        store.delete(key)
    if isinstance(store, LocalStore):
        # A folder is no object, but an empty owners/{id}/ per deleted id would pile up all the same.
        with contextlib.suppress(OSError):  # gone already, or a new claim landed (not empty)
            os.rmdir(store.path(prefix.rstrip("/")))
