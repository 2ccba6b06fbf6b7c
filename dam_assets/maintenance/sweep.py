"""Removing orphaned originals: objects under assets/ whose upload never got a confirmed message.

The API never deletes an original in the request path: two requests with the same bytes share
one object key, and the one that fails to publish cannot know whether the other was just
answered 202 for that very object. So a failed publish leaves its original behind, and this
sweep removes it later, once it is surely nobody's: older than the grace period, with no upload
marker, named by no batch manifest and no table row. Dagster-free; the maintenance sensor runs it.

The same sensor removes what direct-to-store uploads (S3/R2) left under incoming/: multipart
uploads never completed are aborted (their parts cost storage until then), and staging objects
and records older than DAM_DIRECT_ABANDON_SECONDS are deleted (`sweep_staging`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dam_core.layout import (
    INCOMING_PREFIX,
    MARKER_SUFFIX,
    MARKERS_PREFIX,
    ORIGINALS_PREFIX,
    asset_id_of_original,
    upload_marker_key,
)
from dam_core.manifests import batches_after, read_manifest
from dam_core.messages import is_asset_id
from dam_core.queue import UploadQueue
from dam_core.store import KeyNotFound, ObjectStore, S3Store, UploadNotFound

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    skipped: str | None = None  # why nothing was looked at
    old: int = 0  # originals older than the grace period
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=lambda: {"marker": 0, "manifest": 0, "table": 0, "rechecked": 0})
    out_of_time: bool = False

    def summary(self) -> str:
        if self.skipped:
            return f"sweep skipped: {self.skipped}"
        kept = ", ".join(f"{n} by {why}" for why, n in self.kept.items() if n) or "none"
        return (
            f"{self.old} original(s) older than the grace period; removed {len(self.deleted)} orphan(s); kept {kept}"
            + ("; stopped at the time budget, the rest next time" if self.out_of_time else "")
        )


def _asset_id(key: str) -> str | None:
    stem = asset_id_of_original(key)
    return stem if "/" not in key[len(ORIGINALS_PREFIX) :] and is_asset_id(stem) else None


def _manifest_keys(store: ObjectStore) -> set[str]:
    keys: set[str] = set()
    for batch in batches_after(store):
        try:
            manifest = read_manifest(store, batch)
        except KeyNotFound:
            continue
        keys.update(u.r2_key for u in manifest.uploads)
    return keys


def sweep_orphans(
    store: ObjectStore,
    *,
    grace_seconds: float,
    queue: UploadQueue | None = None,
    table_keys: Callable[[], Iterable[str]] | None = None,
    budget_seconds: float | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> SweepReport:
    """Delete originals older than `grace_seconds` that no marker, manifest or table row names.

    Skips everything while `queue` reports waiting messages (one of them may name an
    original whose marker write failed). Marker and age are checked again right before each
    delete, so an upload that re-wrote the object a moment ago (the API does, before
    publishing for an object it found without a marker) keeps it. Any store, queue or table
    error propagates: a sweep that cannot see everything deletes nothing more.
    """
    report = SweepReport()
    started = time.monotonic()
    if queue is not None:
        waiting = queue.depth()
        if waiting:
            report.skipped = f"{waiting} message(s) still waiting in the queue"
            return report
    grace = timedelta(seconds=grace_seconds)
    cutoff = now() - grace
    old = [
        (key, aid) for key, mtime in store.list_modified(ORIGINALS_PREFIX) if mtime < cutoff and (aid := _asset_id(key))
    ]
    report.old = len(old)
    if not old:
        return report
    marked = {k[len(MARKERS_PREFIX) :].removesuffix(MARKER_SUFFIX) for k in store.list(MARKERS_PREFIX)}
    candidates = [(key, aid) for key, aid in old if aid not in marked]
    report.kept["marker"] = len(old) - len(candidates)
    if not candidates:
        return report
    # Only now, with candidates in hand, the costlier references: every manifest, the table.
    in_manifests = _manifest_keys(store)
    in_table = set(table_keys()) if table_keys is not None else set()
    for key, aid in candidates:
        if key in in_manifests:
            report.kept["manifest"] += 1
            continue
        if key in in_table:
            report.kept["table"] += 1
            continue
        if budget_seconds is not None and time.monotonic() - started > budget_seconds:
            report.out_of_time = True
            break
        modified = store.modified(key)
        if store.exists(upload_marker_key(aid)) or modified is None or modified >= now() - grace:
            report.kept["rechecked"] += 1  # confirmed, deleted, or re-written since the listing
            continue
        store.delete(key)
        report.deleted.append(key)
        log.info("removed orphaned original %s (last written %s)", key, modified.isoformat())
    return report


@dataclass
class StagingReport:
    aborted: list[str] = field(default_factory=list)  # staging keys of multipart uploads aborted
    deleted: list[str] = field(default_factory=list)  # staging objects and records removed

    def summary(self) -> str:
        return (
            f"direct uploads never completed: aborted {len(self.aborted)} multipart upload(s), "
            f"removed {len(self.deleted)} staging object(s) and record(s)"
        )


def sweep_staging(
    store: ObjectStore, *, older_than_seconds: float, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> StagingReport:
    """Abort multipart uploads under incoming/ started before the age, and delete older staging objects.

    Safe for uploads still going: DAM_DIRECT_ABANDON_SECONDS is longer than a presigned URL lives,
    so nothing can arrive at a key this old. Only the S3 store has direct uploads.
    """
    report = StagingReport()
    if not isinstance(store, S3Store):
        return report
    cutoff = now() - timedelta(seconds=older_than_seconds)
    for upload in store.pending_uploads(INCOMING_PREFIX):
        if upload.initiated >= cutoff:
            continue
        try:
            store.abort_multipart(upload.key, upload.upload_id)
        except UploadNotFound:
            continue  # completed or aborted since the listing
        report.aborted.append(upload.key)
        log.info("aborted abandoned multipart upload at %s (started %s)", upload.key, upload.initiated.isoformat())
    for key, modified in store.list_modified(INCOMING_PREFIX):
        if modified < cutoff:
            store.delete(key)
            report.deleted.append(key)
    return report


__all__ = ["StagingReport", "SweepReport", "sweep_orphans", "sweep_staging"]
