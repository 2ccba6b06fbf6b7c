"""The search index: versioned snapshots of `assets` that the API swaps to live.

Each batch run adds its own rows as a segment (`search_segment`, a step of the batch's run: no
separate run queued behind other batches); `search_index` rebuilds the whole index from the table.
"""

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from dam_assets.enrichment.automation import CATCH_UP
from dam_assets.ingest.partitions import BACKFILL_POLICY, batches_partitions_def
from dam_assets.resources import DamResource
from dam_core.index.manifest import IndexManifest
from dam_core.index.write import build_index, update_index
from dam_core.layout import CURRENT_INDEX_KEY


def _metadata(dam: DamResource, current: IndexManifest) -> dict:
    return {
        "version": current.version,
        "dagster/row_count": current.rows,
        "vectors": current.vectors,
        "segments": len(current.segments),
        "removed_ids": len(current.removed),
        "dim": current.dim,
        "approximate": current.hnsw,
        "model": current.model or "",
        # Manifests after this batch may still hold queued uploads (an older batch still running).
        "low_watermark": current.low_watermark or "",
        "pointer": MetadataValue.path(f"{dam.store.describe()}/{CURRENT_INDEX_KEY}"),
    }


@asset(
    partitions_def=batches_partitions_def,
    deps=[AssetKey("asset_metadata")],
    kinds={"usearch", "numpy"},
    group_name="search",
    code_version="v1",
    backfill_policy=BACKFILL_POLICY,
    automation_condition=CATCH_UP,  # re-committed rows (new text, a new model's output), in the index too
)
def search_segment(context: AssetExecutionContext, dam: DamResource) -> MaterializeResult:
    """This batch's rows added to the search index as a new version (one segment; the API serves it within a poll)."""
    for batch in context.partition_keys:
        current = update_index(dam.store, dam.table.connect(), batch, dam.settings.dam_exact_search_max)
    return MaterializeResult(metadata={**_metadata(dam, current), "batches": len(context.partition_keys)})


@asset(
    deps=[AssetKey("asset_metadata")],
    kinds={"usearch", "numpy"},
    group_name="search",
    code_version="v2",
)
def search_index(dam: DamResource) -> MaterializeResult:
    """The whole `assets` table re-indexed in segments of at most 262,144 rows (after a model change, or to repair); batches keep adding segments."""
    current = build_index(dam.store, dam.table.connect(), dam.settings.dam_exact_search_max)
    return MaterializeResult(metadata=_metadata(dam, current))
