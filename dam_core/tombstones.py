"""Tombstones: `deleted/{id}.json` = {"id", "deleted_at"}, written first when an asset is deleted.

A tombstone hides the uploads of its id made at or before its `deleted_at`. Uploading the same
bytes again later is a new asset with a newer `uploaded_at`, which no tombstone hides, so nothing
ever has to clear one. The API, the batch (before and after its table commit) and the index all
judge with `is_deleted`, so a delete racing a running batch cannot bring the id back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from dam_core.layout import TOMBSTONES_PREFIX, tombstone_key
from dam_core.messages import is_asset_id
from dam_core.store import KeyNotFound, LocalStore, ObjectStore

Tombstones = Mapping[str, datetime]  # asset id -> deleted_at (UTC)


def write_tombstone(store: ObjectStore, asset_id: str, when: datetime) -> datetime:
    """Record that `asset_id` was deleted at `when` (overwrites an older one); returns `when` in UTC."""
    when = _utc(when)
    body = json.dumps({"id": asset_id, "deleted_at": when.isoformat()}).encode()
    store.put(tombstone_key(asset_id), body, content_type="application/json")
    return when


def parse_tombstone(body: bytes) -> tuple[str, datetime]:
    """(id, deleted_at) of a tombstone's bytes; ValueError when it is not one."""
    try:
        doc = json.loads(body)
        asset_id, when = doc["id"], datetime.fromisoformat(doc["deleted_at"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"not a tombstone: {err}") from None
    if not isinstance(asset_id, str) or not is_asset_id(asset_id):
        raise ValueError("not a tombstone: bad id")
    return asset_id, _utc(when)


def read_tombstone(store: ObjectStore, asset_id: str) -> datetime | None:
    """When `asset_id` was last deleted, or None (never, or an unreadable tombstone)."""
    try:
        return parse_tombstone(store.get(tombstone_key(asset_id)))[1]
    except (KeyNotFound, ValueError):
        return None


def read_tombstones(store: ObjectStore, ids: Iterable[str]) -> dict[str, datetime]:
    """The tombstones of these ids (one read each, in parallel on S3): proportional to `ids`, not history."""
    ids = sorted(set(ids))
    if isinstance(store, LocalStore) or len(ids) < 2:
        found = [read_tombstone(store, i) for i in ids]
    else:
        with ThreadPoolExecutor(min(8, len(ids))) as pool:
            found = list(pool.map(lambda i: read_tombstone(store, i), ids))
    return {i: when for i, when in zip(ids, found, strict=True) if when is not None}


def list_tombstones(store: ObjectStore) -> dict[str, datetime]:
    """Every tombstone in the store (one listing plus one read each)."""
    ids = [_id_of(key) for key in store.list(TOMBSTONES_PREFIX)]
    return read_tombstones(store, [i for i in ids if i is not None])


def is_deleted(tombstones: Tombstones, asset_id: str, uploaded_at: datetime | float | None) -> bool:
    """True when a tombstone of `asset_id` is at least as new as this upload.

    `uploaded_at` is the upload's time (aware datetime, or seconds since the epoch); an upload of
    unknown time under a tombstone counts as deleted.
    """
    deleted_at = tombstones.get(asset_id)
    if deleted_at is None:
        return False
    if uploaded_at is None:
        return True
    if isinstance(uploaded_at, datetime):
        return deleted_at >= _utc(uploaded_at)
    return deleted_at.timestamp() >= float(uploaded_at)


def _id_of(key: str) -> str | None:
    name = key[len(TOMBSTONES_PREFIX) :]
    asset_id = name[: -len(".json")] if name.endswith(".json") else ""
    return asset_id if is_asset_id(asset_id) else None


def _utc(when: datetime) -> datetime:
    # The table may hand back naive UTC timestamps; everything written here is aware.
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
