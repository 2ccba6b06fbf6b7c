"""The job that rebuilds the search index from the whole table (batches index themselves in their own run)."""

from __future__ import annotations

from dagster import define_asset_job, in_process_executor

from dam_assets.run_queues import LIGHT_QUEUE, QUEUE_TAG
from dam_assets.search.assets import search_index

search_index_job = define_asset_job(
    "refresh_search_index",
    selection=[search_index],
    executor_def=in_process_executor,
    description="Rebuild the search index from the whole assets table (batch runs add their own rows).",
    tags={QUEUE_TAG: LIGHT_QUEUE},  # no models: the light workers, on the production instance
)
