"""What a photo's EXIF block says about it: when, with what camera and lens, where, which way up.

Pure functions over an opened Pillow image; nothing here raises. EXIF is untrusted user data:
a value that is absent, of the wrong type, out of range or unparsable is null, and a broken
block never costs more than its own fields.

`taken_at` is DateTimeOriginal, else DateTime. With its offset tag (OffsetTimeOriginal,
OffsetTime) it is converted to UTC; without one, the camera's wall clock is kept as it is
and labelled UTC (EXIF does not say which zone the camera was set to).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from PIL import ExifTags, Image

MAX_TEXT = 200  # characters kept of a text tag

# IFD0
_MAKE, _MODEL, _ORIENTATION, _DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
# Exif IFD
_DATETIME_ORIGINAL, _OFFSET_TIME, _OFFSET_TIME_ORIGINAL, _LENS_MODEL = 0x9003, 0x9010, 0x9011, 0xA434
# GPS IFD
_LAT_REF, _LAT, _LON_REF, _LON = 1, 2, 3, 4

_DATE = re.compile(r"(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")


@dataclass(frozen=True)
class ExifInfo:
    """The EXIF columns of the `assets` table; None where the file says nothing usable."""

    taken_at: datetime | None = None  # aware, UTC
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None  # decimal degrees, north positive
    gps_lon: float | None = None  # decimal degrees, east positive
    orientation: int | None = None  # 1-8, as the file states it

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["taken_at"] = self.taken_at.isoformat() if self.taken_at else None
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ExifInfo:
        values = {f.name: body.get(f.name) for f in fields(cls)}
        if values["taken_at"] is not None:
            values["taken_at"] = datetime.fromisoformat(values["taken_at"])
        return cls(**values)


EXIF_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ExifInfo))


def exif_of(img: Image.Image) -> ExifInfo:
    """The EXIF columns of an opened image (any format Pillow reads EXIF from); never raises.

    Call it after ``img.load()``: a PNG's eXIf chunk may follow the pixels, and asking for it
    earlier makes Pillow decode them.
    """
    try:
        return _columns(img, img.getexif())
    except Exception:  # the helpers below already null what they cannot read; this is the backstop
        return ExifInfo()


def _columns(img: Image.Image, exif: Image.Exif) -> ExifInfo:
    ifd0 = _safe(lambda: dict(exif))
    sub = _safe(lambda: dict(exif.get_ifd(ExifTags.IFD.Exif)))
    gps = _safe(lambda: dict(exif.get_ifd(ExifTags.IFD.GPSInfo)))
    lat, lon = gps_position(gps)
    return ExifInfo(
        taken_at=taken_at(ifd0, sub),
        camera_make=text(ifd0.get(_MAKE)),
        camera_model=text(ifd0.get(_MODEL)),
        lens=text(sub.get(_LENS_MODEL)),
        gps_lat=lat,
        gps_lon=lon,
        # libheif turns HEIF pixels upright itself and pillow-heif then resets the tag to 1,
        # keeping what the file said here.
        orientation=orientation(img.info.get("original_orientation") or ifd0.get(_ORIENTATION)),
    )


def _safe(read: Callable[[], dict[int, Any]]) -> dict[int, Any]:
    try:
        return read()
    except Exception:  # a corrupt IFD offset, a loop, a wrong type
        return {}


def text(value: Any) -> str | None:
    """A printable string of at most MAX_TEXT characters: NULs and control characters dropped."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = "".join(ch if ch.isprintable() else " " if ch.isspace() else "" for ch in value[: MAX_TEXT * 4]).strip()
    return value[:MAX_TEXT].rstrip() or None


def orientation(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= 8 else None


def taken_at(ifd0: dict[int, Any], sub: dict[int, Any]) -> datetime | None:
    """DateTimeOriginal with OffsetTimeOriginal, else DateTime with OffsetTime; None if neither parses."""
    for date_tag, offset_tag, where in (
        (_DATETIME_ORIGINAL, _OFFSET_TIME_ORIGINAL, sub),
        (_DATETIME, _OFFSET_TIME, ifd0),
    ):
        when = parse_datetime(where.get(date_tag), sub.get(offset_tag))
        if when is not None:
            return when
    return None


def parse_datetime(value: Any, offset: Any = None) -> datetime | None:
    """`YYYY:MM:DD HH:MM:SS` (+ an optional `±HH:MM` offset) -> aware UTC datetime, else None."""
    value = text(value)
    match = _DATE.match(value) if value else None
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    try:
        local = datetime(year, month, day, hour, minute, second)
    except ValueError:  # 0000:00:00 00:00:00, month 13, Feb 30
        return None
    shift = parse_offset(offset)
    try:
        return (local - shift).replace(tzinfo=UTC)
    except OverflowError:  # year 1 minus a positive offset
        return None


def parse_offset(value: Any) -> timedelta:
    """`+02:00` -> 2 hours; anything else (absent, malformed, beyond ±14 h) -> no shift."""
    value = text(value)
    match = _OFFSET.fullmatch(value) if value else None
    if match is None:
        return timedelta(0)
    sign, hours, minutes = match.groups()
    if int(hours) > 14 or int(minutes) > 59:
        return timedelta(0)
    shift = timedelta(hours=int(hours), minutes=int(minutes))
    return -shift if sign == "-" else shift


def gps_position(gps: dict[int, Any]) -> tuple[float | None, float | None]:
    """(latitude, longitude) in signed decimal degrees; (None, None) unless both are valid."""
    lat = coordinate(gps.get(_LAT), gps.get(_LAT_REF), positive="N", negative="S", limit=90.0)
    lon = coordinate(gps.get(_LON), gps.get(_LON_REF), positive="E", negative="W", limit=180.0)
    if lat is None or lon is None:
        return None, None
    return lat, lon


def coordinate(value: Any, ref: Any, positive: str, negative: str, limit: float) -> float | None:
    """Degrees, minutes, seconds (rationals) and a hemisphere letter -> signed degrees, or None.

    A missing reference counts as the positive hemisphere; an unknown one makes the value null.
    """
    parts = _dms(value)
    if parts is None:
        return None
    degrees = parts[0] + (parts[1] / 60 if len(parts) > 1 else 0.0) + (parts[2] / 3600 if len(parts) > 2 else 0.0)
    ref = positive if ref is None else (text(ref) or "").upper()
    if ref not in (positive, negative):
        return None
    if not math.isfinite(degrees) or degrees > limit:
        return None
    return -degrees if ref == negative else degrees


def _dms(value: Any) -> tuple[float, ...] | None:
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3:
        return None
    out = []
    for part in value:
        if isinstance(part, (str, bytes, bool)):
            return None
        try:
            number = float(part)  # IFDRational with a zero denominator is nan
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None
        if not math.isfinite(number) or number < 0:
            return None
        out.append(number)
    if len(out) > 1 and (out[1] >= 60 or (len(out) > 2 and out[2] >= 60)):
        return None
    return tuple(out)
