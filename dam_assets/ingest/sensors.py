"""The upload-queue sensor: queue -> batch manifests -> dynamic partitions + run requests."""

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from dam_assets.ingest.draining import drain
from dam_assets.ingest.jobs import enrich_batch_job
from dam_assets.ingest.partitions import BATCHES_PARTITIONS, batches_partitions_def
from dam_assets.resources import DamResource
from dam_assets.run_queues import MODELS_QUEUE, QUEUE_TAG
from dam_core.manifests import batch_key_time, batches_after

MAX_BATCHES_PER_TICK = 50
BATCH_TAG = "dam/batch"


def batch_run_tags(batch: str) -> dict[str, str]:
    """Tags of a batch's run; the queue starts older batches first.

    A retry inherits its run's tags and is queued last, so in plain FIFO the retry of a run
    killed in a crash would wait behind every batch queued since. Priority falls with the
    batch's time, to the microsecond (one tick makes many batches within a second): the
    retry goes ahead of newer batches. Runs without the tag (a materialization from the UI,
    the search index) have priority 0 and go first.
    """
    t = batch_key_time(batch)
    micros = int(t.timestamp()) * 1_000_000 + t.microsecond
    # On the production instance the run goes to the model workers (dam_assets/celery_launcher.py).
    return {BATCH_TAG: batch, "dagster/priority": str(-micros), QUEUE_TAG: MODELS_QUEUE}


@sensor(
    job=enrich_batch_job,
    # The daemon's sensor loop passes at most every 5 s (dagster/_daemon/sensor.py), and a pass
    # skips a sensor whose last tick started less than this ago: at 5 the ticks came on every
    # other pass (10 s apart). Below 5 it ticks on every pass. A tick on an empty queue waits up to
    # DAM_SENSOR_WAIT_SECONDS (4 s) for the first upload, so an upload is taken when it arrives, not
    # at the next pass 0-5 s later; then one manifest listing (bench/latency.py measures it).
    minimum_interval_seconds=2,
    default_status=DefaultSensorStatus.RUNNING,
    description="Drains the upload queue into batch manifests, one partition and run per batch.",
)
def upload_queue_sensor(context: SensorEvaluationContext, dam: DamResource) -> SensorResult:
    """Drain the queue, then request a run for every manifest after the cursor."""
    report = drain(
        dam.queue,
        dam.store,
        batch_size=dam.settings.dam_batch_size,
        budget_seconds=dam.settings.dam_sensor_budget_seconds,
        max_batches=MAX_BATCHES_PER_TICK,
        floor=context.cursor,  # new keys sort after it even if the clock stepped back
        first_wait_seconds=dam.settings.dam_sensor_wait_seconds,
    )
    for reason in report.dead_lettered:
        context.log.warning(f"dead-lettered: {reason}")
    # Reconcile: every manifest after the cursor gets its partition and a run. Dagster stores
    # partitions, runs and the cursor only after this returns, so a crash in between leaves
    # manifests after the old cursor: the next tick requests them again; run_key dedups runs.
    pending = list(batches_after(dam.store, context.cursor))
    if not pending:
        # Nothing to say, so no skip reason: `dam dev` prints only ticks that did something
        # (dam_cli/dagster_ui.py); the UI still lists every tick.
        return SensorResult()
    missing = [k for k in pending if not context.instance.has_dynamic_partition(BATCHES_PARTITIONS, k)]
    context.log.info(
        f"drained {report.messages} message(s) into {len(report.batches)} batch(es); "
        f"{len(pending)} batch(es) pending, {len(missing)} new partition(s)"
    )
    return SensorResult(
        run_requests=[RunRequest(partition_key=k, run_key=k, tags=batch_run_tags(k)) for k in pending],
        dynamic_partitions_requests=[batches_partitions_def.build_add_request(missing)] if missing else [],
        cursor=pending[-1],
    )
