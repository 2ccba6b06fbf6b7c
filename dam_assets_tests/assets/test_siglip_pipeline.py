"""A SigLIP embedding model end to end: uploads through the API, the pipeline in-process, search by meaning."""

from __future__ import annotations

import pytest
from dagster import materialize
from fastapi.testclient import TestClient

from dam_assets.search.assets import search_index
from dam_assets_tests.conftest import jpeg_bytes, png_bytes
from dam_assets_tests.pipeline_harness import resources, run_pending
from dam_core.table import make_table
from dam_ingest_api.main import create_app


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory) -> str:
    from dam_models.tiny import write_tiny_siglip  # torch: only for the tests that use it

    return str(write_tiny_siglip(tmp_path_factory.mktemp("models") / "siglip"))


@pytest.mark.slow
def test_siglip_embeddings_tags_and_search(make_settings, tiny_models, tiny_siglip, instance):
    from dam_models.tiny import SIGLIP_DIM

    env = make_settings(
        **{**tiny_models, "DAM_EMBEDDING_MODEL": tiny_siglip},
        DAM_BATCH_SIZE="16",
        DAM_TAG_THRESHOLD="0",
        DAM_TAGS_TOP_K="3",
    )
    app = create_app(env)
    with TestClient(app) as client:
        sent = []
        for i, data in enumerate(
            [
                jpeg_bytes(480, 360, (220, 30, 30), seed=7),
                jpeg_bytes(300, 500, (20, 40, 230), seed=9),
                png_bytes(96, 64),
            ]
        ):
            r = client.post("/upload", files={"file": (f"{i}.img", data, "application/octet-stream")})
            assert r.status_code == 202, r.text
            sent.append(r.json()["id"])

        batches, _ = run_pending(instance)
        assert len(batches) == 1
        materialize([search_index], instance=instance, resources=resources())
        app.state.catalog.index.refresh()

        con = make_table(env).connect()
        rows = con.execute("SELECT id, error, len(embedding), tags FROM assets ORDER BY id").fetchall()
        assert sorted(r[0] for r in rows) == sorted(sent)
        for _, error, dim, tags in rows:
            assert error is None and dim == SIGLIP_DIM
            assert len(tags) == 3  # DAM_TAG_THRESHOLD=0 keeps the top 3 labels, scored by SigLIP's sigmoid

        item = client.get(f"/assets/{sent[0]}").json()
        assert item["status"] == "processed" and len(item["tags"]) == 3

        r = client.get("/search", params={"q": "a red photo", "mode": "meaning", "k": 3})
        assert r.status_code == 200, r.text
        hits = r.json()["items"]
        assert {h["id"] for h in hits} == set(sent)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
