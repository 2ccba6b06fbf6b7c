"""The enrichment assets of one ingest batch: captions, embeddings and thumbnails, then the table rows."""

import functools
import os
import socket
from datetime import UTC, datetime

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)

from dam_assets import metrics
from dam_assets.config import SETTINGS
from dam_assets.enrichment.pipeline import Enrichment, run_step
from dam_assets.enrichment.renditions import THUMBNAIL_LONG_EDGE, write_vectors
from dam_assets.enrichment.rows import RowChecks, batch_rows
from dam_assets.enrichment.stages import (
    read_captions,
    read_embeddings,
    read_exif,
    write_captions,
    write_embeddings,
    write_exif,
)
from dam_assets.ingest.assets import upload_batch
from dam_assets.ingest.partitions import batches_partitions_def
from dam_assets.markdown import md_table, md_text
from dam_assets.resources import DamResource, ModelsResource
from dam_core.imaging import decode_batch
from dam_core.manifests import read_manifest
from dam_core.settings import Settings
from dam_core.table import delete_rows, location, write_batch
from dam_core.tombstones import is_deleted, read_tombstones
from dam_models.versions import caption_version, embedding_version


def _track_loads():
    """Time the model loads of this step (imported here: loading the code location needs no torch)."""
    from dam_models.loading import track_loads

    return track_loads()


def _where(load) -> dict:
    """Which process ran the step and what its model cost: 0 s when a warm worker already held it."""
    return {"model_load_seconds": round(load.seconds, 3), "worker_host": socket.gethostname(), "worker_pid": os.getpid()}


BACKFILL_TAG = "dagster/backfill"
CAPTIONS = AssetKey("image_captions")
EMBEDDINGS = AssetKey("image_embeddings")
THUMBNAILS = AssetKey("image_thumbnails")


def caption_code_version(settings: Settings) -> str:
    """The captioner's own version (model, generation, dtype, runtime): a change marks every batch's captions stale."""
    return caption_version(
        settings.dam_caption_model, settings.dam_caption_max_tokens,
        dtype=settings.dam_dtype, runtime=settings.dam_runtime, quantize=settings.dam_quantize,
    )


def embedding_code_version(settings: Settings) -> str:
    """Model id and tag settings: tags are computed from the embeddings in the same step."""
    tags = f"{settings.dam_tags_file or 'default'}:{settings.dam_tag_threshold}:{settings.dam_tags_top_k}"
    return f"{embedding_version(settings.dam_embedding_model, settings.dam_dtype, settings.dam_runtime)}:tags={tags}"


@multi_asset(
    specs=[
        AssetSpec(
            CAPTIONS,
            deps=[upload_batch],
            description="A BLIP caption for every image of the batch.",
            kinds={"pytorch", "blip"},
            group_name="enrichment",
            code_version=caption_code_version(SETTINGS),
            skippable=True,
        ),
        AssetSpec(
            EMBEDDINGS,
            deps=[upload_batch],
            description="A CLIP image embedding for every image of the batch; also vectors/{id}.json.",
            kinds={"pytorch", "clip"},
            group_name="enrichment",
            code_version=embedding_code_version(SETTINGS),
            skippable=True,
        ),
        AssetSpec(
            THUMBNAILS,
            deps=[upload_batch],
            description="A 256 px WebP thumbnail for every image: thumbnails/{id}.webp.",
            kinds={"webp", "pillow"},
            group_name="enrichment",
            code_version="webp256:v1",
            skippable=True,
        ),
    ],
    partitions_def=batches_partitions_def,
    can_subset=True,
)
def image_enrichment(context: AssetExecutionContext, dam: DamResource, models: ModelsResource):
    """Decode each image once, then caption, embed, tag and thumbnail the batch, chunk by chunk."""
    batch = context.partition_key
    store = dam.store
    selected = context.selected_asset_keys
    loads = {}
    work = Enrichment(thumbnails=THUMBNAILS in selected)
    if CAPTIONS in selected:
        with _track_loads() as loads["caption"]:
            work.captioner = models.captioner()
    if EMBEDDINGS in selected:
        work.labels, work.threshold, work.top_k = models.vocabulary(), models.tag_threshold, models.tags_top_k
        with _track_loads() as loads["embedding"]:
            work.embedder = models.embedder()
    for name, load in loads.items():
        metrics.model_loaded(name, load.seconds, load.loads)

    decode = functools.partial(
        decode_batch,
        pixel_budget_size=dam.decode_pixel_budget,
        max_pixels=dam.max_image_pixels,
        max_image_side=dam.max_image_side,
    )
    step = run_step(
        store, read_manifest(store, batch).uploads, work, decode,
        chunk_size=models.chunk_size((work.captioner or work.embedder).device if loads else "cpu"),
        prefetch=models.prefetch_chunks,
    )
    metrics.stages_observed(step.busy)
    decoded = step.decoded
    errors = sum(1 for d in decoded if d.image is None)
    # The EXIF columns were read during the decode: staged whichever assets are selected.
    write_exif(store, batch, {d.upload.id: d.exif for d in decoded if d.exif is not None})
    timing = {
        "step_seconds": round(step.wall, 3),
        "stage_seconds": MetadataValue.json({k: round(v, 3) for k, v in sorted(step.busy.items())}),
        "decode_seconds": round(step.busy.get("decode", 0.0), 3),
    }

    if step.captions is not None:
        captions = step.captions
        write_captions(store, batch, captions)
        samples = [(d.upload.filename, captions.items[d.upload.id].caption) for d in decoded if d.image is not None]
        yield MaterializeResult(
            asset_key=CAPTIONS,
            metadata={
                "images": len(decoded),
                "errors": errors,
                "model": captions.model,
                "runtime": work.captioner.describe(),
                **_where(loads["caption"]),
                **timing,
                "seconds": round(step.busy.get("caption", 0.0), 3),
                "sample_captions": MetadataValue.md(captions_preview(samples)),
            },
        )

    if step.embeddings is not None:
        embeddings = step.embeddings
        write_vectors(store, embeddings)
        write_embeddings(store, batch, embeddings)
        yield MaterializeResult(
            asset_key=EMBEDDINGS,
            metadata={
                "images": len(decoded),
                "errors": errors,
                "model": embeddings.model,
                "runtime": work.embedder.describe(),
                **_where(loads["embedding"]),
                **timing,
                "seconds": round(step.busy.get("embed", 0.0), 3),
                "dim": embeddings.dim,
                "tag_vocabulary": len(work.labels),
                "tagged_images": sum(1 for e in embeddings.items.values() if e.tags),
            },
        )

    if work.thumbnails:
        yield MaterializeResult(
            asset_key=THUMBNAILS,
            metadata={
                "thumbnails": step.thumbnails,
                "errors": len(decoded) - step.thumbnails,
                "long_edge_px": THUMBNAIL_LONG_EDGE,
                **timing,
                "seconds": round(step.busy.get("thumbnail", 0.0) + step.busy.get("thumbnail_write", 0.0), 3),
            },
        )


_CHECKS = {
    "one_row_per_upload": "Exactly one row for every upload in the batch manifest.",
    "unique_ids": "No id appears twice in the batch.",
    "embeddings_valid": "Every embedding is finite and has the model's dimension.",
    "captions_present": "Every row without an error has a non-empty caption.",
}


@asset(
    partitions_def=batches_partitions_def,
    deps=[upload_batch, CAPTIONS, EMBEDDINGS],
    kinds={"deltalake", "duckdb"},
    group_name="table",
    # v2: the table became a Delta table; a backfill of this asset alone migrates an old one.
    code_version="delta-v2",
    check_specs=[AssetCheckSpec(name, asset="asset_metadata", description=d) for name, d in _CHECKS.items()],
)
def asset_metadata(context: AssetExecutionContext, dam: DamResource) -> MaterializeResult:
    """One row per image: this batch's rows of the `assets` Delta table (replaced in one commit on re-run)."""
    batch = context.partition_key
    store = dam.store
    manifest = read_manifest(store, batch)
    captions = read_captions(store, batch)
    embeddings = read_embeddings(store, batch)
    rows = batch_rows(manifest, captions, embeddings, processed_at=datetime.now(UTC), exif=read_exif(store, batch))
    # Deleted while the batch ran: left out before the commit, and removed again after it when
    # the delete landed between the two (its own table delete may have run before our commit).
    kept = _not_deleted(store, rows)
    with metrics.stage("write") as took:
        version = write_batch(dam.settings, batch, kept, embeddings.dim, store)
    committed_at = datetime.now(UTC)
    late = [r["id"] for r in _deleted(store, kept)]
    if late:
        delete_rows(dam.settings, late, batch=batch)  # a re-upload's row in a newer batch stays
        context.log.info(f"{len(late)} id(s) deleted while this batch committed: their rows removed again")
    # A backfill re-commits old uploads: their lag says nothing about the pipeline keeping up.
    gone = set(late)
    metrics.rows_committed(
        [r for r in kept if r["id"] not in gone], committed_at, lag=BACKFILL_TAG not in context.run.tags
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(kept) - len(late),
            "deleted_while_processing": len(rows) - len(kept) + len(late),
            "errors": sum(1 for r in rows if r["error"]),
            "caption_model": captions.model or "",
            "embedding_model": embeddings.model or "",
            "table": MetadataValue.path(location(dam.settings).describe()),
            "table_version": version,
            "write_seconds": round(took.seconds, 3),
            "preview": MetadataValue.md(rows_preview(rows)),
        },
        check_results=_check_results(RowChecks.of(manifest, rows, embeddings.dim), embeddings.dim),
    )


def captions_preview(samples: list[tuple[str, str | None]]) -> str:
    """Up to 10 (filename, caption) pairs as a Markdown list (both are data: escaped)."""
    return "\n".join(f"- **{md_text(name)}**: {md_text(text)}" for name, text in samples[:10]) or "_none_"


def rows_preview(rows: list[dict]) -> str:
    """The first 10 table rows as a Markdown table (filenames, captions and errors are data: escaped)."""
    return md_table(
        ["filename", "caption", "error"], ([r["filename"], r["caption"], r["error"]] for r in rows[:10]), limit=40
    )


def _deleted(store, rows: list[dict]) -> list[dict]:
    """The rows whose upload a tombstone written since (or before) covers."""
    tombstones = read_tombstones(store, [r["id"] for r in rows])
    return [r for r in rows if is_deleted(tombstones, r["id"], r["uploaded_at"])]


def _not_deleted(store, rows: list[dict]) -> list[dict]:
    gone = {id(r) for r in _deleted(store, rows)}
    return [r for r in rows if id(r) not in gone]


def _check_results(c: RowChecks, dim: int) -> list[AssetCheckResult]:
    return [
        AssetCheckResult(
            check_name="one_row_per_upload",
            passed=c.one_per_upload,
            metadata={"rows": c.rows, "uploads": c.uploads},
        ),
        AssetCheckResult(check_name="unique_ids", passed=c.duplicates == 0, metadata={"duplicates": c.duplicates}),
        AssetCheckResult(
            check_name="embeddings_valid",
            passed=c.invalid_vectors == 0,
            metadata={"dim": dim, "invalid": c.invalid_vectors},
        ),
        AssetCheckResult(
            check_name="captions_present",
            passed=c.empty_captions == 0,
            severity=AssetCheckSeverity.WARN,
            metadata={"empty": c.empty_captions},
        ),
    ]
