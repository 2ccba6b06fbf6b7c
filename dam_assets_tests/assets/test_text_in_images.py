"""OCR through the real pipeline: uploads -> batch -> image_text (the real PP-OCR models) -> rows with
`ocr_text` -> text search over HTTP, and a batch processed before OCR gaining its text alone."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, materialize
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont

from dam_assets.enrichment.assets import asset_metadata, image_text
from dam_assets.search.assets import search_index
from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.pipeline_harness import materialize_batch, resources, run_pending
from dam_core.table import make_table
from dam_ingest_api.main import create_app

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FONT.exists(), reason="fonts-dejavu-core is not installed"),
]


def scan(lines: list[str]) -> bytes:
    """A white page with printed lines, as a scanner would give it (PNG)."""
    img = Image.new("RGB", (900, 120 + 70 * len(lines)), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(FONT), 36)
    for i, line in enumerate(lines):
        d.text((40, 40 + 70 * i), line, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def blank_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), "white").save(buf, "PNG")
    return buf.getvalue()


def post(client, data: bytes, name: str) -> str:
    r = client.post("/upload", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def rows(settings) -> dict[str, tuple]:
    query = "SELECT id, caption, ocr_text, error FROM assets"
    return {r[0]: r[1:] for r in make_table(settings).connect().execute(query).fetchall()}


def test_a_batch_processed_before_ocr_gets_its_text_alone_and_search_finds_it(make_settings, tiny_models, instance):
    settings = make_settings(**tiny_models, DAM_OCR="1", DAM_BATCH_SIZE="8", DAM_INDEX_POLL_SECONDS="0.2")
    app = create_app(settings)
    with TestClient(app) as client:
        invoice = post(client, scan(["INVOICE 2026-117", "Total due 1234.56 EUR"]), "scan.png")
        menu = post(client, scan(["Lunch menu", "Tomato soup"]), "menu.png")
        blank = post(client, blank_png(), "blank.png")
        photo = post(client, jpeg_bytes(640, 480, seed=7), "photo.jpg")

        # The batch as a data folder from before OCR has it: rows, no text.
        (batch,), _ = run_pending(instance)
        before = rows(settings)
        assert set(before) == {invoice, menu, blank, photo}
        assert all(r[1] is None and r[2] is None for r in before.values()), before
        captions_done = instance.get_latest_materialization_event(AssetKey("image_captions"))

        # OCR for that batch alone, then its rows again: what the automation sensor requests.
        materialize([image_text], partition_key=batch, instance=instance, resources=resources())
        materialize_batch(instance, batch, selection=[asset_metadata])
        after = rows(settings)
        assert {i: r[0] for i, r in after.items()} == {i: r[0] for i, r in before.items()}  # captions untouched
        latest = instance.get_latest_materialization_event(AssetKey("image_captions"))
        assert latest.run_id == captions_done.run_id  # and not recomputed
        assert "INVOICE 2026-117" in after[invoice][1] and "1234.56" in after[invoice][1]
        assert "Lunch menu" in after[menu][1]
        assert after[blank][1] == "" and isinstance(after[photo][1], str)
        assert all(r[2] is None for r in after.values())

        meta = instance.get_latest_materialization_event(AssetKey("image_text")).asset_materialization.metadata
        assert meta["images"].value == 4 and meta["images_with_text"].value >= 2 and meta["errors"].value == 0

        # Search by the words in the image, over HTTP.
        materialize([search_index], instance=instance, resources=resources())
        app.state.catalog.index.refresh()
        hits = client.get("/search", params={"q": "invoice", "mode": "text"}).json()["items"]
        assert [(h["id"], h["match"]) for h in hits] == [(invoice, "text")]
        hits = client.get("/search", params={"q": "Total DUE", "k": 3}).json()["items"]
        assert hits[0]["id"] == invoice and hits[0]["match"] == "text" and len(hits) == 3
        assert all(h["match"] == "meaning" for h in hits[1:]) and invoice not in {h["id"] for h in hits[1:]}
        meaning = client.get("/search", params={"q": "invoice", "mode": "meaning", "k": 4}).json()["items"]
        assert {h["match"] for h in meaning} == {"meaning"} and len(meaning) == 4
        assert client.get("/search", params={"q": "zebra crossing", "mode": "text"}).json()["items"] == []
        detail = client.get(f"/assets/{menu}").json()
        assert detail["ocr_text"] == "Lunch menu\nTomato soup"
        assert client.get("/search", params={"q": "x", "mode": "ocr"}).status_code == 422


DEFINITIONS = """
import json

from dagster import AssetKey

from dam_assets.definitions import defs
graph = defs.resolve_asset_graph()
job = defs.resolve_job_def("enrich_batch")
keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
node = graph.get(AssetKey("asset_metadata"))
print(json.dumps({
    "job": sorted(keys),
    "metadata_parents": sorted(p.to_user_string() for p in node.parent_keys),
    "sensors": sorted(s.name for s in defs.sensors),
    "automated": sorted(k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition),
}))
"""


@pytest.mark.system
@pytest.mark.parametrize("ocr", ["0", "1"])
def test_ocr_on_puts_image_text_in_the_batch_job_and_under_automation(make_settings, ocr):
    env = {**os.environ, "DAM_OCR": ocr}
    make_settings(DAM_OCR=ocr)
    proc = subprocess.run([sys.executable, "-c", DEFINITIONS], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # The automation also re-computes captions and embeddings after a model change: on either way.
    assert "enrichment_automation_sensor" in got["sensors"]
    automated = ["asset_metadata", "image_captions", "image_embeddings", "search_segment"]
    if ocr == "1":
        assert "image_text" in got["job"] and "image_text" in got["metadata_parents"]
        assert got["automated"] == sorted([*automated, "image_text"])
    else:
        assert "image_text" not in got["job"] and "image_text" not in got["metadata_parents"]
        assert got["automated"] == automated
