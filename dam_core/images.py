"""Recognise and check an image from its bytes alone (never its name or Content-Type)."""

from __future__ import annotations

import dataclasses
import functools
import io
import re
import warnings
from dataclasses import dataclass
from typing import IO

import pillow_heif
from PIL import Image, ImageFile, UnidentifiedImageError

# HEIC/HEIF through libheif (pillow-heif), registered once for every process that reads user
# images (the API's validation and the batch decode both import this module). Thumbnails,
# depth maps and auxiliary images are never read: only the primary image is decoded.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# Only these decoders ever see user bytes: a smaller attack surface than every Pillow plugin.
# Pillow tries them in this order: AVIF before HEIF, so an AV1 file whose major brand is the
# generic `mif1` is opened (and stored) as AVIF; Pillow's AVIF plugin passes on HEVC ones.
FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", ".jpg"),
    "PNG": ("image/png", ".png"),
    "WEBP": ("image/webp", ".webp"),
    "GIF": ("image/gif", ".gif"),
    "TIFF": ("image/tiff", ".tiff"),
    "BMP": ("image/bmp", ".bmp"),
    "AVIF": ("image/avif", ".avif"),
    "HEIF": ("image/heic", ".heic"),
}
UNSUPPORTED = "not a supported image: expected JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC/HEIF or AVIF bytes"


def ext_of_type(mime: str | None) -> str | None:
    """The originals' file suffix for a supported media type (`image/jpeg` -> `.jpg`); None otherwise."""
    wanted = (mime or "").split(";", 1)[0].strip().lower()
    return next((ext for m, ext in FORMATS.values() if m == wanted), None)


def sniff_type(head: bytes) -> str | None:
    """The media type of a supported image from its first bytes (64 KiB is plenty); None when not one."""
    try:
        with Image.open(io.BytesIO(head), formats=list(FORMATS)) as img:
            return FORMATS[img.format][0] if img.format else None
    except Exception:  # not an image, or a header longer than `head`: the server's check decides
        return None


@functools.cache
def file_suffixes() -> frozenset[str]:
    """Every file-name suffix Pillow registers for FORMATS (.jpg, .jpeg, .jpe, .tif, ...), lower case.

    Only for picking image files out of folders: the type of an upload still comes from its bytes.
    """
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS)


# The signatures of the formats above: bytes that start like one of them but that Pillow cannot
# identify are a damaged image (422), not a file of the wrong kind (415).
_MAGIC: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG SOI + first marker
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"II*\x00"),  # TIFF, little endian
    (0, b"MM\x00*"),  # TIFF, big endian
    (8, b"WEBP"),  # after "RIFF" and the size
)
# HEIF and AVIF are ISO-BMFF files: a leading `ftyp` box names a major brand and compatible brands.
_FTYP_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})
_FTYP_MAX = 64  # bytes of the ftyp box looked at: more brands than any real file lists
_BMP_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)  # "BM" alone is too weak: text can start with it
_ORIENTATION_TAG = 0x0112
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(ValueError):
    """Bytes that are not an acceptable image; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mime_type: str
    ext: str
    width: int  # after EXIF rotation
    height: int
    frames: int


def _has_magic(fp: IO[bytes]) -> bool:
    fp.seek(0)
    head = fp.read(_FTYP_MAX)
    if head.startswith(b"RIFF") and head[8:12] != b"WEBP":
        return False
    if head.startswith(b"BM") and len(head) >= 18:
        return int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES
    return _is_heif_family(head) or any(head[at : at + len(sig)] == sig for at, sig in _MAGIC)


def _is_heif_family(head: bytes) -> bool:
    """An ISO-BMFF `ftyp` box whose major or a compatible brand is HEIF's or AVIF's."""
    if head[4:8] != b"ftyp":
        return False
    size = min(int.from_bytes(head[:4], "big"), len(head))
    # major brand at 8, minor version at 12, compatible brands from 16 to the end of the box
    brands = [head[8:12]] + [head[i : i + 4] for i in range(16, size - 3, 4)]
    return any(b in _FTYP_BRANDS for b in brands)


def open_image(fp: IO[bytes], max_pixels: int) -> Image.Image:
    """Image.open restricted to FORMATS, with Pillow's own decompression-bomb check at ``max_pixels``.

    Pillow checks sizes against the global Image.MAX_IMAGE_PIXELS (89,478,485 unless set) at open
    and again for GIF frames: left alone, it, not DAM_MAX_IMAGE_PIXELS, was the effective limit.
    Every process passes its one setting, so the global only ever takes that value.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    fp.seek(0)
    return Image.open(fp, formats=list(FORMATS))


_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")


def _bomb(err: Exception, max_pixels: int) -> ImageRejected:
    found = _BOMB_SIZE.search(str(err))
    declared = f"{int(found.group(1)):,} pixels" if found else "more pixels"
    return ImageRejected(
        422,
        f"decompression bomb: the image declares {declared}, over the limit of {max_pixels:,} pixels "
        "(DAM_MAX_IMAGE_PIXELS)",
    )


# JPEG frame headers: huffman-coded (baseline, extended, progressive, lossless) and the arithmetic
# and hierarchical kinds, for which no cheap lower bound on the data size holds.
_SOF_HUFFMAN = {0xC0: 8, 0xC1: 8, 0xC2: 8, 0xC3: 1}  # marker -> samples per side of a data unit
_SOF_OTHER = {0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def jpeg_min_bytes(fp: IO[bytes]) -> int | None:
    """The fewest bytes a huffman-coded JPEG of its declared size can hold; None when unknown.

    Every data unit (an 8x8 block; a sample for lossless JPEG) of a component's first scan codes at
    least one huffman symbol of at least one bit, so a file has at least one bit per data unit of
    its smallest component. A 1.4 KB file whose header declares 9000x9000 (at least 158 KB) is a
    truncated one; libjpeg fills the missing part with grey and raises nothing, so Pillow cannot tell.
    """
    fp.seek(2)
    for _ in range(10_000):  # markers before the frame header; real files have a few dozen
        head = fp.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # fill byte before a marker
            fp.seek(-3, 1)
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers: no length
            fp.seek(-2, 1)
            continue
        length = int.from_bytes(head[2:4], "big")
        if marker in _SOF_OTHER or marker == 0xDA:  # no bound, or a scan before any frame header
            return None
        if marker in _SOF_HUFFMAN:
            seg = fp.read(max(0, length - 2))
            if len(seg) < 6:
                return None
            height, width, ncomp = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5]
            comps = [seg[6 + 3 * i + 1] for i in range(ncomp) if 6 + 3 * i + 1 < len(seg)]
            sampling = [(c >> 4, c & 0x0F) for c in comps if c >> 4 and c & 0x0F]
            if not height or not width or not sampling:
                return None  # height from a DNL marker later, or a broken header Pillow judges itself
            hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
            unit = _SOF_HUFFMAN[marker]
            units = min(
                _ceil_div(_ceil_div(width * h, hmax), unit) * _ceil_div(_ceil_div(height * v, vmax), unit)
                for h, v in sampling
            )
            return _ceil_div(units, 8)
        fp.seek(length - 2, 1)
    return None


def inspect_header(fp: IO[bytes], max_pixels: int, max_side: int | None = None, size: int | None = None) -> ImageInfo:
    """Identify and bound an image from its header alone; raise ImageRejected with a clear reason.

    What can be known without decoding pixels: the format (from the bytes), the size (after EXIF
    rotation) against ``max_pixels`` and ``max_side``, and, for a JPEG, whether the file is too
    short for its declared size. Frames are not counted (`frames` is 1): `inspect_image` does that.
    `fp` may hold only the file's first bytes: `size` is then the whole file's size.
    """
    if size is None:
        fp.seek(0, 2)
        size = fp.tell()
    if size == 0:
        raise ImageRejected(400, "the file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = open_image(fp, max_pixels)
        except UnidentifiedImageError:
            if _has_magic(fp):
                raise ImageRejected(
                    422, "corrupt image: the bytes start like a supported format but cannot be read"
                ) from None
            raise ImageRejected(415, UNSUPPORTED) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise _bomb(err, max_pixels) from None
        except Exception as err:  # malformed headers surface as assorted errors
            if not _has_magic(fp):  # e.g. text starting with "BM": Pillow's BMP plugin tries it
                raise ImageRejected(415, UNSUPPORTED) from None
            raise ImageRejected(422, f"corrupt image header ({type(err).__name__})") from None
        with img:
            fmt = img.format
            assert fmt is not None  # Image.open(formats=FORMATS) opened it as one of FORMATS
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageRejected(422, "image has no pixels")
            if width * height > max_pixels:
                raise ImageRejected(422, f"image is {width}x{height} pixels, over the limit of {max_pixels} pixels")
            if max_side is not None and max(width, height) > max_side:
                raise ImageRejected(
                    422,
                    f"image is {width}x{height} pixels: a side is over the limit of {max_side} pixels "
                    "(DAM_MAX_IMAGE_SIDE)",
                )
            if fmt == "JPEG":
                needed = jpeg_min_bytes(fp)
                if needed is not None and size < needed:
                    raise ImageRejected(
                        422,
                        f"truncated image: a {width}x{height} JPEG needs at least {needed:,} bytes of image "
                        f"data, the file has {size:,} bytes",
                    )
            try:
                orientation = img.getexif().get(_ORIENTATION_TAG, 1)
            except Exception:
                orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    mime, ext = FORMATS[fmt]
    return ImageInfo(fmt, mime, ext, width, height, 1)


def inspect_image(fp: IO[bytes], max_pixels: int, max_frames: int, max_side: int | None = None) -> ImageInfo:
    """Identify, bound and fully decode an image; raise ImageRejected with a clear reason.

    Limits: ``max_pixels`` (width x height, DAM_MAX_IMAGE_PIXELS), ``max_side`` (either side,
    DAM_MAX_IMAGE_SIDE; checked from the header, before any decode), ``max_frames``.
    """
    info = inspect_header(fp, max_pixels, max_side)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with open_image(fp, max_pixels) as img:
                frames = getattr(img, "n_frames", 1)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise _bomb(err, max_pixels) from None
        except Exception:
            raise ImageRejected(422, "corrupt or truncated animation") from None
        if frames > max_frames:
            raise ImageRejected(422, f"image has {frames} frames, over the limit of {max_frames}")
        # verify() checks structure and checksums (PNG CRCs) without decoding pixels.
        try:
            with open_image(fp, max_pixels) as img:
                img.verify()
            with open_image(fp, max_pixels) as img:
                if info.format == "JPEG":
                    # Decoding at 1/8 scale still reads every entropy-coded byte: finds truncation cheaply.
                    # Both sides at least 1/8 of the shorter one: the same scale for a rotated image.
                    side = max(1, min(info.width, info.height) // 8)
                    img.draft("RGB", (side, side))
                img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise _bomb(err, max_pixels) from None
        except Exception as err:
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise ImageRejected(422, f"truncated or corrupt image: {reason}") from None
    return dataclasses.replace(info, frames=frames)
