"""Decoding a batch's originals once, near model size, for every image asset."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
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
    """Any Pillow mode (L, P, RGBA, LA, CMYK, I;16, I, F, 1, ...) to 8-bit RGB.

    Transparency is composited on white; 16-bit and 32-bit greyscale are scaled down to 8 bits
    rather than clipped (Pillow's own ``convert`` would saturate them to white).
    """
    if img.mode == "RGB":
        return img
    mode = img.mode
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint32) >> 8
        img = Image.fromarray(arr.astype(np.uint8), "L")
    elif mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if arr.size and arr.max() > 255:
            arr = np.clip(arr, 0, 65535) >> 8
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32))
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except (ValueError, OSError):  # e.g. LAB/HSV without a direct path
        return img.convert("RGBA").convert("RGB")


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
