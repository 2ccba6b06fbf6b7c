"""EXIF: the columns read from each original during the decode (dam_core.exif), in the batch's EXIF
file for asset_metadata."""

# The key comes from dam_core.layout; a re-run of the batch overwrites it.

from __future__ import annotations

import json

from dam_core.exif import ExifInfo
from dam_core.imaging import Decoded
from dam_core.layout import exif_stage_key
from dam_core.store import KeyNotFound, ObjectStore


def exif_batch(decoded: list[Decoded]) -> dict[str, ExifInfo]:
    """The EXIF columns by upload id (images that could not be decoded are left out)."""
    return {d.upload.id: d.exif for d in decoded if d.exif is not None}


def write_exif(store: ObjectStore, batch: str, exif: dict[str, ExifInfo]) -> str:
    key = exif_stage_key(batch)
    body = {"items": {uid: e.to_json() for uid, e in exif.items()}}
    store.put(key, json.dumps(body).encode(), content_type="application/json")
    return key


def read_exif(store: ObjectStore, batch: str) -> dict[str, ExifInfo]:
    """Empty for a batch enriched before EXIF was read: its rows get null EXIF columns."""
    try:
        body = json.loads(store.get(exif_stage_key(batch)))
    except KeyNotFound:
        return {}
    return {uid: ExifInfo.from_json(e) for uid, e in body["items"].items()}
