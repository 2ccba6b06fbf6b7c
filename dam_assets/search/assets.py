"""The search index asset and the sensor that refreshes it whenever a batch lands."""

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
    in_process_executor,
    sensor,
)

from dam_assets.resources import DamResource
from dam_core.index import build_index
from dam_core.layout import CURRENT_INDEX_KEY
from dam_core.table import connect


@asset(
    deps=[AssetKey("asset_metadata")],
    kinds={"usearch", "numpy"},
    group_name="search",
    code_version="v1",
)
def search_index(dam: DamResource) -> MaterializeResult:
    """A versioned snapshot of `assets` with its vectors (HNSW when large); the API swaps to it live."""
    settings = dam.settings
    current = build_index(dam.store, connect(settings), settings.dam_exact_search_max)
    return MaterializeResult(
        metadata={
            "version": current["version"],
            "dagster/row_count": current["rows"],
            "vectors": current["vectors"],
            "dim": current["dim"],
            "approximate": current["hnsw"],
            "model": current["model"] or "",
            # Manifests after this batch may still hold queued uploads (an older batch still running).
            "low_watermark": current["low_watermark"] or "",
            "pointer": MetadataValue.path(f"{dam.store.describe()}/{CURRENT_INDEX_KEY}"),
        }
    )


search_index_job = define_asset_job(
    "refresh_search_index",
    selection=[search_index],
    executor_def=in_process_executor,
    description="Rebuild the search index from the assets table.",
)

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
