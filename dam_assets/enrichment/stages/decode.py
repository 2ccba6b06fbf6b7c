"""Decode: each chunk's originals fetched and decoded once, reduced to what the models and thumbnails
need, then turned into the selected models' input tensors; every later stage reads this one decode."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dam_core.imaging import Decoded, decode_batch
from dam_core.messages import UploadMessage
from dam_core.store import ObjectStore
from dam_models.serving import model_inputs

if TYPE_CHECKING:  # imports torch, which a run on served models never loads (dam_models/serving.py)
    from dam_models.captioner import Captioner
    from dam_models.embedder import Embedder

Decode = Callable[[ObjectStore, list[UploadMessage]], list[Decoded]]
Timed = Callable[[str, Callable[[], Any]], Any]  # runs the callable, adding its seconds to the named stage


def decoder(pixel_budget_size: int, max_pixels: int, max_image_side: int) -> Decode:
    """decode_batch under the pipeline's limits: an image over them becomes an error row, never a dead run."""
    return functools.partial(
        decode_batch, pixel_budget_size=pixel_budget_size, max_pixels=max_pixels, max_image_side=max_image_side
    )


@dataclass
class Prepared:
    """One chunk, decoded, with the models' inputs for its readable images."""

    decoded: list[Decoded]
    caption_pixels: Any = None
    embed_pixels: Any = None


def prepare_chunk(
    store: ObjectStore,
    chunk: list[UploadMessage],
    decode: Decode,
    captioner: Captioner | None,
    embedder: Embedder | None,
    timed: Timed,
) -> Prepared:
    """Decode `chunk` (an unreadable image carries its error), then make each selected model's input."""
    decoded = timed("decode", lambda: decode(store, chunk))
    images = [d.image for d in decoded if d.image is not None]
    prepared = Prepared(decoded)
    if images:
        prepared.caption_pixels, prepared.embed_pixels = timed(
            "prepare", lambda: model_inputs(captioner, embedder, images)
        )
    return prepared
