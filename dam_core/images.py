"""Recognise and check an image from its bytes alone (never its name or Content-Type)."""

from __future__ import annotations

import functools
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
_FTYP_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
)
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


def _open(fp: IO[bytes]) -> Image.Image:
    fp.seek(0)
    return Image.open(fp, formats=list(FORMATS))


def inspect_image(fp: IO[bytes], max_pixels: int, max_frames: int) -> ImageInfo:
    """Identify, bound and fully decode an image; raise ImageRejected with a clear reason."""
    fp.seek(0, 2)
    if fp.tell() == 0:
        raise ImageRejected(400, "the file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = _open(fp)
        except UnidentifiedImageError:
            if _has_magic(fp):
                raise ImageRejected(
                    422, "corrupt image: the bytes start like a supported format but cannot be read"
                ) from None
            raise ImageRejected(415, UNSUPPORTED) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejected(422, "decompression bomb: the image declares too many pixels") from None
        except Exception as err:  # malformed headers surface as assorted errors
            if not _has_magic(fp):  # e.g. text starting with "BM": Pillow's BMP plugin tries it
                raise ImageRejected(415, UNSUPPORTED) from None
            raise ImageRejected(422, f"corrupt image header ({type(err).__name__})") from None
        with img:
            fmt = img.format
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageRejected(422, "image has no pixels")
            if width * height > max_pixels:
                raise ImageRejected(
                    422, f"image is {width}x{height} pixels, over the limit of {max_pixels} pixels"
                )
            try:
                frames = getattr(img, "n_frames", 1)
            except Exception:
                raise ImageRejected(422, "corrupt or truncated animation") from None
            if frames > max_frames:
                raise ImageRejected(422, f"image has {frames} frames, over the limit of {max_frames}")
            try:
                orientation = img.getexif().get(_ORIENTATION_TAG, 1)
            except Exception:
                orientation = 1
        # verify() checks structure and checksums (PNG CRCs) without decoding pixels.
        try:
            with _open(fp) as img:
                img.verify()
            with _open(fp) as img:
                if fmt == "JPEG":
                    # Decoding at 1/8 scale still reads every entropy-coded byte: finds truncation cheaply.
                    img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejected(422, "decompression bomb: the image declares too many pixels") from None
        except Exception as err:
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise ImageRejected(422, f"truncated or corrupt image: {reason}") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    mime, ext = FORMATS[fmt]
    return ImageInfo(fmt, mime, ext, width, height, frames)
