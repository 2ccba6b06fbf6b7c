"""Captions, embeddings with tags, and thumbnails of one decoded batch: plain results, Dagster-free."""

# The batch is decoded once (dam_core.imaging.decode_batch) and its reduced images feed every step;
# an image that could not be decoded carries its error into each result instead of failing the batch.

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dam_assets.enrichment.renditions import thumbnail
from dam_assets.enrichment.stages import (
    CaptionItem,
    Captions,
    EmbeddingItem,
    Embeddings,
)
from dam_core.imaging import Decoded
from dam_models.tagging import tag_images

if TYPE_CHECKING:
    from dam_models.captioner import Captioner
    from dam_models.embedder import Embedder


def caption_batch(decoded: list[Decoded], captioner: Captioner, pixel_values=None) -> Captions:
    """Captions of the decoded images; `pixel_values`: their model input, prepared beforehand (pipeline)."""
    ok = [d for d in decoded if d.image is not None]
    if not ok:
        texts = []
    elif pixel_values is not None:
        texts = captioner.caption_pixels(pixel_values)
    else:
        texts = captioner.caption([d.image for d in ok])
    by_id = dict(zip((d.upload.id for d in ok), texts))
    items = {d.upload.id: CaptionItem(by_id.get(d.upload.id), d.error) for d in decoded}
    return Captions(captioner.model_id, captioner.version, items)


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
        vectors = embedder.embed_images([d.image for d in ok])
    tags = tag_images(embedder, vectors, labels, threshold, top_k)
    by_id = {d.upload.id: (v, t) for d, v, t in zip(ok, vectors, tags)}
    items = {}
    for d in decoded:
        v, t = by_id.get(d.upload.id, (None, None))
        items[d.upload.id] = EmbeddingItem(None if v is None else v.tolist(), d.error, t)
    return Embeddings(embedder.model_id, embedder.version, embedder.dim, items)


def thumbnail_batch(decoded: list[Decoded]) -> dict[str, bytes]:
    """WebP bytes by upload id, for every image that could be decoded."""
    return {d.upload.id: data for d in decoded if (data := thumbnail(d)) is not None}


def merge_captions(parts: list[Captions], model: str, version: str) -> Captions:
    """The captions of a batch's chunks as one (items in chunk order)."""
    return Captions(model, version, {k: v for part in parts for k, v in part.items.items()})


def merge_embeddings(parts: list[Embeddings], model: str, version: str, dim: int) -> Embeddings:
    """The embeddings of a batch's chunks as one (items in chunk order)."""
    return Embeddings(model, version, dim, {k: v for part in parts for k, v in part.items.items()})
