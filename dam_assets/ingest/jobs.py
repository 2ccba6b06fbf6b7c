"""The job the sensor launches: every batch asset of one partition, in one process."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor

from dam_assets.ingest.partitions import batches_partitions_def

# In one process the models load once per run and each image is decoded once for both.
enrich_batch_job = define_asset_job(
    "enrich_batch",
    selection=AssetSelection.groups("ingest", "enrichment", "table"),
    partitions_def=batches_partitions_def,
    executor_def=in_process_executor,
    description="Caption, embed and tabulate one ingest batch.",
)
