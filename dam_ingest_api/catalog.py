"""The read side: items, listing, text and similar search, from the index the pipeline publishes.

The API never scans the table per request: it serves a loaded index snapshot (swapped when a
new version appears), plus uploads that are accepted but not yet in the table ("queued"),
found through their upload marker or the batch manifests after the snapshot's low watermark
(every manifest at or before it has its batch in the snapshot; see dam_core.index).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import threading
import time
from datetime import datetime

import numpy as np

from dam_core.images import FORMATS
from dam_core.index import IndexHolder, Snapshot
from dam_core.layout import manifest_key, original_key
from dam_core.manifests import batches_after
from dam_core.markers import find_upload
from dam_core.messages import BatchManifest, UploadMessage
from dam_core.settings import Settings
from dam_core.store import KeyNotFound, ObjectStore

PENDING_TTL_SECONDS = 2.0
RECENT_MAX = 10_000
_EXT_BY_MIME = {mime: ext for mime, ext in FORMATS.values()}


class BadCursor(ValueError):
    """A listing cursor that this API did not produce."""


class SearchUnavailable(RuntimeError):
    """The text encoder could not be loaded."""


def _iso(value) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def item_view(row: dict, status: str) -> dict:
    """The public shape of one asset."""
    asset_id = row["id"]
    return {
        "id": asset_id,
        "filename": row.get("filename"),
        "caption": row.get("caption"),
        "tags": list(row.get("tags") or []),
        "mime_type": row.get("mime_type"),
        "width": row.get("width"),
        "height": row.get("height"),
        "status": status,
        "error": row.get("error"),
        "uploaded_at": _iso(row.get("uploaded_at")),
        "processed_at": _iso(row.get("processed_at")),
        "thumbnail_url": f"/assets/{asset_id}/thumbnail",
        "original_url": f"/assets/{asset_id}/original",
    }


def _indexed_view(row: dict) -> dict:
    return item_view(row, "error" if row.get("error") else "processed")


def _queued_view(msg: UploadMessage) -> dict:
    return item_view({**msg.model_dump(), "caption": None, "tags": [], "error": None, "processed_at": None}, "queued")


def encode_cursor(ts: float, asset_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([ts, asset_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, asset_id = json.loads(raw)
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not isinstance(asset_id, str) or len(asset_id) > 64:
            raise ValueError
        ts = float(ts)  # a 320-digit integer overflows here
        if ts != ts or ts in (float("inf"), float("-inf")):  # JSON "NaN"/"Infinity" would break the ordering
            raise ValueError
        return ts, asset_id
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("malformed cursor: pass back the `next` value of a previous page") from None


class _SortedSnapshot:
    """Listing order of a snapshot's items: the index stores them newest first (by uploaded_at, id)."""

    def __init__(self, snap: Snapshot):
        self.snap = snap
        self.neg_ts = -snap.items.uploaded_ts
        self.ids = snap.items.ids

    def key(self, i: int) -> tuple[float, str]:
        return (float(self.neg_ts[i]), self.ids[i])

    def position_after(self, after_key: tuple[float, str]) -> int:
        return bisect.bisect_right(range(len(self.ids)), after_key, key=self.key)


class Catalog:
    """Everything the read routes need, shared by all requests of one app."""

    def __init__(self, settings: Settings, store: ObjectStore):
        self.settings = settings
        self.store = store
        self.index = IndexHolder(store, settings.dam_index_poll_seconds)
        self._sorted: _SortedSnapshot | None = None
        self._pending: tuple[float, str | None, list[UploadMessage]] | None = None
        # Parsed manifests after the current low watermark only (see pending): bounded by the
        # batches not indexed yet, never by the history.
        self._manifests: dict[str, BatchManifest] = {}
        self._lock = threading.Lock()
        self._embedder = None
        # Uploads this process accepted, shown as queued before the sensor writes their manifest.
        self._recent: dict[str, UploadMessage] = {}

    def start(self) -> None:
        self.index.start()

    def stop(self) -> None:
        self.index.stop()

    # ------------------------------------------------------------------ snapshot

    @property
    def snapshot(self) -> Snapshot | None:
        return self.index.snapshot

    def _sorted_snapshot(self) -> _SortedSnapshot | None:
        snap = self.snapshot
        if snap is None:
            return None
        with self._lock:
            if self._sorted is None or self._sorted.snap is not snap:
                self._sorted = _SortedSnapshot(snap)
            return self._sorted

    def note_upload(self, body: dict) -> None:
        """Remember an upload this process just accepted (bounded; pruned once indexed)."""
        msg = UploadMessage.model_validate(body)
        with self._lock:
            self._recent[msg.id] = msg
            if len(self._recent) > RECENT_MAX:
                for key in list(self._recent)[: len(self._recent) - RECENT_MAX]:
                    del self._recent[key]
            self._pending = None

    def pending(self) -> list[UploadMessage]:
        """Uploads not in the snapshot, from manifests after its low watermark: queued, newest first."""
        snap = self.snapshot
        version = snap.version if snap else None
        now = time.monotonic()
        with self._lock:
            if self._pending and self._pending[1] == version and now - self._pending[0] < PENDING_TTL_SECONDS:
                return self._pending[2]
            if snap is not None:
                for key in [k for k in self._recent if k in snap.by_id]:
                    del self._recent[key]
            out: dict[str, UploadMessage] = dict(self._recent)
            cached = self._manifests
        # Not the newest indexed batch: an older batch whose run has not finished (or waits for
        # a retry) sorts before it, and its uploads are still queued.
        low = snap.low_watermark if snap else None
        manifests: dict[str, BatchManifest] = {}
        for batch in batches_after(self.store, after=low):
            manifest = cached.get(batch)  # manifests never change once written
            if manifest is None:
                try:
                    manifest = BatchManifest.model_validate_json(self.store.get(manifest_key(batch)))
                except (KeyNotFound, ValueError):
                    continue
            manifests[batch] = manifest
            for u in manifest.uploads:
                if snap is None or u.id not in snap.by_id:
                    out[u.id] = u
        pending = sorted(out.values(), key=lambda u: (-u.uploaded_at.timestamp(), u.id))
        with self._lock:
            # Replaced, not merged: manifests the low watermark has passed are dropped here.
            self._manifests = manifests
            self._pending = (now, version, pending)
        return pending

    # ------------------------------------------------------------------ items

    def item(self, asset_id: str) -> dict | None:
        snap = self.snapshot
        row = snap.get(asset_id) if snap else None
        if row is not None:
            return _indexed_view(row)
        msg = find_upload(self.store, asset_id)
        if msg is not None:
            return _queued_view(msg)
        for u in self.pending():
            if u.id == asset_id:
                return _queued_view(u)
        return None

    def status(self, asset_id: str) -> str | None:
        item = self.item(asset_id)
        return item["status"] if item else None

    def original_key(self, asset_id: str) -> str | None:
        snap = self.snapshot
        row = snap.get(asset_id) if snap else None
        if row is not None:
            ext = _EXT_BY_MIME.get(row.get("mime_type") or "")
            if ext:
                return original_key(asset_id, ext)
        msg = find_upload(self.store, asset_id)
        return msg.r2_key if msg else None

    def list(self, limit: int, cursor: str | None) -> tuple[list[dict], str | None]:
        """A page of items, newest first, and the cursor of the next page (None at the end)."""
        after = decode_cursor(cursor) if cursor else None
        after_key = (-after[0], after[1]) if after else None
        pending = [(-u.uploaded_at.timestamp(), u.id, u) for u in self.pending()]
        if after_key:
            pending = [p for p in pending if (p[0], p[1]) > after_key]
        ss = self._sorted_snapshot()
        indexed: list[tuple[float, str, dict]] = []
        if ss is not None:
            start = ss.position_after(after_key) if after_key else 0
            for i in range(start, min(start + limit + 1, len(ss.ids))):
                indexed.append((*ss.key(i), ss.snap.items[i]))
        merged = sorted(
            [(k, i, ("q", u)) for k, i, u in pending] + [(k, i, ("x", r)) for k, i, r in indexed],
            key=lambda t: (t[0], t[1]),
        )
        page = merged[:limit]
        items = [_queued_view(v) if kind == "q" else _indexed_view(v) for _, _, (kind, v) in page]
        nxt = encode_cursor(-page[-1][0], page[-1][1]) if len(merged) > limit and page else None
        return items, nxt

    # ------------------------------------------------------------------ search

    def _text_embedder(self, model: str):
        with self._lock:
            if self._embedder is None or self._embedder.model_id != model:
                try:
                    import torch

                    from dam_models.embedder import get_embedder

                    # A query is a few tokens: one intra-op thread per request is fastest, and
                    # OpenMP threads spinning against the other requests' threads (and the
                    # broker, and the pipeline on a small machine) made it 40x slower.
                    torch.set_num_threads(1)

                    self._embedder = get_embedder(model, device=self.settings.dam_device, dtype=self.settings.dam_dtype)
                except Exception as err:
                    raise SearchUnavailable(f"the text encoder {model!r} could not be loaded: {type(err).__name__}") from None
            return self._embedder

    def text_vector(self, text: str) -> np.ndarray | None:
        snap = self.snapshot
        if snap is None or len(snap.vectors) == 0:
            return None
        return self._text_embedder(snap.model or self.settings.dam_embedding_model).embed_texts([text])[0]

    def search_text(self, text: str, k: int) -> list[dict]:
        q = self.text_vector(text)
        if q is None:
            return []
        return [{**_indexed_view(row), "score": round(score, 6)} for row, score in self.snapshot.search(q, k)]

    def similar(self, asset_id: str, k: int, min_score: float | None = None) -> list[dict] | None:
        """Items most like this one (itself left out); None when it has no vector (yet)."""
        snap = self.snapshot
        vec = snap.vector_of(asset_id) if snap else None
        if vec is None:
            return None
        hits = snap.search(vec, k, exclude=asset_id)
        if min_score is not None:
            hits = [(r, s) for r, s in hits if s >= min_score]
        return [{**_indexed_view(row), "score": round(score, 6)} for row, score in hits]
