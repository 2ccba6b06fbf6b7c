"""The Dagster code location loaded by workspace.yaml: the assets, jobs and sensors, and their resources."""

from __future__ import annotations

from dagster import ConfigurableResource, Definitions, in_process_executor

from dam_assets.config import SETTINGS, SETTINGS_ERROR
from dam_assets.enrichment.assets import CAPTIONS, EMBEDDINGS, TEXT, asset_metadata, image_enrichment, image_text
from dam_assets.enrichment.automation import automation_sensor
from dam_assets.ingest.assets import upload_batch
from dam_assets.ingest.jobs import enrich_batch_job
from dam_assets.ingest.retries import stranded_retry_sensor
from dam_assets.ingest.sensors import upload_queue_sensor
from dam_assets.maintenance.compaction import (
    compact_assets,
    compact_assets_job,
    compact_assets_schedule,
    compact_assets_sensor,
)
from dam_assets.maintenance.sensors import orphan_sweep_sensor
from dam_assets.resources import DamResource, ModelsResource
from dam_assets.search.assets import search_index, search_segment
from dam_assets.search.jobs import search_index_job
from dam_core.settings import Settings


def build_resources(settings: Settings, configuration_error: str | None = None) -> dict[str, ConfigurableResource]:
    """The `dam` and `models` resources from settings; with an error, `dam` refuses to run and says why."""
    return {
        "dam": DamResource.from_settings(settings, configuration_error),
        "models": ModelsResource.from_settings(settings),
    }


# OCR (DAM_OCR) is an enrichment of its own: defined, and in the batch job (its group), only when on;
# then the automation sensor also fills it in for every batch processed before it was switched on.
# The sensor re-computes captions and embeddings whose model changed (their code version) too.
OCR = [image_text] if SETTINGS.dam_ocr else []
AUTOMATION = [
    automation_sensor(
        [*([TEXT] if SETTINGS.dam_ocr else []), CAPTIONS, EMBEDDINGS, asset_metadata.key, search_segment.key],
        SETTINGS.dam_automation_interval_seconds,
    )
]

defs = Definitions(
    assets=[upload_batch, image_enrichment, *OCR, asset_metadata, search_segment, search_index, compact_assets],
    jobs=[enrich_batch_job, search_index_job, compact_assets_job],
    schedules=[compact_assets_schedule],
    sensors=[upload_queue_sensor, stranded_retry_sensor, orphan_sweep_sensor, compact_assets_sensor, *AUTOMATION],
    resources=build_resources(SETTINGS, SETTINGS_ERROR),
    # Materializations started from the UI also run in one process: models load once per run.
    executor=in_process_executor,
)
