"""A real batch run records the workers' metrics (dam_assets/metrics.py) and keeps the same figures in
its materialization metadata; and their files in PROMETHEUS_MULTIPROC_DIR add up over processes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from dagster import AssetKey
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.pipeline_harness import run_pending
from dam_core.messages import UploadMessage
from dam_core.metrics import scrape_registry
from dam_core.queue import make_queue
from dam_ingest_api.main import create_app
from dam_models.loading import clear_cache

STAGES = ("decode", "caption", "embed", "thumbnail", "write")


def snapshot() -> dict:
    """The worker metrics of this process that the test looks at."""
    get = REGISTRY.get_sample_value
    return {
        "ok": get("dam_images_enriched_total", {"outcome": "ok"}) or 0,
        "error": get("dam_images_enriched_total", {"outcome": "error"}) or 0,
        "lag": get("dam_upload_to_row_seconds_count") or 0,
        "lag_sum": get("dam_upload_to_row_seconds_sum") or 0,
        **{s: get("dam_enrichment_stage_seconds_count", {"stage": s}) or 0 for s in STAGES},
        **{f"load_{m}": get("dam_model_load_seconds_count", {"model": m}) or 0 for m in ("caption", "embedding")},
    }


def test_a_batch_run_records_enrichment_metrics(make_settings, tiny_models, instance):
    settings = make_settings(**tiny_models)
    client = TestClient(create_app(settings))
    for i in range(3):
        r = client.post("/upload", files={"file": (f"{i}.jpg", jpeg_bytes(96, 64, seed=70 + i), "image/jpeg")})
        assert r.status_code == 202, r.text
    missing = "d" * 32  # queued, but its original is gone: an error row
    make_queue(settings).publish(
        UploadMessage(
            id=missing,
            filename="gone.jpg",
            r2_key=f"assets/{missing}.jpg",
            mime_type="image/jpeg",
            bytes=10,
            sha256="0" * 64,
            width=10,
            height=10,
            uploaded_at=datetime.now(UTC),
        ).to_json()
    )
    clear_cache()  # this run loads each model once
    before = snapshot()
    (batch,), _ = run_pending(instance)
    after = snapshot()
    delta = {k: after[k] - before[k] for k in before}

    assert delta["ok"] == 3 and delta["error"] == 1
    assert delta["lag"] == 4 and 0 <= delta["lag_sum"] < 600
    assert all(delta[s] == 1 for s in STAGES), delta  # one observation per stage per batch
    assert delta["load_caption"] == 1 and delta["load_embedding"] == 1

    # The same figures in the metadata the Dagster UI shows.
    def metadata(key: str) -> dict:
        (rec,) = instance.fetch_materializations(AssetKey(key), limit=10).records
        return {k: v.value for k, v in rec.asset_materialization.metadata.items()}

    for key in ("image_captions", "image_embeddings", "image_thumbnails"):
        md = metadata(key)
        assert md["seconds"] >= 0 and md["decode_seconds"] >= 0, key
    assert metadata("image_captions")["model_load_seconds"] > 0
    assert metadata("asset_metadata")["write_seconds"] > 0


_CHILD = """
import sys
from dam_assets import metrics
metrics.run_finished(sys.argv[1])
with metrics.stage("caption"):
    pass
"""


@pytest.mark.system
def test_worker_metrics_add_up_over_processes(tmp_path):
    """Two run processes writing to one PROMETHEUS_MULTIPROC_DIR: the worker's scrape sums them."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    for outcome in ("success", "success", "failure"):
        subprocess.run([sys.executable, "-c", _CHILD, outcome], env=env, check=True, timeout=60)

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    try:
        text = generate_latest(scrape_registry()).decode()
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("dam_runs_total", (("outcome", "success"),))] == 2
    assert samples[("dam_runs_total", (("outcome", "failure"),))] == 1
    assert samples[("dam_enrichment_stage_seconds_count", (("stage", "caption"),))] == 3
