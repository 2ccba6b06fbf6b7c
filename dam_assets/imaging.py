"""Decoding a batch's originals once, near model size, for every image asset."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, ImageOps

from dam_core.images import FORMATS
from dam_core.messages import UploadMessage
from dam_core.store import KeyNotFound, ObjectStore

# BLIP-base looks at 384 px; CLIP-B/32 at 224 px. JPEG draft mode decodes at the smallest
# 1/2^n scale still at least this large, which is most of the decode time saved.
DECODE_MIN_SIDE = 384


@dataclass
class Decoded:
    upload: UploadMessage
    image: Image.Image | None
    error: str | None = None


def decode(data: bytes, min_side: int = DECODE_MIN_SIDE, max_pixels: int = 100_000_000) -> Image.Image:
    """Bytes -> upright RGB image, decoded at reduced scale where the format allows."""
    with Image.open(io.BytesIO(data), formats=list(FORMATS)) as img:
        if img.width * img.height > max_pixels:
            raise ValueError(f"image is {img.width}x{img.height} pixels, over the limit")
        if img.format == "JPEG" and min_side:
            scale = min_side / min(img.size)
            if scale < 1:
                img.draft("RGB", (max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (L, P, RGBA, CMYK, I;16, ...) to RGB; transparency composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


def decode_batch(store: ObjectStore, uploads: list[UploadMessage], threads: int = 4) -> list[Decoded]:
    """Fetch and decode every original of a batch; a failure becomes an error, not an exception."""

    def one(u: UploadMessage) -> Decoded:
        try:
            data = store.get(u.r2_key)
        except KeyNotFound:
            return Decoded(u, None, f"original not found at {u.r2_key}")
        # Any other store error propagates: the run fails loudly and a retry can succeed.
        try:
            return Decoded(u, decode(data))
        except Exception as err:
            return Decoded(u, None, f"could not decode image: {type(err).__name__}: {err}"[:500])

    # Fetching is I/O and Pillow releases the GIL while decoding: a few threads overlap both.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, uploads))
