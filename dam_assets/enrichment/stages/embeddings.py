"""Embeddings: a CLIP vector and zero-shot tags for every decoded image; `vectors/{id}.json` and the
batch's embeddings file for asset_metadata."""

# Keys come from dam_core.layout; a re-run of the batch overwrites its files.

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dam_core.imaging import Decoded
from dam_core.layout import embeddings_stage_key, vector_key
from dam_core.store import ObjectStore
from dam_models.tagging import tag_images

if TYPE_CHECKING:  # imports torch, which a run on served models never loads (dam_models/serving.py)
    from dam_models.embedder import Embedder


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


def embed_batch(
    decoded: list[Decoded], embedder: Embedder, labels: list[str], threshold: float, top_k: int, pixel_values=None
) -> Embeddings:
    """CLIP vectors, and zero-shot tags from the same vectors (an empty list: no label scored enough)."""
    ok = [d for d in decoded if d.image is not None]
    if not ok:
        vectors = np.zeros((0, embedder.dim), np.float32)
    elif pixel_values is not None:
        vectors = embedder.embed_pixels(pixel_values)
    else:
        vectors = embedder.embed_images([d.image for d in ok if d.image is not None])  # all of ok: narrows the type
    tags = tag_images(embedder, vectors, labels, threshold, top_k)
    by_id = {d.upload.id: (v, t) for d, v, t in zip(ok, vectors, tags, strict=True)}
    items = {}
    for d in decoded:
        # An image that could not be decoded carries its error instead of failing the batch.
        v, t = by_id.get(d.upload.id, (None, None))
        items[d.upload.id] = EmbeddingItem(None if v is None else v.tolist(), d.error, t)
    return Embeddings(embedder.model_id, embedder.version, embedder.dim, items)


def merge_embeddings(parts: list[Embeddings], model: str, version: str, dim: int) -> Embeddings:
    """The embeddings of a batch's chunks as one (items in chunk order)."""
    return Embeddings(model, version, dim, {k: v for part in parts for k, v in part.items.items()})


def write_embeddings(store: ObjectStore, batch: str, embeddings: Embeddings) -> str:
    """`vectors/{id}.json` for every embedded image, then the batch's embeddings file (its key returned)."""
    write_vectors(store, embeddings)
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


def write_vectors(store: ObjectStore, embeddings: Embeddings) -> None:
    """One JSON file per embedded image, in the seed's format."""
    for uid, e in embeddings.items.items():
        if e.embedding is not None:
            body = {"id": uid, "model": embeddings.model, "dim": len(e.embedding), "embedding": e.embedding}
            store.put(vector_key(uid), json.dumps(body).encode(), content_type="application/json")


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
