"""Batch manifests: their keys, writing, reading and listing — one implementation for the
sensor that drains the queue and the API that shows what is still queued."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from dam_core.layout import MANIFEST_SUFFIX, MANIFESTS_PREFIX, manifest_key
from dam_core.messages import BatchManifest, UploadMessage
from dam_core.store import ObjectStore

BATCH_KEY_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def is_batch_key(key: str) -> bool:
    return bool(BATCH_KEY_RE.match(key))


def new_batch_key(now: datetime | None = None, floor: str | None = None) -> str:
    """A key that sorts by creation time, `20261124T101500Z-3fa2c1`, and after `floor`.

    The six hex digits are the microsecond (five digits, < 0xf4240) and one random digit,
    so keys made within the same second still sort in the order they were made. The sensor
    only lists manifests after its cursor, so a key must never sort before one already handed
    out: when the clock is behind `floor` (stepped back, or another host's clock was ahead),
    the key is `floor`'s time plus one microsecond instead of the clock's.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if floor is not None:
        now = max(now, batch_key_time(floor) + timedelta(microseconds=1))
    return f"{now:%Y%m%dT%H%M%S}Z-{now.microsecond:05x}{os.urandom(1)[0] % 16:x}"


def batch_key_time(key: str) -> datetime:
    """The time a batch key was made from (to the microsecond)."""
    if not is_batch_key(key):
        raise ValueError(f"not a batch key: {key!r}")
    return datetime.strptime(key[:15], "%Y%m%dT%H%M%S").replace(microsecond=int(key[17:22], 16), tzinfo=UTC)


def write_manifest(store: ObjectStore, uploads: list[UploadMessage], floor: str | None = None) -> BatchManifest:
    """Write a new batch manifest under a fresh key that sorts after `floor` (never overwriting another)."""
    while True:
        manifest = BatchManifest(batch=new_batch_key(floor=floor), created_at=datetime.now(UTC), uploads=uploads)
        if store.create(manifest_key(manifest.batch), manifest.to_json(), content_type="application/json"):
            return manifest
        floor = manifest.batch  # taken: the next key sorts after it


def read_manifest(store: ObjectStore, batch: str) -> BatchManifest:
    return BatchManifest.model_validate_json(store.get(manifest_key(batch)))


def batches_after(store: ObjectStore, after: str | None = None) -> Iterator[str]:
    """Batch keys of the manifests in the store that sort after batch `after`, oldest first.

    Objects under the prefix that are not named like a batch are skipped: they are no manifest.
    """
    start = manifest_key(after) if after else None
    for key in store.list(MANIFESTS_PREFIX, start_after=start):
        name = key[len(MANIFESTS_PREFIX) :]
        if name.endswith(MANIFEST_SUFFIX) and is_batch_key(batch := name[: -len(MANIFEST_SUFFIX)]):
            yield batch


def newest_batch(store: ObjectStore, after: str | None) -> str | None:
    """The newest manifest's key after `after`, else `after`."""
    newest = after
    for batch in batches_after(store, after):
        newest = batch  # the last one listed
    return newest
