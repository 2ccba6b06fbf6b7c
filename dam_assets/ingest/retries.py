"""A backstop for Dagster's automatic retries: a batch whose failed run was to be retried, and never was.

`run_retries` in dagster.yaml re-executes a failed batch run: the daemon's event-log consumer sees
the RUN_FAILURE, tags the run `dagster/will_retry=true`, launches the retry and tags the failed run
with the retry's id (`dagster/auto_retry_run_id`). Once, in CI, a run killed while STARTING was
failed by run monitoring after its start timeout, tagged `will_retry=true`, and no retry was ever
launched or logged; its batch then never reached the table, which breaks the promise that every
accepted upload ends as a row with no manual step.

This sensor finds such runs (a batch run FAILED with `will_retry=true`, no retry id, no child run
and no later run for its batch, failed more than STRANDED_AFTER_SECONDS ago) and requests the batch
again, once per stranded run (the run key names it). The batch's assets are idempotent (its
outputs are keyed objects and its rows are merged by id), so a retry that Dagster launches late
after all costs a second run, never a second row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG

from dam_assets.ingest.jobs import enrich_batch_job
from dam_assets.ingest.sensors import BATCH_TAG, batch_run_tags

# Dagster's retry follows the failure within a daemon iteration or two; this is far past that.
STRANDED_AFTER_SECONDS = 180
# Failures older than this are not looked at (a bounded query per tick).
LOOKBACK_SECONDS = 7 * 24 * 3600
MAX_PER_TICK = 20


@dataclass(frozen=True)
class Stranded:
    batch: str
    run_id: str

    @property
    def run_key(self) -> str:
        return f"{self.batch}:after:{self.run_id}"


def stranded_batch_runs(
    instance: DagsterInstance, now: float, after_seconds: float = STRANDED_AFTER_SECONDS
) -> list[Stranded]:
    """Failed batch runs that Dagster said it would retry and did not, the oldest first."""
    records = instance.get_run_records(
        filters=RunsFilter(
            job_name=enrich_batch_job.name,
            statuses=[DagsterRunStatus.FAILURE],
            tags={WILL_RETRY_TAG: "true"},
            updated_after=_utc(now - LOOKBACK_SECONDS),
            updated_before=_utc(now - after_seconds),
        ),
        limit=200,
    )
    out: list[Stranded] = []
    for record in sorted(records, key=lambda r: r.storage_id):
        run = record.dagster_run
        batch = run.tags.get(BATCH_TAG)
        if not batch or run.tags.get(AUTO_RETRY_RUN_ID_TAG):
            continue
        later = instance.get_run_records(filters=RunsFilter(tags={BATCH_TAG: batch}), limit=50)
        if any(r.storage_id > record.storage_id for r in later):  # storage ids grow with every run added
            continue  # retried (by Dagster, by this sensor, or by hand): that run is the batch's now
        out.append(Stranded(batch, run.run_id))
        if len(out) >= MAX_PER_TICK:
            break
    return out


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@sensor(
    job=enrich_batch_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Requests a batch again when its failed run was marked for an automatic retry (dagster/will_retry) "
        f"and no retry was launched within {STRANDED_AFTER_SECONDS} s: a backstop for run_retries."
    ),
)
def stranded_retry_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    stranded = stranded_batch_runs(context.instance, time.time(), STRANDED_AFTER_SECONDS)
    if not stranded:
        return SkipReason()
    for s in stranded:
        context.log.warning(
            f"batch {s.batch}: run {s.run_id} failed, was to be retried and was not; requesting it again"
        )
    return SensorResult(
        run_requests=[
            RunRequest(partition_key=s.batch, run_key=s.run_key, tags=batch_run_tags(s.batch)) for s in stranded
        ]
    )
