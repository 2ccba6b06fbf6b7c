"""The batch manifest as an asset: the root of every batch's lineage."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from dam_assets.ingest.partitions import BACKFILL_POLICY, batches_partitions_def
from dam_assets.markdown import md_table
from dam_assets.resources import DamResource
from dam_core.layout import manifest_key
from dam_core.manifests import read_manifest

PREVIEW_ROWS = 20


@asset(
    partitions_def=batches_partitions_def,
    kinds={"json"},
    group_name="ingest",
    code_version="v1",
    backfill_policy=BACKFILL_POLICY,
)
def upload_batch(context: AssetExecutionContext, dam: DamResource) -> MaterializeResult:
    """The batch manifest: the uploads the sensor drained from the queue into this partition."""
    manifests = [read_manifest(dam.store, batch) for batch in context.partition_keys]
    uploads = [u for m in manifests for u in m.uploads]
    return MaterializeResult(
        metadata={
            "batches": len(manifests),
            "uploads": len(uploads),
            "bytes": sum(u.bytes for u in uploads),
            "manifest": MetadataValue.path(f"{dam.store.describe()}/{manifest_key(manifests[0].batch)}"),
            "preview": MetadataValue.md(manifest_preview(uploads)),
        }
    )


def manifest_preview(uploads) -> str:
    """The first PREVIEW_ROWS uploads as a Markdown table (filenames are data: escaped)."""
    return md_table(
        ["id", "filename", "type", "size"],
        ([u.id, u.filename, u.mime_type, f"{u.width}x{u.height}"] for u in uploads[:PREVIEW_ROWS]),
    )
