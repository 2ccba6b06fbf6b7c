"""The Dagster code location loaded by workspace.yaml."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from dam_assets.enrichment.assets import asset_metadata, image_enrichment, upload_batch
from dam_assets.ingest.jobs import enrich_batch_job
from dam_assets.ingest.sensors import upload_queue_sensor
from dam_assets.maintenance.sensors import orphan_sweep_sensor
from dam_assets.resources import DamResource, ModelsResource
from dam_assets.search.assets import search_index, search_index_job, search_index_sensor

defs = Definitions(
    assets=[upload_batch, image_enrichment, asset_metadata, search_index],
    jobs=[enrich_batch_job, search_index_job],
    sensors=[upload_queue_sensor, search_index_sensor, orphan_sweep_sensor],
    resources={"dam": DamResource(), "models": ModelsResource()},
    # Materializations started from the UI also run in one process: models load once per run.
    executor=in_process_executor,
)
