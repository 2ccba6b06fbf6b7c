"""The code location loads whole and fast: every asset, job and sensor, and resources built from settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from dagster import AssetKey, Definitions

from dam_assets.definitions import defs

ASSETS = {
    "upload_batch": "ingest",
    "image_captions": "enrichment",
    "image_embeddings": "enrichment",
    "image_thumbnails": "enrichment",
    "asset_metadata": "table",
    "search_segment": "search",
    "search_index": "search",
    "compact_assets": "maintenance",
}
JOBS = {"enrich_batch", "refresh_search_index", "compact_assets_job"}
SENSORS = {
    "upload_queue_sensor",
    "stranded_retry_sensor",
    "orphan_sweep_sensor",
    "compact_assets_sensor",
    "enrichment_automation_sensor",
}


def test_every_asset_job_and_sensor_loads_with_a_description():
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    assert {k: s.group_name for k, s in specs.items()} == ASSETS
    assert all(s.description for s in specs.values()), {k: s.description for k, s in specs.items()}
    # Code versions are what the UI compares to mark outputs stale: a rename here would stale every batch.
    versions = {k: s.code_version for k, s in specs.items()}
    assert versions["image_captions"].startswith("blip:") and versions["image_embeddings"].startswith("clip:")
    assert {k: versions[k] for k in ("upload_batch", "image_thumbnails", "asset_metadata", "search_index")} == {
        "upload_batch": "v1",
        "image_thumbnails": "webp256:v1",
        "asset_metadata": "delta-v2",
        "search_index": "v2",
    }
    batch_assets = set(ASSETS) - {"search_index", "compact_assets"}
    assert {k for k, s in specs.items() if s.partitions_def is not None} == batch_assets
    assert {s.partitions_def.name for k, s in specs.items() if k in batch_assets} == {"ingest_batches"}
    # A batch's run indexes the batch itself: no index run waits in the queue behind other batches.
    assert AssetKey("search_segment") in repo.get_job("enrich_batch").asset_layer.executable_asset_keys

    checks = repo.asset_graph.get_check_keys_for_assets([AssetKey("asset_metadata")])
    assert {c.name for c in checks} == {"one_row_per_upload", "unique_ids", "embeddings_valid", "captions_present"}

    assert JOBS <= {j.name for j in repo.get_all_jobs()}
    assert all(repo.get_job(name).description for name in JOBS)
    assert {s.name for s in repo.sensor_defs} == SENSORS
    assert all(s.description for s in repo.sensor_defs)
    # Table maintenance runs on a schedule that is on by default, on the light queue.
    (schedule,) = repo.schedule_defs
    assert schedule.job_name == "compact_assets_job" and schedule.default_status.value == "RUNNING"
    assert repo.get_job("compact_assets_job").tags["dagster-celery/queue"] == "dam-light"


def _load(env: dict[str, str], script: str) -> dict:
    """Run `script` after importing the code location in a fresh interpreter; it prints one JSON object."""
    # A fresh interpreter, as a code server is: the settings are read once, when the module is imported.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_")) and k != "AMQP_URL"}
    code = "import json\nfrom dam_assets.definitions import defs\n" + textwrap.dedent(script)
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.system
def test_resources_are_typed_and_built_once_from_the_settings(tmp_path):
    env = {
        "DAM_DATA_DIR": str(tmp_path),
        "R2_ENDPOINT": "http://127.0.0.1:9",
        "R2_BUCKET": "photos",
        "R2_ACCESS_KEY_ID": "key-id-value",
        "R2_SECRET_ACCESS_KEY": "secret-value",
        "AMQP_URL": "amqp://dam:amqp-password@127.0.0.1:9/%2F",
        "DAM_BATCH_SIZE": "7",
        "DAM_CAPTION_MODEL": "/models/blip",
        "DAM_TAGS_TOP_K": "2",
    }
    got = _load(
        env,
        """
        from dagster import build_resources
        from dagster._core.remote_representation.external_data import RepositorySnap
        from dagster._serdes import serialize_value

        from dam_assets.resources import DamResource, ModelsResource
        from dam_core.queue import make_queue
        from dam_core.settings import load_settings
        from dam_core.store import make_store

        dam, models = defs.resources["dam"], defs.resources["models"]
        ui = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))
        with build_resources({"dam": dam}) as ready:
            store, queue = ready.dam.store, ready.dam.queue
        api_store, api_queue = make_store(load_settings()), make_queue(load_settings())
        config = lambda s: {k: getattr(s.client.meta.config, k) for k in
                            ("connect_timeout", "read_timeout", "max_pool_connections", "retries")}
        print(json.dumps({
            "types": [type(dam) is DamResource, type(models) is ModelsResource],
            "batch_size": dam.values["dam_batch_size"], "bucket": dam.values["r2_bucket"],
            "data_dir": dam.values["dam_data_dir"],
            "caption_model": models.caption_model, "tags_top_k": models.tags_top_k,
            "secret_names": [dam.r2_secret_access_key.env_var_name, dam.amqp_url.env_var_name],
            "ui_shows_secrets": any(s in ui for s in ("key-id-value", "secret-value", "amqp-password")),
            "store": [type(store).__name__, store.bucket, config(store) == config(api_store)],
            "queue": [type(queue).__name__, type(queue) is type(api_queue), queue.url == api_queue.url],
        }))
    """,
    )
    assert got["types"] == [True, True]
    assert (got["batch_size"], got["bucket"], got["data_dir"]) == (7, "photos", str(tmp_path))
    assert (got["caption_model"], got["tags_top_k"]) == ("/models/blip", 2)
    assert got["secret_names"] == ["R2_SECRET_ACCESS_KEY", "AMQP_URL"] and not got["ui_shows_secrets"]
    # The API's S3 client exactly: its timeouts, retries and pool, not a second way of building one.
    assert got["store"] == ["S3Store", "photos", True]
    assert got["queue"] == ["RabbitQueue", True, True]


@pytest.mark.system
def test_a_broken_environment_still_loads_and_names_the_variable(tmp_path):
    got = _load(
        {"DAM_DATA_DIR": str(tmp_path), "R2_ENDPOINT": "http://127.0.0.1:9"},
        """
        from dagster import DagsterInstance, Definitions, build_sensor_context

        Definitions.validate_loadable(defs)
        error = defs.resources["dam"].configuration_error
        sensor = defs.resolve_sensor_def("upload_queue_sensor")
        try:
            with DagsterInstance.ephemeral() as instance:
                sensor(build_sensor_context(instance=instance, resources=defs.resources))
            tick = "ran"
        except Exception as err:
            tick = str(err)
        print(json.dumps({"error": error, "tick": tick}))
    """,
    )
    assert "R2_BUCKET" in got["error"]
    assert "R2_BUCKET" in got["tick"]  # the sensor's tick fails, saying why, in the UI
    # ...and nothing fell back to the local folder that the defaults would have used.
    assert list(tmp_path.iterdir()) == []
