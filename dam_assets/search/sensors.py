"""The sensor that refreshes the search index whenever a batch's table rows land."""

from __future__ import annotations

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from dam_assets.search.jobs import search_index_job

_ACTIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


@sensor(
    job=search_index_job,
    minimum_interval_seconds=10,
    default_status=DefaultSensorStatus.RUNNING,
    description="Refreshes the search index after new asset_metadata materializations.",
)
def search_index_sensor(context: SensorEvaluationContext):
    """Request one index refresh per new table materialization, coalescing while one is pending."""
    records = context.instance.fetch_materializations(AssetKey("asset_metadata"), limit=1).records
    if not records:
        return SkipReason("no table yet")
    latest = records[0].storage_id
    if context.cursor and int(context.cursor) >= latest:
        return SkipReason("index is up to date")
    if context.instance.get_runs(RunsFilter(job_name=search_index_job.name, statuses=_ACTIVE), limit=1):
        return SkipReason("an index refresh is already pending")
    return SensorResult(run_requests=[RunRequest(run_key=f"index-{latest}")], cursor=str(latest))
