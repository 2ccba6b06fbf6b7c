"""Deleting assets everywhere: the one implementation behind `DELETE /assets/{id}` and `dam delete`.

Order, and why:
1. the tombstone (`deleted/{id}.json`): from here on the API, the batch and the index hide every
   upload of the id made before now, even while the steps below are still running or failed;
2. the table rows (a batch racing us drops the id before and after its commit, by the tombstone);
3. the objects: original, thumbnail, vector, the id's row claims (`owners/{id}/`, folder and all),
   then the upload marker, whose removal makes the same bytes uploadable again (as a new asset,
   newer than the tombstone);
4. the search index (a new version that no longer serves the id).
A failure part way leaves the tombstone, so the id stays hidden, and deleting it again finishes.
The per-batch stage files (captions, EXIF, embeddings) are left: they are the table's inputs,
and a re-run batch drops tombstoned ids before it writes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from dam_core import layout
from dam_core.dam import Dam
from dam_core.images import FORMATS
from dam_core.index.manifest import read_head
from dam_core.index.write import remove_from_index
from dam_core.markers import find_upload
from dam_core.messages import is_asset_id
from dam_core.owners import release_all
from dam_core.store import ObjectStore
from dam_core.tombstones import read_tombstone, write_tombstone

log = logging.getLogger(__name__)

_EXTENSIONS = sorted({ext for _, ext in FORMATS.values()})


class DeletionFailed(RuntimeError):
    """A step after the tombstone failed: the ids are hidden; deleting them again finishes the job."""

    def __init__(self, step: str, error: BaseException, reports: list["DeleteReport"]):
        super().__init__(f"deleting failed at the {step} ({type(error).__name__})")
        self.step = step
        self.reports = reports  # what was done before the failure; deleted_at is set for every hidden id


@dataclass
class DeleteReport:
    """What one delete removed. `found` is False for an id with no trace at all (nothing was done)."""

    id: str
    found: bool
    deleted_at: datetime | None = None
    original: bool = False  # assets/{id}{ext}
    thumbnail: bool = False
    vector: bool = False
    marker: bool = False
    table_rows: int = 0
    index: bool = False  # a new index version drops the id (it was not dropped before)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["deleted_at"] = self.deleted_at.isoformat() if self.deleted_at else None
        return out


def delete_assets(dam: Dam, ids: Iterable[str], now: datetime | None = None) -> list[DeleteReport]:
    """Delete these assets everywhere (see the module docstring); one report per distinct id, in order.

    ValueError for a malformed id, before anything is touched. An id is found when any of its
    objects exists or it was deleted before (a second delete finishes a first one that failed part
    way); others are reported not found and left alone. Raises StoreError when the store fails,
    DeletionFailed when the table or the index does.
    """
    ids = list(dict.fromkeys(ids))
    bad = [i for i in ids if not isinstance(i, str) or not is_asset_id(i)]
    if bad:
        raise ValueError(f"not an asset id (32 lowercase hex characters): {bad[0]!r}")
    when = (now or datetime.now(UTC)).astimezone(UTC)
    store = dam.store
    reports = {i: DeleteReport(i, found=_seen(store, i)) for i in ids}
    found = [i for i in ids if reports[i].found]

    deleted_at: dict[str, datetime] = {}
    for asset_id in found:
        deleted_at[asset_id] = reports[asset_id].deleted_at = write_tombstone(store, asset_id, when)

    try:
        for asset_id in found:
            # One call per id, so the answer can say which id had rows.
            reports[asset_id].table_rows = int(dam.table.delete_rows([asset_id]))
    except Exception as err:
        log.exception("deleting table rows of %s failed", found)
        raise DeletionFailed("table", err, [reports[i] for i in ids]) from err

    for asset_id in found:
        _delete_objects(store, reports[asset_id])

    if found:
        try:
            # An id deleted before, with nothing of it found now, is not in the index any more:
            # only a new upload since (or a delete that failed before this step) moves its time.
            removed = _remove_from_index(store, deleted_at, {i for i in found if _had_data(reports[i])})
        except Exception as err:
            log.exception("removing %s from the search index failed", found)
            raise DeletionFailed("search index", err, [reports[i] for i in ids]) from err
        for asset_id in removed:
            reports[asset_id].index = True
    return [reports[i] for i in ids]


def _original_keys(store: ObjectStore, asset_id: str) -> list[str]:
    """Every key the original may have: the marker names it; without one, each supported extension."""
    keys = [layout.original_key(asset_id, ext) for ext in _EXTENSIONS]
    upload = find_upload(store, asset_id)
    if upload is not None and upload.r2_key not in keys:
        keys.insert(0, upload.r2_key)
    return keys


def _seen(store: ObjectStore, asset_id: str) -> bool:
    keys = [layout.upload_marker_key(asset_id), layout.thumbnail_key(asset_id), layout.vector_key(asset_id)]
    keys += [layout.original_key(asset_id, ext) for ext in _EXTENSIONS]
    return read_tombstone(store, asset_id) is not None or any(store.exists(k) for k in keys)


def _remove(store: ObjectStore, key: str) -> bool:
    if not store.exists(key):
        return False
    store.delete(key)
    return True


def _delete_objects(store: ObjectStore, report: DeleteReport) -> None:
    asset_id = report.id
    originals = _original_keys(store, asset_id)  # before the marker, which may name the key, goes
    report.original = any([_remove(store, k) for k in originals])
    report.thumbnail = _remove(store, layout.thumbnail_key(asset_id))
    report.vector = _remove(store, layout.vector_key(asset_id))
    release_all(store, asset_id)  # its table-row claims: a new upload of the bytes starts afresh
    report.marker = _remove(store, layout.upload_marker_key(asset_id))  # last: the bytes are new again


def _had_data(report: DeleteReport) -> bool:
    return bool(report.original or report.thumbnail or report.vector or report.marker or report.table_rows)


def _remove_from_index(store: ObjectStore, deleted: dict[str, datetime], had_data: set[str]) -> set[str]:
    """The ids that a new index version now drops (uploads up to their deletion); none without an index."""
    head = read_head(store)
    if head is None or not head.segments:
        return set()
    before = head.removed
    wanted = {i: when for i, when in deleted.items() if i not in before or i in had_data}
    if not wanted or remove_from_index(store, wanted) == 0:
        return set()
    return {i for i, when in wanted.items() if i not in before or before[i] < when}
