"""A batch's captions, embeddings and EXIF between image_enrichment and asset_metadata: each writer beside its reader."""

# Keys come from dam_core.layout; a re-run of the batch overwrites both files.

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from dam_core.exif import ExifInfo
from dam_core.layout import captions_stage_key, embeddings_stage_key, exif_stage_key
from dam_core.store import KeyNotFound, ObjectStore


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


@dataclass(frozen=True)
class EmbeddingItem:
    embedding: list[float] | None
    error: str | None = None
    tags: list[str] | None = None


@dataclass(frozen=True)
class Embeddings:
    """A batch's image embeddings and tags by upload id, and the model that computed them."""

    model: str | None
    version: str | None
    dim: int
    items: dict[str, EmbeddingItem]


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


def write_embeddings(store: ObjectStore, batch: str, embeddings: Embeddings) -> str:
    key = embeddings_stage_key(batch)
    items = embeddings.items.values()
    table = pa.table(
        {
            "id": list(embeddings.items),
            "embedding": pa.array([e.embedding for e in items], type=pa.list_(pa.float32(), embeddings.dim)),
            "error": [e.error for e in items],
            "tags": pa.array([e.tags for e in items], type=pa.list_(pa.string())),
        }
    ).replace_schema_metadata({"model": embeddings.model or "", "version": embeddings.version or ""})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.put(key, buf.getvalue(), content_type="application/vnd.apache.parquet")
    return key


def read_embeddings(store: ObjectStore, batch: str) -> Embeddings:
    table = pq.read_table(io.BytesIO(store.get(embeddings_stage_key(batch))))
    meta = table.schema.metadata or {}
    items = {r["id"]: EmbeddingItem(r["embedding"], r["error"], r["tags"]) for r in table.to_pylist()}
    return Embeddings(
        model=meta.get(b"model", b"").decode() or None,
        version=meta.get(b"version", b"").decode() or None,
        dim=table.schema.field("embedding").type.list_size,
        items=items,
    )


def write_exif(store: ObjectStore, batch: str, exif: dict[str, ExifInfo]) -> str:
    """The EXIF columns by upload id (images that could not be decoded are left out)."""
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
