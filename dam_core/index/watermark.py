"""The index's low watermark: how far the batch manifests are known to be in the index.

The low watermark is the newest manifest key K such that every manifest at or before K has its
batch in the index (or holds no uploads). Manifests after it may still hold uploads that are not
in the snapshot: the API lists those as queued. A newer batch indexed before an older one
therefore never hides the older one's uploads; it waits in the manifest's `pending` until the
watermark passes it.
"""

from __future__ import annotations

from typing import NamedTuple

from dam_core.layout import manifest_key
from dam_core.manifests import batches_after
from dam_core.messages import BatchManifest
from dam_core.store import KeyNotFound, ObjectStore


class LowWatermark(NamedTuple):
    low: str | None  # every manifest at or before it is indexed (None: none is known to be)
    pending: list[str]  # indexed batches after it, still to be passed, sorted


def advance_low_watermark(store: ObjectStore, previous: str | None, indexed: set[str]) -> LowWatermark:
    """Move the low watermark forward from `previous` over manifests, oldest first, while their
    batch is in `indexed` (the batches indexed since, with the previous `pending`)."""
    low = previous
    for batch in batches_after(store, after=previous):
        if batch in indexed:
            low = batch
        elif _holds_uploads(store, batch):
            break
        # Else a stray, unreadable or empty object: it holds nothing queued, so it does not stop
        # the watermark (stopping would make the API re-list everything after it forever), but
        # it never becomes the watermark either: a stray name sorting after every batch key
        # would hide all later batches.
    return LowWatermark(low, sorted(b for b in indexed if low is None or b > low))


def _holds_uploads(store: ObjectStore, batch: str) -> bool:
    try:
        return bool(BatchManifest.model_validate_json(store.get(manifest_key(batch))).uploads)
    except (KeyNotFound, ValueError):
        return False
