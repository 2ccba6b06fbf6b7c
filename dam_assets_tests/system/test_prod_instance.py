"""The production Dagster instance (dagster.prod.yaml) on the machine's real PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

from dagster import DagsterInstance
from fastapi.testclient import TestClient

from dam_assets.ingest.partitions import batches_partitions_def
from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.pipeline_harness import run_pending
from dam_core.table import make_table
from dam_ingest_api.main import create_app

REPO = Path(__file__).resolve().parents[2]


def test_pipeline_on_postgres_instance(tmp_path, pg_url, monkeypatch, make_settings, tiny_models):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.prod.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", pg_url)
    settings = make_settings(**tiny_models)
    client = TestClient(create_app(settings))
    ids = {
        client.post(
            "/upload", files={"file": (f"{i}.jpg", jpeg_bytes(160, 120, (i * 40, 90, 200)), "image/jpeg")}
        ).json()["id"]
        for i in range(3)
    }
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        (batch,), _ = run_pending(instance)
        assert instance.has_dynamic_partition(batches_partitions_def.name, batch)
        runs = instance.get_run_records()
        assert runs and runs[0].dagster_run.is_success
    got = {r[0] for r in make_table(settings).connect().sql("SELECT id FROM assets").fetchall()}
    assert got == ids
