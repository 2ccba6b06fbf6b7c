"""The daemon-run sensor that sweeps orphaned originals (the logic is Dagster-free, in sweep.py)."""

from __future__ import annotations

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from dam_assets.maintenance.sweep import sweep_orphans, sweep_staging
from dam_assets.resources import DamResource

SWEEP_INTERVAL_SECONDS = 900
SWEEP_BUDGET_SECONDS = 40  # under the daemon's 60 s limit for one sensor evaluation


@sensor(
    minimum_interval_seconds=SWEEP_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Removes orphaned originals: objects under assets/ older than DAM_ORPHAN_GRACE_SECONDS that have "
        "no upload marker and are named by no batch manifest and no table row (an upload whose queue "
        "message was never confirmed). Skips while the upload queue has waiting messages. On S3/R2, also "
        "aborts direct uploads never completed and removes their staging objects under incoming/ once "
        "older than DAM_DIRECT_ABANDON_SECONDS."
    ),
)
def orphan_sweep_sensor(context: SensorEvaluationContext, dam: DamResource) -> SkipReason:
    """One sweep per tick; it requests no runs, the tick's message says what it did."""
    report = sweep_orphans(
        dam.store,
        grace_seconds=dam.settings.dam_orphan_grace_seconds,
        queue=dam.queue,
        # Read only when the sweep has candidates: the whole table is the costliest reference.
        table_keys=lambda: [
            r[0] for r in dam.table.connect().execute("SELECT DISTINCT r2_key FROM assets_all").fetchall()
        ],
        budget_seconds=SWEEP_BUDGET_SECONDS,
    )
    for key in report.deleted:
        context.log.info(f"removed orphaned original {key}")
    staging = sweep_staging(dam.store, older_than_seconds=dam.settings.dam_direct_abandon_seconds)
    said = [report.summary()] if report.deleted or report.skipped or report.out_of_time else []
    said += [staging.summary()] if staging.aborted or staging.deleted else []
    # A sweep that removed nothing says nothing (the console stays quiet; the UI lists the tick).
    return SkipReason("; ".join(said) or None)
