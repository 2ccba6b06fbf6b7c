"""Recognise and check an image from its bytes alone (never its name or Content-Type)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import IO

from PIL import Image, ImageFile, UnidentifiedImageError

# Only these decoders ever see user bytes: a smaller attack surface than every Pillow plugin.
FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", ".jpg"),
    "PNG": ("image/png", ".png"),
    "WEBP": ("image/webp", ".webp"),
    "GIF": ("image/gif", ".gif"),
    "TIFF": ("image/tiff", ".tiff"),
    "BMP": ("image/bmp", ".bmp"),
}
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
            raise ImageRejected(
                415, "not a supported image: expected JPEG, PNG, WebP, GIF, TIFF or BMP bytes"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejected(422, "decompression bomb: the image declares too many pixels") from None
        except Exception as err:  # malformed headers surface as assorted errors
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
