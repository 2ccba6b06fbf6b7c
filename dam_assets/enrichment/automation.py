"""Enrichments added later or changed fill in the past by themselves: Dagster's declarative automation.

When `image_text` (OCR) is switched on for a data folder that already holds processed batches,
every batch lacks it. FILL_IN requests each such batch once its upload is there and nothing is
running for it; CATCH_UP puts the batch's rows (`asset_metadata`) and its index segment
(`search_segment`) in the same request, so they are re-committed after the new text, reading the
stored captions and embeddings: nothing is recomputed but the new enrichment. The sensor's batch
runs are untouched: they materialize every asset in one run, which no condition here looks at
(CATCH_UP follows only what this sensor requests: a trigger on "a dependency was updated" fired
after batch runs too, when a tick fell between a batch's rows and its segment).

When a model changes (DAM_EMBEDDING_MODEL, DAM_CAPTION_MODEL, or their runtime settings), the
asset's code version changes and every batch's embeddings (or captions) are stale: STALE requests
each such batch, and CATCH_UP re-commits its rows and re-indexes it in the same backfill. Which batches
are stale is read from the instance on every tick, not from the sensor's memory of the last code
version (Dagster's own `code_version_changed` sees nothing when the sensor first ticks after the
change, e.g. a `dam dev` restarted before its first tick): each materialization records the code
version it ran with as its data version (`made_by`), and `ModelChanged` is true for every batch
whose latest one recorded another. Materializations made before that record existed are caught
by `code_version_changed` instead. The index keeps
serving the old model's vectors until the new model's index covers every row
(dam_core/index/write.py).

The automation sensor emits a backfill per tick (the UI's Backfills page shows its progress), whose
runs carry the lowest priority: the queue starts every new upload's batch run before them.
"""

from __future__ import annotations

import warnings

from dagster import (
    AssetKey,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    AutomationContext,
    AutomationResult,
    BetaWarning,
    DagsterEventType,
    DataVersion,
    DefaultSensorStatus,
)
from dagster._core.definitions.data_version import DATA_VERSION_TAG  # indexed per partition by the event log

_MADE_BY = "made-by:"


def made_by(code_version: str) -> DataVersion:
    """The data version a materialization records: the code version (model, runtime) that made it."""
    return DataVersion(f"{_MADE_BY}{code_version}")


class ModelChanged(AutomationCondition[AssetKey]):
    """True for the partitions whose latest materialization was made by another code version than
    the asset's current one (one indexed query per tick: the latest data version per partition)."""

    @property
    def name(self) -> str:
        return "model_changed"

    @property
    def description(self) -> str:
        return "made by another model (its code version) than the current one"

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        current = context.asset_graph.get(context.key).code_version
        latest = context.asset_graph_view.instance.event_log_storage.get_latest_tags_by_partition(
            context.key, DagsterEventType.ASSET_MATERIALIZATION, [DATA_VERSION_TAG]
        )
        stale = {
            partition
            for partition, tags in latest.items()
            if tags.get(DATA_VERSION_TAG, "").startswith(_MADE_BY)
            and tags[DATA_VERSION_TAG] != made_by(current or "").value
        }
        return AutomationResult(context, context.candidate_subset.compute_intersection_with_partition_keys(stale))


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
    (ModelChanged() | _CODE_CHANGED.since_last_handled())
    & ~AutomationCondition.missing()
    & ~AutomationCondition.any_deps_missing()
    & ~AutomationCondition.in_progress()
    & ~AutomationCondition.any_deps_in_progress()
    # A batch whose re-run failed is left to run retries and to people: no retry loop every tick.
    & ~AutomationCondition.execution_failed()
).with_label("re-compute after its model changed")

CATCH_UP = (
    AutomationCondition.any_deps_match(AutomationCondition.will_be_requested())
    # A dependency missing is fine when this tick requests it (OCR's first text for a batch).
    & ~AutomationCondition.any_deps_match(AutomationCondition.missing() & ~AutomationCondition.will_be_requested())
    & ~AutomationCondition.in_progress()
).with_label("with a dependency this sensor requests")


def automation_sensor(targets: list[AssetKey], interval_seconds: int = 30) -> AutomationConditionSensorDefinition:
    """The sensor that evaluates FILL_IN, STALE and CATCH_UP on `targets`."""
    # `use_user_code_server` is marked beta: said once here, not in every process's log that loads the code.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return _sensor(targets, interval_seconds)


def _sensor(targets: list[AssetKey], interval_seconds: int) -> AutomationConditionSensorDefinition:
    return AutomationConditionSensorDefinition(
        "enrichment_automation_sensor",
        target=AssetSelection.assets(*targets),
        run_tags={"dagster/priority": BACKFILL_PRIORITY},
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        use_user_code_server=True,  # ModelChanged is Python of ours: evaluated in the code location
        description=(
            "Fills in an enrichment added later (OCR) and re-computes one whose model changed, for every "
            "earlier batch, after new uploads."
        ),
    )
