"""Captions: a BLIP caption for every decoded image, and the batch's captions file for asset_metadata."""

# The captions file's key comes from dam_core.layout; a re-run of the batch overwrites it.

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dam_core.imaging import Decoded
from dam_core.layout import captions_stage_key
from dam_core.store import ObjectStore

if TYPE_CHECKING:  # imports torch, which a run on served models never loads (dam_models/serving.py)
    from dam_models.captioner import Captioner


@dataclass(frozen=True)
class CaptionItem:
    caption: str | None
    error: str | None = None


@dataclass(frozen=True)
class Captions:
    """A batch's captions by upload id, and the model that wrote them."""

    model: str | None
    version: str | None
    items: dict[str, CaptionItem]


def caption_batch(decoded: list[Decoded], captioner: Captioner, pixel_values=None) -> Captions:
    """Captions of the decoded images; `pixel_values`: their model input, prepared beforehand (stages.decode)."""
    ok = [d for d in decoded if d.image is not None]
    if not ok:
        texts = []
    elif pixel_values is not None:
        texts = captioner.caption_pixels(pixel_values)
    else:
        texts = captioner.caption([d.image for d in ok if d.image is not None])  # all of ok: narrows the type
    by_id = dict(zip((d.upload.id for d in ok), texts, strict=True))
    # An image that could not be decoded carries its error instead of failing the batch.
    items = {d.upload.id: CaptionItem(by_id.get(d.upload.id), d.error) for d in decoded}
    return Captions(captioner.model_id, captioner.version, items)


def merge_captions(parts: list[Captions], model: str, version: str) -> Captions:
    """The captions of a batch's chunks as one (items in chunk order)."""
    return Captions(model, version, {k: v for part in parts for k, v in part.items.items()})


def write_captions(store: ObjectStore, batch: str, captions: Captions) -> str:
    key = captions_stage_key(batch)
    items = {uid: {"caption": c.caption, "error": c.error} for uid, c in captions.items.items()}
    body = {"model": captions.model, "version": captions.version, "items": items}
    store.put(key, json.dumps(body).encode(), content_type="application/json")
    return key


def read_captions(store: ObjectStore, batch: str) -> Captions:
    body = json.loads(store.get(captions_stage_key(batch)))
    items = {uid: CaptionItem(c.get("caption"), c.get("error")) for uid, c in body["items"].items()}
    return Captions(body.get("model"), body.get("version"), items)
