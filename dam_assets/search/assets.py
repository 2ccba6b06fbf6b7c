"""The search index: a versioned snapshot of the `assets` table that the API swaps to live."""

from __future__ import annotations

from dagster import AssetKey, MaterializeResult, MetadataValue, asset

from dam_assets.resources import DamResource
from dam_core.index import build_index
from dam_core.layout import CURRENT_INDEX_KEY


@asset(
    deps=[AssetKey("asset_metadata")],
    kinds={"usearch", "numpy"},
    group_name="search",
    code_version="v1",
)
def search_index(dam: DamResource) -> MaterializeResult:
    """A versioned snapshot of `assets` with its vectors (HNSW when large); the API swaps to it live."""
    current = build_index(dam.store, dam.connect(), dam.exact_search_max)
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
