"""The read side: items, listing, text and similar search, from the index the pipeline publishes.

The API never scans the table per request: it serves a loaded index snapshot (swapped when a
new version appears), plus uploads that are accepted but not yet in it ("queued", from what this
process accepted, the manifests and a periodic scan of the upload markers), minus
deleted assets. One module per job: pending.py (the queued uploads), listing.py (items, pages,
cursors), search.py (text and similar search), deleted.py (what deletes hide until the index
drops them). Nothing here imports the write side (the upload service) or the routes: an
import-linter contract in pyproject.toml keeps it so.
"""

from __future__ import annotations

import builtins
from datetime import datetime

from dam_core.index.holder import IndexHolder
from dam_core.index.snapshot import Snapshot
from dam_core.messages import UploadMessage
from dam_core.settings import Settings
from dam_core.store import ObjectStore
from dam_ingest_api.catalog.deleted import DeletedAssets
from dam_ingest_api.catalog.listing import BadCursor, Listing
from dam_ingest_api.catalog.pending import PendingUploads
from dam_ingest_api.catalog.search import Search, SearchMode, SearchUnavailable
from dam_ingest_api.schemas import AssetDetail, AssetItem, AssetStatus, ScoredAsset

__all__ = ["BadCursor", "Catalog", "SearchUnavailable"]


class Catalog:
    """Everything the read routes need, shared by all requests of one app."""

    def __init__(self, settings: Settings, store: ObjectStore):
        self.index = IndexHolder(store, settings.dam_index_poll_seconds)
        self.deleted = DeletedAssets(store, self.index, settings.dam_index_poll_seconds)
        self.pending = PendingUploads(store, self.index, self.deleted, settings.dam_index_poll_seconds)
        self.listing = Listing(store, self.index, self.pending, self.deleted)
        self.search = Search(settings, self.index, self.deleted)

    def start(self) -> None:
        self.index.start()
        self.deleted.start()
        self.pending.start()  # in the background: the restart does not wait for the marker scan

    def stop(self) -> None:
        self.pending.stop()
        self.index.stop()
        self.deleted.stop()

    @property
    def snapshot(self) -> Snapshot | None:
        return self.index.snapshot

    def note_upload(self, upload: UploadMessage) -> None:
        """An upload this process just accepted: queued from now on, before its manifest exists."""
        self.pending.note(upload)

    def note_deleted(self, asset_id: str, deleted_at: datetime) -> None:
        """An asset this process just deleted: hidden from every read route from now on."""
        self.deleted.note(asset_id, deleted_at)

    def item(self, asset_id: str) -> AssetDetail | None:
        return self.listing.item(asset_id)

    def status(self, asset_id: str) -> AssetStatus | None:
        item = self.listing.item(asset_id)
        return item.status if item else None

    def original_key(self, asset_id: str) -> str | None:
        return self.listing.original_key(asset_id)

    def list(self, limit: int, cursor: str | None) -> tuple[list[AssetItem], str | None]:
        """Raises BadCursor for a cursor this API did not issue."""
        return self.listing.page(limit, cursor)

    # builtins.list below: in this class `list` names the method above.
    def similar(self, asset_id: str, k: int, min_score: float | None = None) -> builtins.list[ScoredAsset] | None:
        return self.search.similar(asset_id, k, min_score)

    def search_text(self, text: str, k: int, mode: SearchMode = "both") -> builtins.list[dict]:
        """Text search as plain JSON-ready dicts (what `dam search` prints); raises SearchUnavailable."""
        return [hit.model_dump(mode="json") for hit in self.search.text(text, k, mode)]
