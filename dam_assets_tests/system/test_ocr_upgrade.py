"""Switching OCR on for a data folder that `dam dev` processed without it: every earlier batch gets its
text by itself (Dagster's automation, as a backfill), with its captions and embeddings untouched."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dagster import AssetKey, DagsterInstance
from PIL import Image, ImageDraw, ImageFont

from dam_assets_tests.conftest import free_port, jpeg_bytes
from dam_assets_tests.pipeline_harness import dam_sql
from dam_assets_tests.processes import wait_http

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
pytestmark = pytest.mark.skipif(not FONT.exists(), reason="fonts-dejavu-core is not installed")


def scan(text: str) -> bytes:
    img = Image.new("RGB", (800, 200), "white")
    ImageDraw.Draw(img).text((40, 60), text, fill="black", font=ImageFont.truetype(str(FONT), 40))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def start_dev(env: dict, cwd: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dam"), "dev", "--port", str(port), "--dagster-port", str(free_port())],
        env=env,
        cwd=str(cwd),
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/healthz", 90, proc)
    return proc, port


def stop_dev(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def table(env: dict) -> dict[str, dict]:
    out = dam_sql("SELECT id, caption, embedding_model, ocr_text, processed_at FROM assets", env)
    assert out.returncode == 0, out.stderr
    return {r["id"]: r for r in json.loads(out.stdout)}


def wait_for(what: str, check, deadline_s: float, log: Path):
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {deadline_s:.0f} s\n" + log.read_text()[-4000:]
        time.sleep(3)


@pytest.mark.timeout(600)
def test_switching_ocr_on_fills_in_every_earlier_batch_by_itself(tmp_path, tiny_models, make_settings):
    data = tmp_path / "data"
    make_settings(**tiny_models, DAM_DATA_DIR=str(data), DAM_BATCH_SIZE="2", DAM_AUTOMATION_INTERVAL_SECONDS="5")
    env = {k: v for k, v in os.environ.items() if k != "DAM_OCR"}
    log = tmp_path / "dam-dev.log"

    # Before: `dam dev` without OCR processes three uploads (two batches of at most two).
    proc, port = start_dev(env, tmp_path, log)
    try:
        ids = {}
        for name, body in (("invoice.png", scan("INVOICE 2026-117")), ("menu.png", scan("Lunch menu"))):
            r = httpx.post(f"http://127.0.0.1:{port}/upload", files={"file": (name, body, "image/png")}, timeout=30)
            assert r.status_code == 202, r.text
            ids[name] = r.json()["id"]
        time.sleep(6)  # the next upload lands in a later batch
        r = httpx.post(
            f"http://127.0.0.1:{port}/upload", files={"file": ("photo.jpg", jpeg_bytes(400, 300), "image/jpeg")}
        )
        ids["photo.jpg"] = r.json()["id"]

        def all_rows():
            t = table(env)
            return t if len(t) == 3 else None

        before = wait_for("rows without OCR", all_rows, 240, log)
    finally:
        stop_dev(proc)
    assert all(row["ocr_text"] is None for row in before.values())
    with DagsterInstance.from_config(str(data / "dagster")) as instance:
        batches = instance.get_dynamic_partitions("ingest_batches")
        caption_runs = {
            e.run_id for e in instance.fetch_materializations(AssetKey("image_captions"), limit=100).records
        }
    assert len(batches) >= 2

    # After: the same folder with DAM_OCR=1; nobody asks for anything.
    proc, port = start_dev({**env, "DAM_OCR": "1"}, tmp_path, log)
    try:

        def all_read():
            t = table(env)
            return t if all(row["ocr_text"] is not None for row in t.values()) else None

        after = wait_for("every earlier batch's text", all_read, 360, log)

        def found():
            # The batch's index segment follows its rows (search_segment, then the API's next poll).
            url = f"http://127.0.0.1:{port}/search"
            return httpx.get(url, params={"q": "invoice", "mode": "text"}, timeout=30).json()["items"]

        hits = wait_for("a text search finding the invoice", found, 120, log)
    finally:
        stop_dev(proc)
    assert "INVOICE 2026-117" in after[ids["invoice.png"]]["ocr_text"]
    assert "Lunch menu" in after[ids["menu.png"]]["ocr_text"]
    assert {i: r["caption"] for i, r in after.items()} == {i: r["caption"] for i, r in before.items()}
    assert [h["id"] for h in hits] == [ids["invoice.png"]]
    with DagsterInstance.from_config(str(data / "dagster")) as instance:
        captions_now = {
            e.run_id for e in instance.fetch_materializations(AssetKey("image_captions"), limit=100).records
        }
        text_runs = instance.fetch_materializations(AssetKey("image_text"), limit=100).records
        backfills = instance.get_backfills()
    assert captions_now == caption_runs  # no caption recomputed
    assert text_runs and all(r.run_id not in caption_runs for r in text_runs)
    assert backfills, "the fill-in ran as a backfill (the UI's Backfills page shows its progress)"
