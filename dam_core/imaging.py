"""Decoding a batch's originals once, reduced to what the models and thumbnails need."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dam_core.budget import Budget, OverBudget
from dam_core.exif import ExifInfo, exif_of
from dam_core.images import open_image
from dam_core.messages import UploadMessage
from dam_core.settings import Settings
from dam_core.store import KeyNotFound, ObjectStore

# BLIP-base looks at 384 px; CLIP-B/32 at 224 px; thumbnails are 256 px. JPEG draft mode decodes
# at the smallest 1/2^n scale still at least this large, which is most of the decode time saved;
# every other format is decoded whole and then box-reduced by an integer factor to the same floor.
DECODE_MIN_SIDE = 384
# Caps what a reduced image can cost (a 4:1 panorama keeps its 384 px short side); beyond it the
# short side gives way, which the processors' own resize hardly notices.
DECODE_MAX_SIDE = 1536
# Converting and reducing this many pixels at a time keeps the only full-size copy the decode itself.
_STRIP_PIXELS = 4_000_000
DEFAULT_PIXEL_BUDGET: int = Settings.model_fields["dam_decode_pixel_budget"].default
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass
class Decoded:
    upload: UploadMessage
    image: Image.Image | None  # reduced, upright; RGBA when the original has transparency, else RGB
    error: str | None = None
    exif: ExifInfo | None = None  # read from the original while it was open; None when it was not decoded


@functools.lru_cache(maxsize=None)
def pixel_budget(capacity: int) -> Budget:
    """The process-wide decode budget of this size: every batch decoding in the process shares it."""
    return Budget(capacity, "DAM_DECODE_PIXEL_BUDGET")


def reduce_factor(width: int, height: int, min_side: int = DECODE_MIN_SIDE, max_side: int = DECODE_MAX_SIDE) -> int:
    """The integer factor that keeps the short side at least ``min_side`` and the long side at most ``max_side``."""
    if not min_side:
        return 1
    factor = max(1, min(width, height) // min_side)
    if max_side:
        factor = max(factor, -(-max(width, height) // max_side))
    return factor


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (img.mode == "P" and "transparency" in img.info)


MAX_IMAGE_PIXELS: int = Settings.model_fields["dam_max_image_pixels"].default
MAX_IMAGE_SIDE: int = Settings.model_fields["dam_max_image_side"].default


def decode(
    data: bytes,
    min_side: int = DECODE_MIN_SIDE,
    max_pixels: int = MAX_IMAGE_PIXELS,
    budget: Budget | None = None,
    max_side: int = DECODE_MAX_SIDE,
    max_image_side: int = MAX_IMAGE_SIDE,
) -> Image.Image:
    """Bytes -> upright image reduced at open (RGBA if it has transparency, else RGB); ``min_side=0``: full size.

    The full-size decode exists only while ``budget`` holds its pixels; OverBudget when it never could.
    ``max_pixels`` and ``max_image_side`` are DAM_MAX_IMAGE_PIXELS and DAM_MAX_IMAGE_SIDE (``max_side``
    is the reduced copy's long side).
    """
    return decode_with_exif(data, min_side, max_pixels, budget, max_side, max_image_side)[0]


def decode_with_exif(
    data: bytes,
    min_side: int = DECODE_MIN_SIDE,
    max_pixels: int = MAX_IMAGE_PIXELS,
    budget: Budget | None = None,
    max_side: int = DECODE_MAX_SIDE,
    max_image_side: int = MAX_IMAGE_SIDE,
) -> tuple[Image.Image, ExifInfo]:
    """``decode``, and the original's EXIF columns, read from the one open of the bytes."""
    with open_image(io.BytesIO(data), max_pixels) as img:
        if img.width * img.height > max_pixels:
            raise ValueError(f"image is {img.width}x{img.height} pixels, over the limit of {max_pixels} pixels")
        if max(img.size) > max_image_side:
            raise ValueError(f"image is {img.width}x{img.height} pixels, a side over the limit of {max_image_side}")
        if img.format == "JPEG" and min_side:
            scale = min_side / min(img.size)
            if scale < 1:
                img.draft("RGB", (max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        cost = img.width * img.height
        if budget is not None and cost > budget.capacity:
            raise OverBudget(
                f"image is {img.width}x{img.height} ({cost:,} pixels to decode), more than "
                f"{budget.name}={budget.capacity:,} pixels may be decoded at once"
            )
        if budget is not None:
            budget.acquire(cost)
        try:
            img.load()
            # After load: PNG's eXIf chunk may follow the pixels, and reading it earlier would decode them.
            exif = exif_of(img)
            orientation = _orientation(img)
            small = _reduce(img, reduce_factor(img.width, img.height, min_side, max_side))
        finally:
            img.close()  # drop the full-size pixels before anyone else may take their budget
            if cost > _STRIP_PIXELS:
                return_freed_memory()
            if budget is not None:
                budget.release(cost)
    method = _TRANSPOSE.get(orientation)
    return (small.transpose(method) if method is not None else small), exif


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only; elsewhere there is nothing to call
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Give a freed full-size decode back to the OS.

    glibc keeps freed blocks in the arena of the thread that freed them, so without this every
    decode thread would keep its largest image's worth: RSS would grow to threads x image size
    whatever the budget says (measured: 1.1 GiB instead of 0.4 GiB for 8000x8000 PNGs on 4 threads).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block: the API measured the image unrotated too
        return 1


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """A full-size decode -> RGB or RGBA at 1/``factor``, converted and reduced a strip at a time.

    Strips start on multiples of ``factor``, so the result equals reducing the whole image, but
    no second full-size buffer (a converted or alpha-premultiplied copy) is ever allocated.
    """
    width, height = img.size
    convert: Callable[[Image.Image], Image.Image]
    if has_alpha(img):
        mode, convert = "RGBA", lambda strip: strip.convert("RGBA")
    else:
        # to_rgb scales 32-bit greyscale by the image's peak, which a strip alone does not know.
        peak = _peak(img) if img.mode in ("I", "F") else None
        mode, convert = "RGB", lambda strip: to_rgb(strip, peak=peak)
    rows = max(factor, _STRIP_PIXELS // max(1, width) // factor * factor)
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = convert(img.crop((0, top, width, min(height, top + rows))))
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return out


def _peak(img: Image.Image) -> float:
    rows = max(1, _STRIP_PIXELS // max(1, img.width))
    peak = float("-inf")
    for top in range(0, img.height, rows):
        arr = np.asarray(img.crop((0, top, img.width, min(img.height, top + rows))))
        if img.mode == "F":
            arr = np.nan_to_num(arr.astype(np.float32))
        if arr.size:
            peak = max(peak, float(arr.max()))
    return peak


def to_rgb(img: Image.Image, peak: float | None = None) -> Image.Image:
    """Any Pillow mode (L, P, RGBA, LA, CMYK, I;16, I, F, 1, ...) to 8-bit RGB.

    Transparency is composited on white; 16-bit and 32-bit greyscale are scaled down to 8 bits
    rather than clipped (Pillow's own ``convert`` would saturate them to white). ``peak``: the
    largest value of the whole image when ``img`` is one strip of it (32-bit modes only).
    """
    if img.mode == "RGB":
        return img
    mode = img.mode
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint32) >> 8
        img = Image.fromarray(arr.astype(np.uint8), "L")
    elif mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.max() if peak is None else peak) > 255:
            arr = np.clip(arr, 0, 65535) >> 8
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        floats = np.nan_to_num(np.asarray(img, dtype=np.float32))
        if floats.size and (floats.max() if peak is None else peak) <= 1.0:
            floats = floats * 255.0
        img = Image.fromarray(np.clip(floats, 0, 255).astype(np.uint8), "L")
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


def decode_batch(
    store: ObjectStore,
    uploads: list[UploadMessage],
    threads: int = 4,
    pixel_budget_size: int = DEFAULT_PIXEL_BUDGET,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_image_side: int = MAX_IMAGE_SIDE,
) -> list[Decoded]:
    """Fetch and decode every original of a batch, reduced; a failure becomes an error, not an exception.

    Only reduced images are returned; the threads' full-size decodes share the process-wide
    ``pixel_budget(pixel_budget_size)``, so the batch size does not change the peak. An image over
    ``max_pixels`` or ``max_image_side`` (the API's limits) becomes an error row.
    """
    budget = pixel_budget(pixel_budget_size)

    def one(u: UploadMessage) -> Decoded:
        try:
            data = store.get(u.r2_key)
        except KeyNotFound:
            return Decoded(u, None, f"original not found at {u.r2_key}")
        # Any other store error propagates: the run fails loudly and a retry can succeed.
        if (digest := hashlib.sha256(data).hexdigest()) != u.sha256:
            # A direct upload's digest is the store's check (x-amz-checksum-sha256); a store that
            # ignored it yields this error row, never a row describing other bytes.
            return Decoded(u, None, f"the stored bytes' SHA-256 is {digest}, not the upload's {u.sha256}")
        try:
            image, exif = decode_with_exif(data, max_pixels=max_pixels, budget=budget, max_image_side=max_image_side)
            return Decoded(u, image, exif=exif)
        except OverBudget as err:
            return Decoded(u, None, f"could not decode image: {err}")
        except Exception as err:
            return Decoded(u, None, f"could not decode image: {type(err).__name__}: {err}"[:500])

    # Fetching is I/O and Pillow releases the GIL while decoding: a few threads overlap both.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, uploads))
