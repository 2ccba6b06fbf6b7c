"""The job the sensor launches: every batch asset of one partition, in one process."""

from __future__ import annotations

from dagster import AssetKey, AssetSelection, define_asset_job, in_process_executor

from dam_assets.ingest.partitions import batches_partitions_def

# In one process the models load once per run and each image is decoded once for both. The
# batch's index segment is the run's last step: a new batch is searchable as soon as its rows
# land, never queued behind other batches' runs.
enrich_batch_job = define_asset_job(
    "enrich_batch",
    selection=AssetSelection.groups("ingest", "enrichment", "table")
    | AssetSelection.assets(AssetKey("search_segment")),
    partitions_def=batches_partitions_def,
    executor_def=in_process_executor,
    description="Caption, embed, tabulate and index one ingest batch.",
)
