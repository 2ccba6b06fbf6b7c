"""Enrichments added later or changed fill in the past by themselves: Dagster's declarative automation.

When `image_text` (OCR) is switched on for a data folder that already holds processed batches,
every batch lacks it. FILL_IN requests each such batch once its upload is there and nothing is
running for it; CATCH_UP re-commits the batch's rows (`asset_metadata`) and its index segment
(`search_segment`) after a dependency changed outside their own run (the new text), reading the
stored captions and embeddings: nothing is recomputed but the new enrichment. The sensor's batch
runs are untouched: they materialize every asset in one run, which both conditions ignore.

When a model changes (DAM_EMBEDDING_MODEL, DAM_CAPTION_MODEL, or their runtime settings), the
asset's code version changes and every batch's embeddings (or captions) are stale: STALE requests
each batch once, the two conditions above then re-commit its rows and re-index it. The index keeps
serving the old model's vectors until the new model's index covers every row
(dam_core/index/write.py).

The automation sensor emits a backfill per tick (the UI's Backfills page shows its progress), whose
runs carry the lowest priority: the queue starts every new upload's batch run before them.
"""

from __future__ import annotations

from dagster import (
    AssetKey,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
)

# Below every batch run's priority (minus its batch time in microseconds, dam_assets/ingest/sensors.py).
BACKFILL_PRIORITY = str(-(2**62))

FILL_IN = (
    AutomationCondition.missing()
    & ~AutomationCondition.any_deps_missing()
    & ~AutomationCondition.in_progress()
    & ~AutomationCondition.any_deps_in_progress()
    # A batch whose last try failed is left to run retries and to people: no retry loop every tick.
    & ~AutomationCondition.execution_failed()
).with_label("fill in the past")

_CODE_CHANGED: AutomationCondition = AutomationCondition.code_version_changed()
STALE = (
    _CODE_CHANGED.since_last_handled()
    & ~AutomationCondition.missing()
    & ~AutomationCondition.any_deps_missing()
    & ~AutomationCondition.in_progress()
    & ~AutomationCondition.any_deps_in_progress()
).with_label("re-compute after its model changed")

CATCH_UP = (
    AutomationCondition.any_deps_updated().since_last_handled()
    & ~AutomationCondition.any_deps_missing()
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("after a dependency changed alone")


def automation_sensor(targets: list[AssetKey]) -> AutomationConditionSensorDefinition:
    """The sensor that evaluates FILL_IN, STALE and CATCH_UP on `targets`."""
    return AutomationConditionSensorDefinition(
        "enrichment_automation_sensor",
        target=AssetSelection.assets(*targets),
        run_tags={"dagster/priority": BACKFILL_PRIORITY},
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Fills in an enrichment added later (OCR) and re-computes one whose model changed, for every "
            "earlier batch, after new uploads."
        ),
    )
