"""Bounded decoding: every format is reduced at open, a pixel budget caps full-size decodes in flight,
and a batch of huge-but-legal images runs in bounded memory with every honest row written."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from dam_assets_tests.conftest import jpeg_bytes, png_bytes
from dam_assets_tests.pipeline_harness import run_pending
from dam_core.budget import Budget, OverBudget
from dam_core.imaging import decode
from dam_core.layout import thumbnail_key
from dam_core.store import make_store
from dam_core.table import make_table
from dam_ingest_api.main import create_app

GiB = 1024**3
LARGE_SIDE = 8000  # 64 M pixels: within DAM_MAX_IMAGE_PIXELS (100 M), 256 MB as decoded RGBA
LARGE_PNGS = 12
# What the batch adds to a process whose models are loaded and warm (measured: ~0.3 GiB): one
# full-size decode at a time (the default budget, 100 M pixels, holds one 64 M pixel PNG, 256 MB
# as RGBA) plus the reduced images. Before bounded decoding every PNG was held at full size, then
# handed whole to both processors (issue 10 measured 10.7 GiB for 16 such PNGs).
BATCH_GROWTH_BOUND = int(0.75 * GiB)
RUNAWAY_RSS = 4 * GiB  # the watcher stops a run that has clearly lost its bound before it hurts the machine
REPO = Path(__file__).resolve().parents[2]


def _with_text_chunk(png: bytes, text: str) -> bytes:
    """The same PNG with a tEXt chunk after IHDR: new bytes (a new content id) without re-encoding."""
    body = b"Comment\x00" + text.encode()
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    ihdr_end = 8 + 4 + 4 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


@pytest.fixture(scope="session")
def large_png() -> bytes:
    """An 8000x8000 RGBA PNG: transparent background, opaque and half-transparent shapes (~400 KiB)."""
    img = Image.new("RGBA", (LARGE_SIDE, LARGE_SIDE), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    for i in range(24):
        x, y = (i * 733) % 7000, (i * 1291) % 7000
        fill = ((40 * i) % 256, (90 * i) % 256, (160 + 7 * i) % 256, 255 if i % 3 else 128)
        d.ellipse([x, y, x + 1200, y + 900], fill=fill)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _upload(client, data: bytes, name: str) -> dict:
    r = client.post("/upload", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == 202, r.text
    return r.json()


# ----------------------------------------------------------------------------- decode, one image


def test_decode_reduces_a_large_png_at_open_and_keeps_alpha(large_png):
    img = decode(large_png)
    # 8000 // 384 = 20: the largest integer reduction that keeps the short side >= 384.
    assert img.size == (400, 400) and img.mode == "RGBA"
    alpha = np.asarray(img.getchannel("A"))
    assert alpha[-1, -1] == 0  # the untouched corner stays transparent for the thumbnail
    assert alpha.max() == 255 and ((alpha > 0) & (alpha < 255)).any()  # opaque and half-transparent shapes


def test_reduction_is_exact_across_strips_and_small_images_keep_their_size():
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (2000, 3001, 4), dtype=np.uint8), "RGBA")
    buf = io.BytesIO()
    noise.save(buf, "PNG", compress_level=1)
    got = decode(buf.getvalue())
    assert got.size == (601, 400) and got.mode == "RGBA"  # factor 5, rounded up like Image.reduce
    assert np.array_equal(np.asarray(got), np.asarray(noise.reduce(5)))

    small = decode(png_bytes(300, 200))
    assert small.size == (300, 200) and small.mode == "RGBA"
    assert decode(jpeg_bytes(640, 480)).mode == "RGB"


def test_long_side_is_capped_and_exif_rotation_applies_to_the_reduced_image():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    buf = io.BytesIO()
    Image.new("L", (6400, 800), 90).save(buf, "PNG", exif=exif.tobytes())
    img = decode(buf.getvalue())
    # 800 // 384 = 2 would leave a 3200 px long side; the 1536 px cap needs a factor of 5.
    assert img.size == (160, 1280) and img.mode == "RGB"


# ----------------------------------------------------------------------------- the budget


def test_budget_never_exceeds_its_capacity_and_serves_in_order():
    budget = Budget(100)
    held, peak, lock = [0], [0], threading.Lock()

    def worker(units):  # as decode_with_exif holds its pixels: acquire, then release when done
        assert budget.acquire(units)
        try:
            with lock:
                held[0] += units
                peak[0] = max(peak[0], held[0])
            time.sleep(0.01)
            with lock:
                held[0] -= units
        finally:
            budget.release(units)

    threads = [threading.Thread(target=worker, args=(u,)) for u in [60, 30, 70, 10, 100, 40, 55] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0 < peak[0] <= 100 and budget.peak <= 100 and budget.in_use == 0

    with pytest.raises(OverBudget):
        budget.acquire(101)
    budget.acquire(90)
    assert budget.acquire(20, timeout=0.05) is False
    # A large waiter at the head is not overtaken by a small one that would fit.
    order: list[str] = []
    big = threading.Thread(target=lambda: (budget.acquire(50), order.append("big")))
    big.start()
    time.sleep(0.05)
    small = threading.Thread(target=lambda: (budget.acquire(5), order.append("small")))
    small.start()
    time.sleep(0.05)
    assert order == []
    budget.release(90)
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]


def test_decode_over_the_budget_fails_before_decoding(large_png):
    with pytest.raises(OverBudget, match="DAM_DECODE_PIXEL_BUDGET"):
        decode(large_png, budget=Budget(LARGE_SIDE * LARGE_SIDE - 1, "DAM_DECODE_PIXEL_BUDGET"))


# ----------------------------------------------------------------------------- whole batches

_RUN_BATCH = r"""
import json, re
from dagster import DagsterInstance
from PIL import Image
from dam_assets.resources import ModelsResource
from dam_assets_tests.pipeline_harness import run_pending
from dam_core.settings import load_settings


def rss_kib(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1))


# The process as a worker is before its first batch: models loaded, converted once, run once at chunk size.
models = ModelsResource.from_settings(load_settings())
photos = [Image.new("RGB", (640, 480), (i * 15, 90, 200)) for i in range(16)]
models.captioner().caption(photos)
models.embedder().embed_images(photos)
warm = rss_kib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS: the high-water mark from here on is the batch's
with DagsterInstance.ephemeral() as instance:
    batches, _ = run_pending(instance)  # raises if a run failed
print(json.dumps({"batches": batches, "warm_kib": warm, "peak_kib": rss_kib("VmHWM")}))
"""


def _run_batch_watched(bound: int, timeout: float = 540) -> dict:
    """Warm the models, then tick + materialize in a fresh process; killed if its RSS passes ``bound`` bytes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_BATCH],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ps, seen, deadline = psutil.Process(proc.pid), 0, time.monotonic() + timeout
    while proc.poll() is None:
        try:
            seen = max(seen, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if seen > bound or time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"run process reached {seen / GiB:.2f} GiB RSS (bound {bound / GiB:.2f} GiB) or timed out")
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.system
def test_batch_of_large_pngs_runs_in_bounded_memory(make_settings, tiny_models, large_png):
    settings = make_settings(**tiny_models, DAM_BATCH_SIZE="64")
    client = TestClient(create_app(settings))
    pngs = [_upload(client, _with_text_chunk(large_png, f"copy {i}"), f"poster-{i}.png") for i in range(LARGE_PNGS)]
    photos = [_upload(client, jpeg_bytes(1600, 1200, seed=40 + i), f"photo-{i}.jpg") for i in range(4)]
    assert len({p["id"] for p in pngs}) == LARGE_PNGS

    result = _run_batch_watched(RUNAWAY_RSS)
    warm, peak = result["warm_kib"] * 1024, result["peak_kib"] * 1024
    print(
        f"{LARGE_PNGS} PNGs of {LARGE_SIDE}x{LARGE_SIDE} + 4 photos in one batch: RSS {warm / GiB:.2f} GiB with the "
        f"models warm, batch peak {peak / GiB:.2f} GiB (+{(peak - warm) / GiB:.2f} GiB)"
    )
    assert len(result["batches"]) == 1
    assert peak - warm < BATCH_GROWTH_BOUND

    query = "SELECT id, caption, error, width, height FROM assets"
    rows = {r[0]: r for r in make_table(settings).connect().execute(query).fetchall()}
    assert set(rows) == {p["id"] for p in pngs + photos}
    for r in rows.values():
        assert r[2] is None and r[1], r
    store = make_store(settings)
    for p in pngs:
        assert rows[p["id"]][3:] == (LARGE_SIDE, LARGE_SIDE)
        thumb = Image.open(io.BytesIO(store.get(thumbnail_key(p["id"]))))
        assert thumb.size == (256, 256) and thumb.mode == "RGBA"
    for p in photos:
        assert Image.open(io.BytesIO(store.get(thumbnail_key(p["id"])))).size == (256, 192)


def test_image_over_the_pixel_budget_is_an_error_row_and_its_batch_mates_succeed(make_settings, tiny_models, instance):
    settings = make_settings(**tiny_models, DAM_DECODE_PIXEL_BUDGET="5000000")
    client = TestClient(create_app(settings))
    wide = Image.new("RGB", (3000, 2000), (30, 120, 200))  # 6 M pixels: legal upload, over this budget
    buf = io.BytesIO()
    wide.save(buf, "PNG")
    over = _upload(client, buf.getvalue(), "wide.png")
    mates = [_upload(client, jpeg_bytes(1600, 1200, seed=s), f"mate-{s}.jpg") for s in (1, 2)]
    mates.append(_upload(client, png_bytes(300, 200), "small.png"))

    (batch,), _ = run_pending(instance)  # raises if the run failed
    rows = {r[0]: r for r in make_table(settings).connect().execute("SELECT id, caption, error FROM assets").fetchall()}
    assert set(rows) == {over["id"], *(m["id"] for m in mates)}
    assert rows[over["id"]][1] is None
    assert "DAM_DECODE_PIXEL_BUDGET" in rows[over["id"]][2] and "3000x2000" in rows[over["id"]][2]
    for m in mates:
        assert rows[m["id"]][2] is None and rows[m["id"]][1]
    store = make_store(settings)
    assert not store.exists(thumbnail_key(over["id"]))
    assert all(store.exists(thumbnail_key(m["id"])) for m in mates)
