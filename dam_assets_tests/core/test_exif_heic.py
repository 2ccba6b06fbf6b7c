"""EXIF columns (dam_core/exif.py) from real files, hostile blocks never failing a row; HEIC/HEIF and
AVIF accepted by the API and the batch decode; and all of it end to end: uploads over real HTTP ->
the batch -> table rows, WebP thumbnails and `GET /assets/{id}`."""

from __future__ import annotations

import hashlib
import io
import math
import struct
from datetime import UTC, datetime

import duckdb
import httpx
import numpy as np
import pyarrow as pa
import pytest
from dagster import materialize
from fastapi.testclient import TestClient
from PIL import ExifTags, Image, ImageDraw
from PIL.TiffImagePlugin import IFDRational

from dam_assets.enrichment.rows import batch_rows
from dam_assets.enrichment.stages.captions import Captions
from dam_assets.enrichment.stages.embeddings import Embeddings
from dam_assets.enrichment.stages.exif import read_exif, write_exif
from dam_assets.search.assets import search_index
from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.faults.server import serve
from dam_assets_tests.pipeline_harness import resources, run_pending
from dam_core.exif import (
    EXIF_COLUMNS,
    MAX_TEXT,
    ExifInfo,
    coordinate,
    exif_of,
    parse_datetime,
    parse_offset,
    text,
)
from dam_core.images import ImageRejected, file_suffixes, inspect_image
from dam_core.imaging import decode_batch, decode_with_exif
from dam_core.index.snapshot import load_snapshot
from dam_core.index.write import build_index, write_index
from dam_core.layout import exif_stage_key, thumbnail_key
from dam_core.messages import BatchManifest, UploadMessage
from dam_core.store import LocalStore
from dam_core.table import make_table, schema
from dam_ingest_api.main import create_app
from dam_ingest_api.schemas import AssetDetail

BATCH = "20261124T101500Z-3fa2c1"
TAKEN_UTC = datetime(2024, 5, 1, 10, 34, 56, tzinfo=UTC)  # 12:34:56 at +02:00
LAT, LON = 52.375, -(4 + 53 / 60)  # 52°22'30" N, 4°53'0" W


# ----------------------------------------------------------------------------- files


def camera_exif(orientation: int = 6) -> Image.Exif:
    """A phone-like EXIF block written with Pillow's EXIF API: rationals, refs, offsets."""
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0110] = "EOS R5"  # Model
    exif[0x0112] = orientation
    exif[0x0132] = "2030:01:01 00:00:00"  # DateTime: DateTimeOriginal wins over it
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[0x9003] = "2024:05:01 12:34:56"  # DateTimeOriginal
    sub[0x9011] = "+02:00"  # OffsetTimeOriginal
    sub[0xA434] = "RF24-70mm F2.8 L IS USM"  # LensModel
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[1] = "N"
    gps[2] = (IFDRational(52, 1), IFDRational(22, 1), IFDRational(30, 1))
    gps[3] = "W"
    gps[4] = (IFDRational(4, 1), IFDRational(53, 1), IFDRational(0, 1))
    return exif


def picture(size=(240, 160), seed=3) -> Image.Image:
    img = Image.new("RGB", size, (30 + seed * 40 % 200, 120, 200))
    d = ImageDraw.Draw(img)
    d.rectangle([10, 10, size[0] // 2, size[1] // 2], fill=(250, 200 - seed * 30 % 200, 0))
    d.ellipse([size[0] // 2, size[1] // 3, size[0] - 10, size[1] - 10], fill=(0, 90, 40))
    return img


def encode(fmt: str, exif: Image.Exif | bytes | None = None, size=(240, 160), seed=3) -> bytes:
    """Real image bytes through Pillow's own writers (HEIF: pillow-heif's, registered by dam_core).

    The EXIF goes in as bytes: from those pillow-heif also writes the orientation as the container's
    rotation, as phones do (HEIF readers turn the pixels by that, never by EXIF).
    """
    buf = io.BytesIO()
    kwargs = {} if exif is None else {"exif": exif.tobytes() if isinstance(exif, Image.Exif) else exif}
    picture(size, seed).save(buf, fmt, **kwargs)
    return buf.getvalue()


def tiff_exif(ifd0: list[tuple], gps: list[tuple] | None = None) -> bytes:
    """A well-formed little-endian EXIF block holding whatever entries it is given, wrong types included.

    Entries are (tag, type, count, payload); Pillow's writer refuses such values, a camera need not.
    """
    entries0 = list(ifd0) + ([(0x8825, 4, 1, b"")] if gps is not None else [])
    size0 = 2 + 12 * len(entries0) + 4
    size1 = 2 + 12 * len(gps) + 4 if gps is not None else 0
    data_at = 8 + size0 + size1
    data = b""

    def ifd(entries, gps_at=None):
        nonlocal data
        out = struct.pack("<H", len(entries))
        for tag, typ, count, payload in entries:
            if tag == 0x8825:
                payload = struct.pack("<I", gps_at)
            if len(payload) <= 4:
                value = payload.ljust(4, b"\0")
            else:
                value = struct.pack("<I", data_at + len(data))
                data += payload + b"\0" * (len(payload) % 2)
            out += struct.pack("<HHI", tag, typ, count) + value
        return out + b"\0\0\0\0"

    first = ifd(entries0, gps_at=8 + size0)
    second = ifd(gps) if gps is not None else b""
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + first + second + data


ASCII, SHORT, LONG, RATIONAL = 2, 3, 4, 5


def ascii_entry(tag: int, value: bytes) -> tuple:
    return (tag, ASCII, len(value), value)


def rationals(tag: int, *pairs: tuple[int, int]) -> tuple:
    return (tag, RATIONAL, len(pairs), b"".join(struct.pack("<II", n, d) for n, d in pairs))


def opened(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# ----------------------------------------------------------------------------- exif.py on real files


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF", "AVIF"])
def test_every_column_from_a_camera_block(fmt):
    got = exif_of(opened(encode(fmt, camera_exif())))
    assert got.camera_make == "Canon" and got.camera_model == "EOS R5"
    assert got.lens == "RF24-70mm F2.8 L IS USM"
    assert got.taken_at == TAKEN_UTC  # DateTimeOriginal, its offset applied
    assert math.isclose(got.gps_lat, LAT) and math.isclose(got.gps_lon, LON)
    assert got.orientation == 6  # HEIF: what the file said, though libheif already turned the pixels


def test_southern_and_eastern_hemispheres_are_signed():
    exif = camera_exif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[1], gps[3] = "S", "E"
    got = exif_of(opened(encode("JPEG", exif)))
    assert math.isclose(got.gps_lat, -LAT) and math.isclose(got.gps_lon, -LON)


def test_datetime_is_the_fallback_and_without_an_offset_the_clock_is_kept():
    exif = Image.Exif()
    exif[0x0132] = "2021:12:31 23:59:59"
    assert exif_of(opened(encode("JPEG", exif))).taken_at == datetime(2021, 12, 31, 23, 59, 59, tzinfo=UTC)
    exif.get_ifd(ExifTags.IFD.Exif)[0x9010] = "-05:00"  # OffsetTime, DateTime's own
    assert exif_of(opened(encode("JPEG", exif))).taken_at == datetime(2022, 1, 1, 4, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "HEIF", "AVIF"])
def test_no_exif_is_all_null(fmt):
    assert exif_of(opened(encode(fmt))) == ExifInfo()


GARBAGE = {
    "random bytes": bytes(np.random.default_rng(7).integers(0, 256, 600, dtype=np.uint8)),
    "exif header then noise": b"Exif\x00\x00" + bytes(range(256)) * 3,
    "zeros": b"\x00" * 64,
    "ifd past the end": b"Exif\x00\x00II*\x00\xff\xff\x00\x00" + b"\xab" * 40,
    "ifd declaring 65535 entries": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x01" * 300,
    "big-endian truncated": b"MM\x00*\x00\x00\x00\x08\x00\x05\x01\x0f",
}


@pytest.mark.parametrize("name", list(GARBAGE))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_garbage_block_is_null_and_the_image_still_decodes(fmt, name):
    data = encode(fmt, GARBAGE[name])
    assert exif_of(opened(data)) == ExifInfo()
    image, exif = decode_with_exif(data)
    assert image.size == (240, 160) and exif == ExifInfo()


def test_wrong_types_zero_denominators_and_out_of_range_values_are_null_one_field_at_a_time():
    make = ascii_entry(0x010F, b"Nikon\x00")
    cases = {
        "latitude as text": [
            ascii_entry(1, b"N\x00"),
            ascii_entry(2, b"fifty two\x00"),
            ascii_entry(3, b"E\x00"),
            rationals(4, (4, 1), (53, 1), (0, 1)),
        ],
        "reference as a number": [
            (1, SHORT, 1, struct.pack("<H", 5)),
            rationals(2, (52, 1), (0, 1), (0, 1)),
            ascii_entry(3, b"E\x00"),
            rationals(4, (4, 1), (53, 1), (0, 1)),
        ],
        "zero denominator": [
            ascii_entry(1, b"N\x00"),
            rationals(2, (52, 0), (22, 1), (30, 1)),
            ascii_entry(3, b"E\x00"),
            rationals(4, (4, 1), (53, 1), (0, 1)),
        ],
        "latitude 95": [
            ascii_entry(1, b"N\x00"),
            rationals(2, (95, 1), (0, 1), (0, 1)),
            ascii_entry(3, b"E\x00"),
            rationals(4, (4, 1), (53, 1), (0, 1)),
        ],
        "longitude 200": [
            ascii_entry(1, b"N\x00"),
            rationals(2, (52, 1), (0, 1), (0, 1)),
            ascii_entry(3, b"E\x00"),
            rationals(4, (200, 1), (0, 1), (0, 1)),
        ],
        "unknown reference": [
            ascii_entry(1, b"Q\x00"),
            rationals(2, (52, 1), (0, 1), (0, 1)),
            ascii_entry(3, b"E\x00"),
            rationals(4, (4, 1), (0, 1), (0, 1)),
        ],
        "minutes 75": [
            ascii_entry(1, b"N\x00"),
            rationals(2, (52, 1), (75, 1), (0, 1)),
            ascii_entry(3, b"E\x00"),
            rationals(4, (4, 1), (0, 1), (0, 1)),
        ],
        "four components": [
            ascii_entry(1, b"N\x00"),
            rationals(2, (52, 1), (1, 1), (0, 1), (9, 1)),
            ascii_entry(3, b"E\x00"),
            rationals(4, (4, 1), (0, 1), (0, 1)),
        ],
    }
    for name, gps in cases.items():
        got = exif_of(opened(encode("JPEG", tiff_exif([make], gps))))
        assert (got.gps_lat, got.gps_lon) == (None, None), name
        assert got.camera_make == "Nikon", name  # the rest of the block still counts

    # the same block with a valid position, as a control
    valid = [
        ascii_entry(1, b"S\x00"),
        rationals(2, (3345, 100), (0, 1), (0, 1)),
        ascii_entry(3, b"E\x00"),
        rationals(4, (151, 1), (12, 1), (36, 1)),
    ]
    got = exif_of(opened(encode("JPEG", tiff_exif([make], valid))))
    assert math.isclose(got.gps_lat, -33.45) and math.isclose(got.gps_lon, 151.21)


def test_hostile_text_dates_and_orientation_are_clamped_or_null():
    huge = b"Ca\x00n\x07on" + b"\x1b[31m" + b"A" * 60_000 + b"\x00"  # a JPEG segment holds 64 KiB
    block = tiff_exif(
        [
            ascii_entry(0x010F, huge),
            (0x0110, LONG, 1, struct.pack("<I", 1234)),  # Model as a number
            (0x0112, SHORT, 1, struct.pack("<H", 99)),  # orientation out of 1-8
            ascii_entry(0x0132, b"0000:00:00 00:00:00\x00"),  # DateTime: an unset camera clock
        ]
    )
    got = exif_of(opened(encode("JPEG", block)))
    assert got.camera_make is not None and len(got.camera_make) <= MAX_TEXT
    assert got.camera_make.startswith("Canon[31mAAAA") and "\x00" not in got.camera_make
    assert all(ch.isprintable() for ch in got.camera_make)
    assert got.camera_model is None and got.orientation is None and got.taken_at is None


@pytest.mark.parametrize(
    "value, offset, expected",
    [
        ("2024:05:01 12:34:56", None, datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)),
        ("2024:05:01 12:34:56\x00", "+02:00", datetime(2024, 5, 1, 10, 34, 56, tzinfo=UTC)),
        (b"2024-05-01T12:34:56.123", "-03:30", datetime(2024, 5, 1, 16, 4, 56, tzinfo=UTC)),
        ("2024:05:01 12:34:56", "+99:00", datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)),  # bad offset ignored
        ("2024:05:01 12:34:56", 7200, datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)),
        ("0001:01:01 00:00:00", "+01:00", None),  # before year 1 in UTC
        ("2024:02:30 10:00:00", None, None),
        ("2024:13:01 10:00:00", None, None),
        ("    :  :     :  :  ", None, None),
        ("yesterday", None, None),
        (20240501, None, None),
        (None, None, None),
    ],
)
def test_parse_datetime(value, offset, expected):
    assert parse_datetime(value, offset) == expected


def test_small_parsers():
    assert parse_offset("+05:45").total_seconds() == 5 * 3600 + 45 * 60
    assert parse_offset("05:45").total_seconds() == 0
    assert text(b"Sony\x00\x00") == "Sony" and text("   ") is None and text(("a",)) is None
    assert text("x" * 10_000) == "x" * MAX_TEXT
    assert coordinate((IFDRational(10, 1),), b"S\x00", "N", "S", 90.0) == -10.0
    assert coordinate((10.5, 0, 0), None, "N", "S", 90.0) == 10.5  # no reference: the positive side
    assert coordinate((float("inf"), 0, 0), "N", "N", "S", 90.0) is None
    assert coordinate((-1, 0, 0), "N", "N", "S", 90.0) is None
    assert coordinate(((1, 2), 0, 0), "N", "N", "S", 90.0) is None
    assert coordinate("52.1", "N", "N", "S", 90.0) is None
    assert coordinate((True, 0, 0), "N", "N", "S", 90.0) is None


# ----------------------------------------------------------------------------- formats


def test_heif_and_avif_are_recognised_from_their_bytes():
    for fmt, mime, ext in (("HEIF", "image/heic", ".heic"), ("AVIF", "image/avif", ".avif")):
        info = inspect_image(io.BytesIO(encode(fmt, camera_exif(orientation=6))), 10**8, 100)
        assert (info.format, info.mime_type, info.ext) == (fmt, mime, ext)
        assert (info.width, info.height) == (160, 240)  # upright: orientation 6 turns 240x160
    assert {".heic", ".heif", ".avif"} <= file_suffixes()


def test_generic_mif1_brand_is_told_apart_by_its_codec():
    heic, avif = encode("HEIF"), encode("AVIF")
    assert heic[4:12] == b"ftypheic" and avif[4:12] == b"ftypavif"
    as_mif1 = lambda data: data[:8] + b"mif1" + data[12:]  # noqa: E731
    assert inspect_image(io.BytesIO(as_mif1(heic)), 10**8, 100).format == "HEIF"
    assert inspect_image(io.BytesIO(as_mif1(avif)), 10**8, 100).format == "AVIF"


def test_multi_image_heic_decodes_its_primary_image():
    first, primary = Image.new("RGB", (200, 100), (255, 0, 0)), Image.new("RGB", (100, 300), (0, 0, 255))
    buf = io.BytesIO()
    first.save(buf, "HEIF", save_all=True, append_images=[primary], primary_index=1)
    info = inspect_image(io.BytesIO(buf.getvalue()), 10**8, 100)
    assert (info.width, info.height) == (100, 300)
    image, _ = decode_with_exif(buf.getvalue())
    assert image.size == (100, 300) and image.getpixel((50, 150))[2] > 200


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
@pytest.mark.parametrize("keep", [0.5, 0.95, 40 / 1000, 12 / 1000])
def test_truncated_heif_and_avif_are_422(fmt, keep):
    data = encode(fmt, size=(640, 480))
    cut = data[: max(12, int(len(data) * keep))]
    with pytest.raises(ImageRejected) as err:
        inspect_image(io.BytesIO(cut), 10**8, 100)
    assert err.value.status == 422, err.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF", "AVIF"])
def test_every_format_is_turned_upright_once(fmt):
    """JPEG and AVIF (irot read back as EXIF) are turned by the decode, HEIF by libheif: never twice."""
    corner = picture((480, 320)).getpixel((20, 20))  # the top-left of the picture as drawn
    near = lambda a, b: all(abs(x - y) <= 6 for x, y in zip(a, b, strict=True))  # noqa: E731  (lossy codecs)
    turned = decode_with_exif(encode(fmt, camera_exif(orientation=3), size=(480, 320)))[0]
    assert turned.size == (480, 320) and near(turned.getpixel((459, 299)), corner)  # 180°: bottom right
    turned = decode_with_exif(encode(fmt, camera_exif(orientation=6), size=(480, 320)))[0]
    assert turned.size == (320, 480) and near(turned.getpixel((299, 20)), corner)  # 90° clockwise: top right


def test_large_heic_is_reduced_at_decode_with_its_exif():
    data = encode("HEIF", camera_exif(orientation=1), size=(3000, 2000))
    image, exif = decode_with_exif(data)
    assert image.size == (600, 400)  # reduced by 5: the short side still at least 384 px
    assert exif.camera_make == "Canon"


def test_decode_batch_carries_exif_and_a_hostile_block_never_fails_a_row(tmp_path):
    store = LocalStore(tmp_path / "store")
    files = {
        "a" * 32: ("heic", encode("HEIF", camera_exif())),
        "b" * 32: ("avif", encode("AVIF", camera_exif())),
        "c" * 32: ("jpg", encode("JPEG", GARBAGE["exif header then noise"])),
        "d" * 32: ("jpg", encode("JPEG", tiff_exif([ascii_entry(0x010F, b"\x00" * 5000)], [rationals(2, (1, 0))]))),
    }
    uploads = []
    for asset_id, (ext, data) in files.items():
        store.put(f"assets/{asset_id}.{ext}", data)
        uploads.append(_upload(asset_id, ext, data))
    decoded = {d.upload.id: d for d in decode_batch(store, uploads)}
    assert all(d.image is not None and d.error is None for d in decoded.values())
    assert decoded["a" * 32].image.size == decoded["b" * 32].image.size == (160, 240)  # both upright
    assert decoded["a" * 32].exif.taken_at == decoded["b" * 32].exif.taken_at == TAKEN_UTC
    assert decoded["c" * 32].exif == decoded["d" * 32].exif == ExifInfo()


def _upload(asset_id: str, ext: str, data: bytes) -> UploadMessage:
    return UploadMessage(
        id=asset_id,
        filename=f"{asset_id[:6]}.{ext}",
        r2_key=f"assets/{asset_id}.{ext}",
        mime_type="image/jpeg",
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        width=240,
        height=160,
        uploaded_at=datetime(2026, 11, 24, 10, 15, tzinfo=UTC),
    )


# ----------------------------------------------------------------------------- stage, rows, index


def test_exif_stage_round_trips_and_a_batch_from_before_it_gets_null_columns(tmp_path):
    store = LocalStore(tmp_path / "store")
    info = exif_of(opened(encode("JPEG", camera_exif())))
    assert write_exif(store, BATCH, {"a" * 32: info}) == exif_stage_key(BATCH)
    assert read_exif(store, BATCH) == {"a" * 32: info}

    assert read_exif(store, "20200101T000000Z-000000") == {}  # enriched before EXIF existed
    manifest = BatchManifest(
        batch=BATCH,
        created_at=datetime.now(UTC),
        uploads=[_upload("a" * 32, "jpg", b"x"), _upload("b" * 32, "jpg", b"y")],
    )
    rows = batch_rows(
        manifest, Captions("m", "v", {}), Embeddings("m", "v", 4, {}), datetime.now(UTC), exif=read_exif(store, BATCH)
    )
    assert rows[0]["camera_make"] == "Canon" and rows[0]["taken_at"] == TAKEN_UTC
    assert all(rows[1][c] is None for c in EXIF_COLUMNS)
    # EXIF describes the file: kept on the rows whose captions are missing (error rows)
    assert rows[0]["error"] and rows[0]["gps_lat"] == LAT
    pa.Table.from_pylist(rows, schema=schema(4))  # the rows fit the table's schema


def _old_items(n: int = 2) -> pa.Table:
    """Index items as the version before EXIF wrote them."""
    now = datetime.now(UTC)
    return pa.table(
        {
            "id": [f"{i:032x}" for i in range(n)],
            "filename": [f"old-{i}.jpg" for i in range(n)],
            "caption": ["an old photo"] * n,
            "tags": pa.array([["dog"]] * n, type=pa.list_(pa.string())),
            "mime_type": ["image/jpeg"] * n,
            "width": pa.array([64] * n, type=pa.int32()),
            "height": pa.array([48] * n, type=pa.int32()),
            "error": pa.nulls(n, type=pa.string()),
            "uploaded_at": pa.array([now] * n, type=pa.timestamp("us", tz="UTC")),
            "processed_at": pa.array([now] * n, type=pa.timestamp("us", tz="UTC")),
            "batch": [BATCH] * n,
            "embedding_model": ["clip"] * n,
        }
    )


def test_a_snapshot_written_before_exif_loads_with_null_fields(tmp_path):
    store = LocalStore(tmp_path / "store")
    vectors = np.eye(2, 4, dtype=np.float32)
    write_index(store, _old_items(), vectors, np.ones(2, bool), exact_max=1000, model="clip")
    snap = load_snapshot(store)
    row = snap.get(f"{1:032x}")
    assert row["filename"] == "old-1.jpg" and all(row[c] is None for c in EXIF_COLUMNS)
    detail = AssetDetail.indexed(row)
    assert detail.status == "processed" and detail.taken_at is None and detail.gps_lat is None


def test_the_index_builds_from_a_table_written_before_exif(tmp_path):
    store = LocalStore(tmp_path / "store")
    old = _old_items().append_column("embedding", pa.array([[1, 0, 0, 0], [0, 1, 0, 0]], pa.list_(pa.float32(), 4)))
    con = duckdb.connect()
    con.register("old_files", old)
    con.execute("CREATE VIEW assets_all AS SELECT * FROM old_files")
    con.execute("CREATE VIEW assets AS SELECT * FROM assets_all")
    current = build_index(store, con, exact_max=1000)
    assert current.rows == 2 and current.vectors == 2
    row = load_snapshot(store).get(f"{0:032x}")
    assert row["caption"] == "an old photo" and all(row[c] is None for c in EXIF_COLUMNS)


# ----------------------------------------------------------------------------- API


def test_heic_and_avif_uploads_are_accepted_and_a_truncated_heic_is_422(make_settings):
    with TestClient(create_app(make_settings())) as client:
        for name, data, mime, ext in (
            ("IMG_0001.HEIC", encode("HEIF", camera_exif()), "image/heic", ".heic"),
            ("photo.avif", encode("AVIF", camera_exif()), "image/avif", ".avif"),
        ):
            r = client.post("/upload", files={"file": (name, data, "application/octet-stream")})
            assert r.status_code == 202, r.text
            body = r.json()
            assert body["mime_type"] == mime and body["r2_key"] == f"assets/{body['id']}{ext}"
            assert (body["width"], body["height"]) == (160, 240)
            original = client.get(f"/assets/{body['id']}/original")
            assert original.content == data and original.headers["content-type"] == mime

        truncated = encode("HEIF", size=(640, 480))
        r = client.post("/upload", files={"file": ("cut.heic", truncated[: len(truncated) // 2], "image/heic")})
        assert r.status_code == 422, r.text
        assert "corrupt" in r.json()["detail"]
        r = client.post(
            "/upload", files={"file": ("fake.heic", b"\x00\x00\x00\x18ftypqt  " + b"\x00" * 40, "image/heic")}
        )
        assert r.status_code == 415, r.text
        assert "HEIC" in r.json()["detail"] and "AVIF" in r.json()["detail"]


# ----------------------------------------------------------------------------- end to end


@pytest.mark.system
def test_heic_avif_and_jpeg_with_gps_end_to_end(make_settings, tiny_models, instance):
    """Over real HTTP: three uploads -> the sensor's batch -> rows with EXIF, WebP thumbnails, GET /assets/{id}."""
    settings = make_settings(**tiny_models, DAM_BATCH_SIZE="8")
    app = create_app(settings)
    no_exif_jpeg = jpeg_bytes(200, 150, seed=5)
    files = {
        "IMG_0001.HEIC": encode("HEIF", camera_exif(orientation=6), size=(480, 320), seed=1),
        "holiday.avif": encode("AVIF", camera_exif(orientation=3), size=(480, 320), seed=2),
        "gps.jpg": encode("JPEG", camera_exif(orientation=8), size=(480, 320), seed=3),
        "plain.jpg": no_exif_jpeg,
    }
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        sent = {}
        for name, data in files.items():
            r = client.post("/upload", files={"file": (name, data, "application/octet-stream")})
            assert r.status_code == 202, r.text
            sent[name] = r.json()
        assert sent["IMG_0001.HEIC"]["mime_type"] == "image/heic" and sent["holiday.avif"]["mime_type"] == "image/avif"

        batches, _ = run_pending(instance)
        assert len(batches) == 1
        materialize([search_index], instance=instance, resources=resources())
        app.state.catalog.index.refresh()

        for name, s in sent.items():
            detail = client.get(f"/assets/{s['id']}").json()
            assert detail["status"] == "processed", detail
            if name == "plain.jpg":
                assert all(detail[c] is None for c in EXIF_COLUMNS)
                continue
            assert detail["camera_make"] == "Canon" and detail["camera_model"] == "EOS R5"
            assert detail["lens"] == "RF24-70mm F2.8 L IS USM"
            assert detail["taken_at"] == "2024-05-01T10:34:56+00:00"
            assert math.isclose(detail["gps_lat"], LAT) and math.isclose(detail["gps_lon"], LON)
            thumb = client.get(f"/assets/{s['id']}/thumbnail")
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
        assert client.get(f"/assets/{sent['IMG_0001.HEIC']['id']}").json()["orientation"] == 6
        listed = client.get("/assets").json()["items"]  # the list keeps its shape; EXIF is on the item
        assert len(listed) == 4 and "camera_make" not in listed[0]

    rows = {
        r[0]: r[1:]
        for r in make_table(settings)
        .connect()
        .execute(
            "SELECT filename, mime_type, error, width, height, taken_at, camera_make, camera_model, lens,"
            " gps_lat, gps_lon, orientation FROM assets"
        )
        .fetchall()
    }
    assert set(rows) == set(files)
    expected_size = {"IMG_0001.HEIC": (320, 480), "holiday.avif": (480, 320), "gps.jpg": (320, 480)}
    expected_mime = {
        "IMG_0001.HEIC": "image/heic",
        "holiday.avif": "image/avif",
        "gps.jpg": "image/jpeg",
        "plain.jpg": "image/jpeg",
    }
    for name, (mime, error, width, height, taken, make, model, lens, lat, lon, orientation) in rows.items():
        assert error is None, (name, error)
        assert mime == expected_mime[name], (name, mime)
        if name == "plain.jpg":
            assert (taken, make, model, lens, lat, lon, orientation) == (None,) * 7
            continue
        assert (width, height) == expected_size[name]
        assert taken == TAKEN_UTC and (make, model, lens) == ("Canon", "EOS R5", "RF24-70mm F2.8 L IS USM")
        assert math.isclose(lat, LAT) and math.isclose(lon, LON)
        assert orientation == {"IMG_0001.HEIC": 6, "holiday.avif": 3, "gps.jpg": 8}[name]

    store = app.state.dam.store
    for name, s in sent.items():
        thumb = Image.open(io.BytesIO(store.get(thumbnail_key(s["id"]))), formats=["WEBP"])
        thumb.load()
        w, h = expected_size.get(name, (200, 150))
        assert thumb.format == "WEBP" and max(thumb.size) == min(256, max(w, h)), (name, thumb.size)
        assert (thumb.width > thumb.height) == (w > h), (name, thumb.size)  # upright, like the row
