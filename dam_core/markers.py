"""Upload markers: `uploads/{id}.json`, written once an upload's message is confirmed.

A marker tells a confirmed duplicate from an earlier attempt whose message never got
confirmed, and lets the read side answer "queued" before the sensor drains the message.
"""

from __future__ import annotations

from collections.abc import Iterator

from dam_core.layout import MARKERS_PREFIX, asset_id_of_marker_key, upload_marker_key
from dam_core.messages import UploadMessage, is_asset_id
from dam_core.store import KeyNotFound, ObjectStore


def find_upload(store: ObjectStore, asset_id: str) -> UploadMessage | None:
    """The confirmed upload with this id, if any (its marker holds the message)."""
    try:
        return UploadMessage.from_json(store.get(upload_marker_key(asset_id)))
    except KeyNotFound:
        return None


def marker_ids(store: ObjectStore) -> Iterator[str]:
    """The id of every upload marker, in key order (one listing of `uploads/`; nothing is read)."""
    for key in store.list(MARKERS_PREFIX):
        asset_id = asset_id_of_marker_key(key)
        if asset_id is not None and is_asset_id(asset_id):
            yield asset_id


def write_marker(store: ObjectStore, message: UploadMessage) -> None:
    store.put(upload_marker_key(message.id), message.to_json(), content_type="application/json")
