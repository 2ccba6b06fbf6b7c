"""Turning queued messages into batch manifests: the sensor's work, free of Dagster."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dam_core.messages import BatchManifest, MessageError, UploadMessage, manifest_key
from dam_core.queue import UploadQueue
from dam_core.store import ObjectStore
from dam_assets.partitions import is_batch_key, new_batch_key

log = logging.getLogger(__name__)

MANIFEST_PREFIX = "batches/"


@dataclass
class DrainReport:
    batches: list[BatchManifest] = field(default_factory=list)
    messages: int = 0
    dead_lettered: list[str] = field(default_factory=list)


def write_manifest(store: ObjectStore, uploads: list[UploadMessage], floor: str | None = None) -> BatchManifest:
    """Write a new batch manifest under a fresh key that sorts after `floor` (never overwriting another)."""
    while True:
        manifest = BatchManifest(batch=new_batch_key(floor=floor), created_at=datetime.now(UTC), uploads=uploads)
        if store.create(manifest_key(manifest.batch), manifest.to_json(), content_type="application/json"):
            return manifest
        floor = manifest.batch  # taken: the next key sorts after it


def drain(
    queue: UploadQueue,
    store: ObjectStore,
    batch_size: int,
    budget_seconds: float,
    max_batches: int = 50,
    wait_seconds: float = 0.25,
    floor: str | None = None,
) -> DrainReport:
    """Drain up to max_batches batches within the time budget.

    Order per batch: take messages, dead-letter the unparseable ones, write the manifest,
    then ack. A crash before the ack redelivers the messages (at-least-once); the manifest,
    once written, is the truth and is reconciled into a partition by `pending_batches`.
    `floor` is the sensor's cursor: every new key sorts after it, after every manifest
    already written and after each other, whatever the clock does, so none is listed past.
    """
    report = DrainReport()
    floor = floor if floor and is_batch_key(floor) else None
    floor_known = False
    deadline = time.monotonic() + budget_seconds
    with queue.consumer() as consumer:
        while len(report.batches) < max_batches and time.monotonic() < deadline:
            deliveries = consumer.take(batch_size, wait_seconds)
            if not deliveries:
                break
            uploads: dict[str, UploadMessage] = {}
            good = []
            for d in deliveries:
                try:
                    msg = UploadMessage.from_json(d.body)
                except MessageError as err:
                    reason = f"unparseable upload message: {err}"
                    log.warning("dead-lettering message: %s", reason)
                    consumer.dead_letter(d, reason)
                    report.dead_lettered.append(reason)
                    continue
                uploads.setdefault(msg.id, msg)  # the same id twice in one batch is one row
                good.append(d)
            if uploads:
                if not floor_known:  # listed once, and only when there is something to write
                    floor = newest_batch(store, floor)
                    floor_known = True
                manifest = write_manifest(store, list(uploads.values()), floor)
                report.batches.append(manifest)
                floor = manifest.batch
            consumer.ack(good)
            report.messages += len(deliveries)
    return report


def pending_batches(store: ObjectStore, after: str | None) -> list[str]:
    """Batch keys whose manifests sort after `after` (the sensor's cursor), oldest first."""
    start = manifest_key(after) if after else None
    keys = []
    for key in store.list(MANIFEST_PREFIX, start_after=start):
        name = key[len(MANIFEST_PREFIX):]
        if name.endswith(".json") and is_batch_key(name[: -len(".json")]):
            keys.append(name[: -len(".json")])
    return keys


def newest_batch(store: ObjectStore, after: str | None) -> str | None:
    """The newest manifest's key after `after`, else `after`."""
    pending = pending_batches(store, after)
    return pending[-1] if pending else after


def read_manifest(store: ObjectStore, batch: str) -> BatchManifest:
    return BatchManifest.model_validate_json(store.get(manifest_key(batch)))
