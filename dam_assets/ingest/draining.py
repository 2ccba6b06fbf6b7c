"""Turning queued messages into batch manifests: the sensor's work, free of Dagster."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from dam_core.manifests import is_batch_key, newest_batch, write_manifest
from dam_core.messages import BatchManifest, MessageError, UploadMessage
from dam_core.queue import UploadQueue
from dam_core.store import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class DrainReport:
    """What one drain did: the manifests written, messages taken, and why any were dead-lettered."""

    batches: list[BatchManifest] = field(default_factory=list)
    messages: int = 0
    dead_lettered: list[str] = field(default_factory=list)


def drain(
    queue: UploadQueue,
    store: ObjectStore,
    batch_size: int,
    budget_seconds: float,
    max_batches: int = 50,
    wait_seconds: float = 0.25,
    floor: str | None = None,
    first_wait_seconds: float = 0.0,
) -> DrainReport:
    """Drain up to max_batches batches within the time budget.

    An empty queue is waited on for up to first_wait_seconds (within the budget): the long poll
    that takes an upload when it arrives rather than at the sensor's next tick. A take that
    returns less than a whole batch ends the drain: the queue was quiet for wait_seconds.

    Order per batch: take messages, dead-letter the unparseable ones, write the manifest,
    then ack. A crash before the ack redelivers the messages (at-least-once); the manifest,
    once written, is the truth and is reconciled into a partition by the sensor (`batches_after`).
    `floor` is the sensor's cursor: every new key sorts after it, after every manifest
    already written and after each other, whatever the clock does, so none is listed past.
    """
    report = DrainReport()
    floor = floor if floor and is_batch_key(floor) else None
    floor_known = False
    deadline = time.monotonic() + budget_seconds
    with queue.consumer() as consumer:
        while len(report.batches) < max_batches and time.monotonic() < deadline:
            first_wait = min(first_wait_seconds, deadline - time.monotonic()) if not report.messages else 0.0
            deliveries = consumer.take(batch_size, wait_seconds, first_wait)
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
            if len(deliveries) < batch_size:
                break  # nothing arrived for wait_seconds: another take would only wait again
    return report
