"""Changing the embedding model of a data folder `dam dev` filled: every batch is re-embedded by
itself (Dagster's automation, as a backfill), while searches run all through it and never get an
error, an empty page or vectors of two models; the new model's index is served once it covers
every row; a delete made during the switch stays deleted; captions are not recomputed. Then the
caption model changes: every caption is rewritten by the new model, no embedding recomputed."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import pytest
from dagster import AssetKey, DagsterInstance

from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.pipeline_harness import dam_sql
from dam_assets_tests.system.test_ocr_upgrade import start_dev, stop_dev, table, wait_for

IMAGES = 10


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory) -> str:
    from dam_models.tiny import write_tiny_siglip  # torch: only for the tests that use it

    return str(write_tiny_siglip(tmp_path_factory.mktemp("models") / "siglip"))


class Searcher(threading.Thread):
    """Asks /search and /assets again and again, recording every answer, until stopped."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.base = f"http://127.0.0.1:{port}"
        self.answers: list[tuple[float, int, list[dict]]] = []  # (time, status, hits)
        self.listings: list[tuple[int, list[dict]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.halt.is_set():
                r = client.get(f"{self.base}/search", params={"q": "a photo", "mode": "meaning", "k": 50})
                self.answers.append(
                    (time.monotonic(), r.status_code, r.json().get("items", []) if r.is_success else [])
                )
                page = client.get(f"{self.base}/assets", params={"limit": 100})
                self.listings.append((page.status_code, page.json().get("items", []) if page.is_success else []))
                time.sleep(0.3)


def _upload(port: int, i: int) -> str:
    body = jpeg_bytes(320, 240, seed=500 + i)
    r = httpx.post(f"http://127.0.0.1:{port}/upload", files={"file": (f"p{i}.jpg", body, "image/jpeg")}, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


@pytest.mark.timeout(900)
def test_an_embedding_model_change_re_embeds_every_batch_while_search_keeps_working(
    tmp_path, tiny_models, tiny_siglip, make_settings
):
    data = tmp_path / "data"
    make_settings(**tiny_models, DAM_DATA_DIR=str(data), DAM_BATCH_SIZE="4", DAM_AUTOMATION_INTERVAL_SECONDS="5")
    env = dict(os.environ)
    old_model = tiny_models["DAM_EMBEDDING_MODEL"]
    log = tmp_path / "dam-dev.log"

    # Before: `dam dev` with tiny CLIP fills the folder (several batches) and its index.
    proc, port = start_dev(env, tmp_path, log)
    try:
        ids = [_upload(port, i) for i in range(IMAGES)]

        def indexed():
            r = httpx.get(
                f"http://127.0.0.1:{port}/search", params={"q": "a photo", "mode": "meaning", "k": 50}, timeout=120
            )
            return r.status_code == 200 and len(r.json()["items"]) == IMAGES

        wait_for("every upload searchable", indexed, 300, log)
    finally:
        stop_dev(proc)
    before = table(env)
    with DagsterInstance.from_config(str(data / "dagster")) as instance:
        caption_runs = {e.run_id for e in instance.fetch_materializations(AssetKey("image_captions"), 100).records}
        assert len(instance.get_dynamic_partitions("ingest_batches")) >= 3
        # Nothing but the batch runs: the automation has nothing to do while no model changed.
        assert {r.job_name for r in instance.get_runs()} == {"enrich_batch"} and not instance.get_backfills()

    # After: the same folder with a SigLIP model. Nobody asks for anything; searches run throughout.
    proc, port = start_dev({**env, "DAM_EMBEDDING_MODEL": tiny_siglip}, tmp_path, log)
    searcher = Searcher(port)
    searcher.start()
    try:
        time.sleep(3)
        gone = ids[3]
        r = httpx.delete(f"http://127.0.0.1:{port}/assets/{gone}", timeout=60)
        assert r.status_code == 200, r.text
        deleted_at = time.monotonic()
        ids += [_upload(port, IMAGES + i) for i in range(2)]  # new uploads during the switch
        alive = set(ids) - {gone}

        def switched():
            answers = [a for a in searcher.answers if a[1] == 200 and a[2]]
            if not answers:
                return False
            hits = answers[-1][2]
            return {h["embedding_model"] for h in hits} == {tiny_siglip} and {h["id"] for h in hits} == alive

        wait_for("the SigLIP index served with every row", switched, 600, log)
        time.sleep(1)
    finally:
        searcher.halt.set()
        searcher.join(60)
        stop_dev(proc)

    answers = searcher.answers
    assert answers and all(status == 200 for _, status, _ in answers), {s for _, s, _ in answers}
    assert all(hits for _, _, hits in answers), "a search that had results answered an empty page"
    models = []
    for at, _, hits in answers:
        used = {h["embedding_model"] for h in hits}
        assert len(used) == 1, f"one answer mixed models: {used}"
        models.append(used.pop())
        if at > deleted_at + 6:  # the delete hides the asset from the API at once, the index within a poll
            assert gone not in {h["id"] for h in hits}
    switch = models.index(tiny_siglip)
    assert set(models[:switch]) <= {old_model} and set(models[switch:]) == {tiny_siglip}  # once, never back
    for status, items in searcher.listings:
        assert status == 200 and len(items) >= IMAGES - 1  # the listing never lost a row

    after = table(env)
    assert set(after) == alive
    assert {r["embedding_model"] for r in after.values()} == {tiny_siglip}
    assert {i: after[i]["caption"] for i in before if i in alive} == {
        i: r["caption"] for i, r in before.items() if i in alive
    }
    with DagsterInstance.from_config(str(data / "dagster")) as instance:
        captions_now = instance.fetch_materializations(AssetKey("image_captions"), 100).records
        embeddings_now = instance.fetch_materializations(AssetKey("image_embeddings"), 100).records
        tags = {e.run_id: instance.get_run_by_id(e.run_id).tags for e in [*captions_now, *embeddings_now]}
        backfills = instance.get_backfills()
    # Only the new uploads' batch runs captioned anything since: the old batches kept their captions.
    assert all("dagster/backfill" not in tags[e.run_id] for e in captions_now if e.run_id not in caption_runs)
    assert any("dagster/backfill" in tags[e.run_id] for e in embeddings_now)
    assert backfills, "the re-embedding ran as a backfill (the UI's Backfills page shows its progress)"

    # Then the caption model changes: every batch's captions are replaced by the new model's (the
    # row says which model wrote them), no embedding is recomputed, searches answer all through it.
    from dam_models.tiny import write_tiny_models  # torch: only here

    new_blip = str(write_tiny_models(tmp_path / "models-2")[0])
    with DagsterInstance.from_config(str(data / "dagster")) as instance:
        embedding_runs = {e.run_id for e in instance.fetch_materializations(AssetKey("image_embeddings"), 100).records}
    proc, port = start_dev({**env, "DAM_EMBEDDING_MODEL": tiny_siglip, "DAM_CAPTION_MODEL": new_blip}, tmp_path, log)
    searcher = Searcher(port)
    searcher.start()
    try:

        def recaptioned():
            out = dam_sql("SELECT id, caption_model FROM assets", env)
            rows = json.loads(out.stdout) if out.returncode == 0 else []
            listed = searcher.listings[-1][1] if searcher.listings else []
            return (
                {r["id"] for r in rows} == alive
                and {r["caption_model"] for r in rows} == {new_blip}
                and {i["caption_model"] for i in listed} == {new_blip}  # GET /assets says so too
            )

        wait_for("every caption written by the new model", recaptioned, 420, log)
    finally:
        searcher.halt.set()
        searcher.join(60)
        stop_dev(proc)
    assert searcher.answers and all(s == 200 and hits for _, s, hits in searcher.answers)
    assert all({h["embedding_model"] for h in hits} == {tiny_siglip} for _, _, hits in searcher.answers)
    with DagsterInstance.from_config(str(data / "dagster")) as instance:
        embeddings_later = {
            e.run_id for e in instance.fetch_materializations(AssetKey("image_embeddings"), 100).records
        }
    assert embeddings_later == embedding_runs  # no embedding recomputed for a caption model change
