"""The index manifest: the typed document of one published version, and how versions are published.

    index/versions/{seq}.json   the manifest of version `seq`, created exclusively
    index/CURRENT.json          a copy of the newest manifest, written last
    index/next/...              the same for the index of a new embedding model, built beside the
                                served one until it covers every row (write.py: model changes)

A manifest lists its segments, oldest first, the removed ids with their deletion times, the
newest batch in it (`watermark`) and the low watermark with the batches indexed after it
(`pending`, see watermark.py). Versions are published by compare-and-swap: `versions/{seq+1}.json`
is created exclusively (a concurrent writer that lost retries on the new head), so parallel batch
runs never lose an update. Segment files are written before the manifest and CURRENT.json last: a
crash in between leaves the previous version served, and its orphans are pruned later.

The base of the package: it imports nothing else from it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import overload

from pydantic import BaseModel, ConfigDict, Field

from dam_core.layout import (
    INDEX_NEXT_PREFIX,
    INDEX_PREFIX,
    INDEX_SEGMENTS_PREFIX,
    current_index_key,
    index_manifest_key,
    index_segment_prefix,
    index_versions_prefix,
)
from dam_core.store import KeyNotFound, ObjectStore

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3
SERVED = INDEX_PREFIX  # the chain the API serves
NEXT = INDEX_NEXT_PREFIX  # the chain of a new embedding model's index, while it is built
CHAINS = (SERVED, NEXT)
# Segment files younger than this are never pruned unreferenced: a writer may not have published them yet.
ORPHAN_GRACE = timedelta(minutes=30)
_SEGMENT_TIME = "%Y%m%dT%H%M%S%fZ"


def new_segment_name() -> str:
    """A fresh segment name: its creation time (which orphan pruning reads back), then random hex."""
    return f"{datetime.now(UTC):{_SEGMENT_TIME}}-{os.urandom(3).hex()}"


def segment_born(name: str) -> datetime | None:
    """When the segment `name` was created; None for a name that new_segment_name did not make."""
    try:
        return datetime.strptime(name.split("-", 1)[0], _SEGMENT_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


class SegmentEntry(BaseModel):
    """One immutable segment as a manifest lists it (its files are under `prefix`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    prefix: str
    rows: int
    vectors: int
    dim: int
    hnsw: bool = False  # an approximate graph (hnsw.usearch) beside the vectors
    replaces: tuple[str, ...] = ()  # batches this segment re-indexed: their rows in older segments are gone


class IndexManifest(BaseModel):
    """One index version: `versions/{seq}.json` and CURRENT.json hold this document."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    segments: tuple[SegmentEntry, ...]  # oldest first
    seq: int = 0
    version: str | None = None  # f"{seq:012d}"; None only before the first version
    model: str | None = None  # the embedding model of every vector in it
    watermark: str | None = None  # the newest batch in it
    low_watermark: str | None = None  # every manifest at or before it is in the index (watermark.py)
    pending: tuple[str, ...] = ()  # batches indexed after the low watermark, still to be passed
    removed: dict[str, datetime] = Field(default_factory=dict)  # deleted id -> deleted_at
    # Totals over the segments and the publishing time, set by publish.
    rows: int = 0
    vectors: int = 0
    dim: int = 0
    hnsw: bool = False
    built_at: datetime | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    # -- removed ids: a deletion hides the id's uploads made at or before it (dam_core.tombstones).

    def removed_with(self, deleted: Mapping[str, datetime]) -> dict[str, datetime]:
        """The removed ids with `deleted` added; an id in both keeps its newer deletion."""
        out = dict(self.removed)
        for asset_id, when in deleted.items():
            out[asset_id] = max(when, out.get(asset_id, when))
        return out

    def not_yet_removed(self, deleted: Mapping[str, datetime]) -> dict[str, datetime]:
        """The deletions in `deleted` this version does not hold: a new id, or a newer deletion of one."""
        return {i: when for i, when in deleted.items() if i not in self.removed or self.removed[i] < when}

    def removed_without(self, resolved: Mapping[str, datetime]) -> dict[str, datetime]:
        """The removed ids less those `resolved` (applied to every row, so no longer needed) at the same time."""
        return {i: when for i, when in self.removed.items() if resolved.get(i) != when}


class PublishConflict(RuntimeError):
    """Another writer kept winning the next version."""


def read_version(store: ObjectStore, seq: int, chain: str = SERVED) -> IndexManifest:
    """The manifest of version `seq` (KeyNotFound when it was never published or was pruned)."""
    return IndexManifest.model_validate_json(store.get(index_manifest_key(seq, chain)))


def read_head(store: ObjectStore, chain: str = SERVED) -> IndexManifest | None:
    """The newest published manifest: CURRENT.json, or a newer version a writer published after it."""
    try:
        current = IndexManifest.model_validate_json(store.get(current_index_key(chain)))
    except KeyNotFound:
        current = None
    newest = None
    start = index_manifest_key(current.seq if current else 0, chain)
    for key in store.list(index_versions_prefix(chain), start_after=start):
        newest = key  # the last one listed
    if newest is not None:
        try:
            return IndexManifest.model_validate_json(store.get(newest))
        except KeyNotFound:  # pruned meanwhile: a newer one exists, look again
            return read_head(store, chain)
    return current


def clear_chain(store: ObjectStore, chain: str) -> None:
    """Forget a chain's versions (never the served one's); segments go with the next prune unless served."""
    assert chain != SERVED
    store.delete(current_index_key(chain))
    for key in list(store.list(index_versions_prefix(chain))):
        store.delete(key)


@overload
def publish(
    store: ObjectStore, change: Callable[[IndexManifest], IndexManifest], attempts: int = 100, chain: str = SERVED
) -> IndexManifest: ...
@overload
def publish(
    store: ObjectStore,
    change: Callable[[IndexManifest], IndexManifest | None],
    attempts: int = 100,
    chain: str = SERVED,
) -> IndexManifest | None: ...
def publish(
    store: ObjectStore,
    change: Callable[[IndexManifest], IndexManifest | None],
    attempts: int = 100,
    chain: str = SERVED,
) -> IndexManifest | None:
    """Apply `change` to the newest manifest of `chain` and publish the result as its next version (compare-and-swap).

    `change` gets the head (an empty manifest before the first) and returns the new one, or None
    to publish nothing; it is called again on the new head when another writer won the race.
    """
    for _ in range(attempts):
        head = read_head(store, chain)
        new = change(head or IndexManifest(segments=()))
        if new is None:
            return None
        seq = (head.seq if head else 0) + 1
        segs = new.segments
        new = new.model_copy(
            update={
                "seq": seq,
                "version": f"{seq:012d}",
                "rows": sum(s.rows for s in segs),
                "vectors": sum(s.vectors for s in segs),
                "dim": max((s.dim for s in segs), default=0),
                "hnsw": any(s.hnsw for s in segs),
                "built_at": datetime.now(UTC),
            }
        )
        body = new.to_json()
        if store.create(index_manifest_key(seq, chain), body, content_type="application/json"):
            # The pointer is written last: readers only ever see complete versions. A slower
            # writer may put an older pointer after a newer one: read_head looks past it.
            store.put(current_index_key(chain), body, content_type="application/json")
            _prune(store, chain)
            return new
    raise PublishConflict(f"no index version published after {attempts} attempts")


def _prune(store: ObjectStore, chain: str) -> None:
    """Drop `chain`'s manifests older than its last KEEP_VERSIONS, and the segments that no kept
    manifest of any chain lists (a new model's index shares the segment folder)."""
    try:
        kept: list[str] = []
        for c in CHAINS:
            manifests = sorted(store.list(index_versions_prefix(c)))
            kept += manifests[-KEEP_VERSIONS:]
            if c == chain:
                for key in manifests[:-KEEP_VERSIONS]:
                    store.delete(key)
        referenced = {s.prefix for key in kept for s in IndexManifest.model_validate_json(store.get(key)).segments}
        now = datetime.now(UTC)
        for key in list(store.list(INDEX_SEGMENTS_PREFIX)):
            name = key[len(INDEX_SEGMENTS_PREFIX) :].split("/", 1)[0]
            born = segment_born(name)
            if index_segment_prefix(name) in referenced or born is None or now - born < ORPHAN_GRACE:
                continue
            store.delete(key)
    except Exception as err:  # a reader may still hold a file, or a writer raced us: the next publish retries
        log.debug("index prune incomplete: %s", err)
