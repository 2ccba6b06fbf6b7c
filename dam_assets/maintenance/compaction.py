"""`compact_assets`: merge the table's small files and drop the files its history no longer needs."""

from typing import Optional

from dagster import (
    AssetExecutionContext,
    AssetKey,
    Config,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    SensorEvaluationContext,
    SkipReason,
    asset,
    define_asset_job,
    in_process_executor,
    sensor,
)
from pydantic import Field

from dam_assets.config import SETTINGS
from dam_assets.resources import DamResource
from dam_assets.run_queues import LIGHT_QUEUE, QUEUE_TAG


class CompactConfig(Config):
    retention_hours: Optional[float] = Field(
        default=None,
        ge=0,
        description=(
            "Remove files that left the table longer ago than this. Unset: DAM_TABLE_RETENTION_HOURS. "
            "0 erases deleted rows from the history now (time travel to older versions then fails)."
        ),
    )


@asset(
    deps=[AssetKey("asset_metadata")],
    kinds={"deltalake"},
    group_name="maintenance",
    description="Compacts the assets table's small files and vacuums files older than the retention.",
)
def compact_assets(context: AssetExecutionContext, config: CompactConfig, dam: DamResource) -> MaterializeResult:
    retention = dam.table.retention_hours if config.retention_hours is None else config.retention_hours
    done = dam.table.compact(retention)
    if done is None:
        context.log.info("no table yet: nothing to compact")
        return MaterializeResult(metadata={"files_before": 0, "files_after": 0, "retention_hours": retention})
    return MaterializeResult(metadata={**done.as_metadata(), "table": MetadataValue.path(dam.table.describe())})


compact_assets_job = define_asset_job(
    "compact_assets_job",
    selection=[compact_assets],
    executor_def=in_process_executor,
    description="Compact the assets table and vacuum files past the retention.",
    tags={QUEUE_TAG: LIGHT_QUEUE},
)

compact_assets_schedule = ScheduleDefinition(
    job=compact_assets_job,
    cron_schedule=SETTINGS.dam_compact_cron,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
)


_ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


@sensor(
    job=compact_assets_job,
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Requests compact_assets when the assets table holds more than DAM_COMPACT_MAX_FILES data files: "
        "a batch's commit costs grow with the file count, so compaction keeps them flat between the "
        "nightly runs."
    ),
)
def compact_assets_sensor(context: SensorEvaluationContext, dam: DamResource):
    table = dam.table.open()
    files = len(table.file_uris()) if table is not None else 0
    if table is None or files <= dam.table.compact_max_files:
        return SkipReason(f"{files} data files (compacts above {dam.table.compact_max_files})")
    if context.instance.get_runs(RunsFilter(job_name=compact_assets_job.name, statuses=_ACTIVE), limit=1):
        return SkipReason(f"{files} data files; a compaction is already running")
    return RunRequest(run_key=f"compact-v{table.version()}", tags={"files": str(files)})
