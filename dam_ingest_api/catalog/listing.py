"""Items and pages: one asset by id, and the newest-first listing with its opaque cursor.

An id is `processed` or `error` from the index snapshot, else `queued` while its upload is
pending (see pending.py). A page merges the two, both kept in the same order. Snapshot rows of
deleted assets are left out (see deleted.py).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import json
import secrets
import threading
from functools import partial

from dam_core.images import FORMATS
from dam_core.index.holder import IndexHolder
from dam_core.index.snapshot import Snapshot
from dam_core.layout import CURSOR_SECRET_KEY, original_key
from dam_core.store import KeyNotFound, ObjectStore
from dam_ingest_api.catalog.deleted import DeletedAssets
from dam_ingest_api.catalog.pending import PendingUploads
from dam_ingest_api.schemas import AssetDetail, AssetItem

_EXT_BY_MIME = {mime: ext for mime, ext in FORMATS.values()}


class BadCursor(ValueError):
    """A listing cursor that this API did not produce."""


_NOT_OURS = "cursor not issued by this API: pass back the `next` value of a previous page"
_SIG_BYTES = 16  # a truncated HMAC-SHA256: 128 bits cannot be guessed


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class CursorKey:
    """The HMAC key that signs listing cursors: a random secret kept in the store (CURSOR_SECRET_KEY).

    The store, not the process: a cursor stays valid across restarts, across the workers of
    `dam api --workers N` and across replicas sharing the store. The first process that needs it
    creates it (a conditional create: racing processes end up with the same one). Read lazily, so a
    store that is down at start-up only makes the listing answer 503 (StoreError) until it is back.
    """

    def __init__(self, store: ObjectStore):
        self.store = store
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def get(self) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._load()
        return self._key

    def _load(self) -> bytes:
        try:
            key = self.store.get(CURSOR_SECRET_KEY)
        except KeyNotFound:
            self.store.create(CURSOR_SECRET_KEY, secrets.token_hex(32).encode())  # loses to an earlier writer
            key = self.store.get(CURSOR_SECRET_KEY)
        if len(key) < 32:  # damaged: start over (cursors issued before become invalid, 400)
            key = secrets.token_hex(32).encode()
            self.store.put(CURSOR_SECRET_KEY, key)
        return key


def _signature(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest()[:_SIG_BYTES])


def encode_cursor(ts: float, asset_id: str, key: bytes) -> str:
    """`{payload}.{signature}`: the position (base64 JSON) and its HMAC under ``key``."""
    payload = _b64(json.dumps([ts, asset_id]).encode())
    return f"{payload}.{_signature(key, payload)}"


def decode_cursor(cursor: str, key: bytes) -> tuple[float, str]:
    """The position of a cursor this API issued; BadCursor for anything else, a made-up one included."""
    payload, dot, sig = cursor.rpartition(".")
    if not dot or not hmac.compare_digest(sig.encode("utf-8", "surrogateescape"), _signature(key, payload).encode()):
        raise BadCursor(_NOT_OURS)
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        ts, asset_id = json.loads(raw)
        if (
            not isinstance(ts, (int, float))
            or isinstance(ts, bool)
            or not isinstance(asset_id, str)
            or len(asset_id) > 64
        ):
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


class Listing:
    """One item by id, and pages of items newest first."""

    def __init__(self, store: ObjectStore, index: IndexHolder, pending: PendingUploads, deleted: DeletedAssets):
        self.store = store
        self.cursor_key = CursorKey(store)
        self.index = index
        self.pending = pending
        self.deleted = deleted
        self._lock = threading.Lock()
        self._sorted: _SortedSnapshot | None = None

    def item(self, asset_id: str) -> AssetDetail | None:
        row = self._row(asset_id)
        if row is not None:
            return AssetDetail.indexed(row)
        upload = self.pending.find(asset_id)
        return AssetDetail.queued(upload) if upload is not None else None

    def _row(self, asset_id: str) -> dict | None:
        """The snapshot's row of this id, unless a delete hides it."""
        snap = self.index.snapshot
        if snap is None or asset_id in self.deleted.hidden_in(snap):
            return None
        return snap.get(asset_id)

    def original_key(self, asset_id: str) -> str | None:
        row = self._row(asset_id)
        if row is not None:
            ext = _EXT_BY_MIME.get(row.get("mime_type") or "")
            if ext:
                return original_key(asset_id, ext)
        upload = self.pending.find(asset_id)  # its marker may still be in the writer's queue
        return upload.r2_key if upload else None

    def page(self, limit: int, cursor: str | None) -> tuple[list[AssetItem], str | None]:
        """A page of items, newest first, and the cursor of the next page (None at the end)."""
        after = decode_cursor(cursor, self.cursor_key.get()) if cursor else None
        after_key = (-after[0], after[1]) if after else None
        pending = [(-u.uploaded_at.timestamp(), u.id, u) for u in self.pending.list()]
        if after_key:
            pending = [p for p in pending if (p[0], p[1]) > after_key]
        ss = self._sorted_snapshot()  # read after the queued ones: as new as theirs, or newer
        indexed: list[tuple[float, str, dict]] = []
        if ss is not None:
            hidden = self.deleted.hidden_in(ss.snap)
            # An index swap in between would list a batch's assets twice, queued and processed.
            pending = [p for p in pending if p[1] not in ss.snap.by_id or p[1] in hidden]
            i = ss.position_after(after_key) if after_key else 0
            found: list[int] = []
            while i < len(ss.ids) and len(found) < limit + 1:
                if ss.ids[i] not in hidden:
                    found.append(i)
                i += 1
            indexed = [(*ss.key(i), row) for i, row in zip(found, ss.snap.items.at(found), strict=True)]
        # Each entry builds its item when called: only the page's are built.
        merged = sorted(
            [(k, i, partial(AssetItem.queued, u)) for k, i, u in pending]
            + [(k, i, partial(AssetItem.indexed, r)) for k, i, r in indexed],
            key=lambda t: (t[0], t[1]),
        )
        page = merged[:limit]
        items = [build() for _, _, build in page]
        nxt = encode_cursor(-page[-1][0], page[-1][1], self.cursor_key.get()) if len(merged) > limit and page else None
        return items, nxt

    def _sorted_snapshot(self) -> _SortedSnapshot | None:
        snap = self.index.snapshot
        if snap is None:
            return None
        with self._lock:
            if self._sorted is None or self._sorted.snap is not snap:
                self._sorted = _SortedSnapshot(snap)
            return self._sorted
