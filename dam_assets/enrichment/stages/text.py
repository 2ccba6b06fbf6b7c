"""Text in images (OCR): each readable image's lines, read from the shared decode, in the batch's text file.

An image OCR cannot read gets an error in this file only: its row keeps its caption and embedding,
with `ocr_text` null. No text is an empty string, not an error.
"""

# The key comes from dam_core.layout; a re-run of the batch overwrites it.

from __future__ import annotations

import json
from dataclasses import dataclass

from dam_core.imaging import Decoded
from dam_core.layout import text_stage_key
from dam_core.store import KeyNotFound, ObjectStore
from dam_models.ocr import ImageText, TextLine, TextReader


@dataclass
class TextItem:
    """One upload's text: the joined text (None when it could not be read), its lines, the reason if not."""

    text: str | None
    lines: list[TextLine]
    error: str | None = None

    def to_json(self) -> dict:
        return {"text": self.text, "lines": [line.to_json() for line in self.lines], "error": self.error}

    @classmethod
    def from_json(cls, d: dict) -> TextItem:
        return cls(d.get("text"), [TextLine.from_json(x) for x in d.get("lines", [])], d.get("error"))


def read_text_batch(reader: TextReader, decoded: list[Decoded]) -> dict[str, TextItem]:
    """The text of every image that was decoded (one that was not has its error in the row already)."""
    readable = [d for d in decoded if d.image is not None]
    results: list[ImageText] = reader.read_batch([d.image for d in readable if d.image is not None])
    return {
        d.upload.id: TextItem(None if r.error else r.text, r.lines, r.error)
        for d, r in zip(readable, results, strict=True)
    }


def write_text(store: ObjectStore, batch: str, items: dict[str, TextItem], version: str) -> str:
    key = text_stage_key(batch)
    body = {"version": version, "items": {uid: item.to_json() for uid, item in items.items()}}
    store.put(key, json.dumps(body).encode(), content_type="application/json")
    return key


def read_text(store: ObjectStore, batch: str) -> dict[str, TextItem]:
    """Empty for a batch whose text was never read (OCR off, or not yet): its rows get a null `ocr_text`."""
    try:
        body = json.loads(store.get(text_stage_key(batch)))
    except KeyNotFound:
        return {}
    return {uid: TextItem.from_json(x) for uid, x in body["items"].items()}
