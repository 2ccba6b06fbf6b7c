"""The enrichment assets of one ingest batch: captions, embeddings and thumbnails, then the table rows.

Thin shells: a batch's walk through the stages is enrichment/pipeline.py, its rows enrichment/rows.py.
"""

import os
import socket
from dataclasses import dataclass
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
from dagster._core.definitions.metadata import RawMetadataValue  # what a metadata value may be

from dam_assets import metrics
from dam_assets.config import SETTINGS
from dam_assets.enrichment.automation import CATCH_UP, FILL_IN, STALE, made_by
from dam_assets.enrichment.pipeline import Enrichment, Steps, enrich_batch
from dam_assets.enrichment.rows import RowChecks, deleted, not_deleted, read_batch_rows
from dam_assets.enrichment.stages.decode import decoder
from dam_assets.enrichment.stages.text import read_text_batch, write_text
from dam_assets.enrichment.stages.thumbnails import THUMBNAIL_LONG_EDGE
from dam_assets.ingest.assets import upload_batch
from dam_assets.ingest.partitions import BACKFILL_POLICY, batches_partitions_def
from dam_assets.markdown import md_table, md_text
from dam_assets.resources import DamResource, ModelsResource
from dam_core.manifests import read_manifest
from dam_core.settings import Settings
from dam_models.cache import track_loads  # not dam_models.loading: no torch, as a run on served models needs none
from dam_models.ocr import get_text_reader, ocr_version
from dam_models.versions import caption_version, embedding_version


def _where(load) -> dict[str, RawMetadataValue]:
    """Which process ran the step and what its model cost: 0 s when a warm worker already held it."""
    return {
        "model_load_seconds": round(load.seconds, 3),
        "worker_host": socket.gethostname(),
        "worker_pid": os.getpid(),
    }


BACKFILL_TAG = "dagster/backfill"
CAPTIONS = AssetKey("image_captions")
EMBEDDINGS = AssetKey("image_embeddings")
THUMBNAILS = AssetKey("image_thumbnails")
TEXT = AssetKey("image_text")
TEXT_CHUNK = 16  # images decoded at once for OCR: the decode's memory stays that of one chunk


def caption_code_version(settings: Settings) -> str:
    """The captioner's own version (model, generation, dtype, runtime): a change marks every batch's captions stale."""
    return caption_version(
        settings.dam_caption_model,
        settings.dam_caption_max_tokens,
        dtype=settings.dam_dtype,
        runtime=settings.dam_runtime,
        quantize=settings.dam_quantize,
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
            automation_condition=STALE,
            skippable=True,
        ),
        AssetSpec(
            EMBEDDINGS,
            deps=[upload_batch],
            description="A CLIP image embedding for every image of the batch; also vectors/{id}.json.",
            kinds={"pytorch", "clip"},
            group_name="enrichment",
            code_version=embedding_code_version(SETTINGS),
            automation_condition=STALE,
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
    backfill_policy=BACKFILL_POLICY,
)
def image_enrichment(context: AssetExecutionContext, dam: DamResource, models: ModelsResource):
    """Decode each image once, then caption, embed, tag and thumbnail the batch, chunk by chunk."""
    store = dam.store
    selected = context.selected_asset_keys
    loads = {}
    work = Enrichment(thumbnails=THUMBNAILS in selected)
    if CAPTIONS in selected:
        with track_loads() as loads["caption"]:
            work.captioner = models.captioner()
    if EMBEDDINGS in selected:
        work.labels, work.threshold, work.top_k = models.vocabulary(), models.tag_threshold, models.tags_top_k
        with track_loads() as loads["embedding"]:
            work.embedder = models.embedder()
    for name, load in loads.items():
        metrics.model_loaded(name, load.seconds, load.loads)
    decode = decoder(
        dam.settings.dam_decode_pixel_budget, dam.settings.dam_max_image_pixels, dam.settings.dam_max_image_side
    )
    model = work.captioner or work.embedder
    chunk = models.chunk_size(model.device if model is not None else "cpu")

    # One batch, or several in a backfill's run (BACKFILL_POLICY): each written as it is done.
    done = Steps()
    for batch in context.partition_keys:
        step = enrich_batch(store, batch, work, decode, chunk_size=chunk, prefetch=models.prefetch_chunks)
        metrics.stages_observed(step.busy)
        done.add(step)

    common: dict[str, RawMetadataValue] = {
        "batches": len(context.partition_keys),
        "images": done.images,
        "errors": done.errors,
        "step_seconds": round(done.wall, 3),
        "stage_seconds": MetadataValue.json({k: round(v, 3) for k, v in sorted(done.busy.items())}),
        "decode_seconds": round(done.busy.get("decode", 0.0), 3),
    }
    if work.captioner is not None:
        yield MaterializeResult(
            asset_key=CAPTIONS,
            data_version=made_by(caption_code_version(SETTINGS)),
            metadata={
                **common,
                "model": work.captioner.model_id,
                "runtime": work.captioner.describe(),
                **_where(loads["caption"]),
                "seconds": round(done.busy.get("caption", 0.0), 3),
                "sample_captions": MetadataValue.md(captions_preview(done.samples)),
            },
        )
    if work.embedder is not None:
        yield MaterializeResult(
            asset_key=EMBEDDINGS,
            data_version=made_by(embedding_code_version(SETTINGS)),
            metadata={
                **common,
                "model": work.embedder.model_id,
                "runtime": work.embedder.describe(),
                **_where(loads["embedding"]),
                "seconds": round(done.busy.get("embed", 0.0), 3),
                "dim": work.embedder.dim,
                "tag_vocabulary": len(work.labels),
                "tagged_images": done.tagged,
            },
        )
    if work.thumbnails:
        yield MaterializeResult(
            asset_key=THUMBNAILS,
            metadata={
                **common,
                "thumbnails": done.thumbnails,
                "errors": done.images - done.thumbnails,
                "long_edge_px": THUMBNAIL_LONG_EDGE,
                "seconds": round(done.busy.get("thumbnail", 0.0) + done.busy.get("thumbnail_write", 0.0), 3),
            },
        )


def text_code_version(settings: Settings) -> str:
    """The OCR models (pinned by the rapidocr package) and their settings."""
    return ocr_version(settings.dam_ocr_det_side, settings.dam_ocr_min_score)


@asset(
    key=TEXT,
    partitions_def=batches_partitions_def,
    deps=[upload_batch],
    kinds={"onnx", "ocr"},
    group_name="enrichment",
    code_version=text_code_version(SETTINGS),
    backfill_policy=BACKFILL_POLICY,
    automation_condition=FILL_IN,
)
def image_text(context: AssetExecutionContext, dam: DamResource) -> MaterializeResult:
    """The text in every image of the batch (PP-OCR through RapidOCR): lines with boxes and confidences."""
    settings, store = dam.settings, dam.store
    reader = get_text_reader(settings.dam_ocr_det_side, settings.dam_ocr_min_score)
    decode = decoder(settings.dam_decode_pixel_budget, settings.dam_max_image_pixels, settings.dam_max_image_side)
    images = with_text = failed = 0
    samples: list[tuple[str, str | None]] = []
    with metrics.stage("ocr") as took:
        for batch in context.partition_keys:
            uploads = read_manifest(store, batch).uploads
            names = {u.id: u.filename for u in uploads}
            items = {}
            for start in range(0, len(uploads), TEXT_CHUNK):
                items.update(read_text_batch(reader, decode(store, uploads[start : start + TEXT_CHUNK])))
            write_text(store, batch, items, reader.version)
            images += len(items)
            with_text += sum(1 for t in items.values() if t.text)
            failed += sum(1 for t in items.values() if t.error)
            samples += [(names[uid], t.text) for uid, t in items.items() if t.text]
    return MaterializeResult(
        metadata={
            "batches": len(context.partition_keys),
            "images": images,
            "images_with_text": with_text,
            "errors": failed,
            "model": reader.version,
            "runtime": reader.describe(),
            "seconds": round(took.seconds, 3),
            "sample_text": MetadataValue.md(captions_preview(samples)),
        }
    )


_CHECKS = {
    "one_row_per_upload": "Exactly one row for every upload in the batch manifest.",
    "unique_ids": "No id appears twice in the batch.",
    "embeddings_valid": "Every embedding is finite and has the model's dimension.",
    "captions_present": "Every row without an error has a non-empty caption.",
}


@asset(
    partitions_def=batches_partitions_def,
    deps=[upload_batch, CAPTIONS, EMBEDDINGS, *([TEXT] if SETTINGS.dam_ocr else [])],
    kinds={"deltalake", "duckdb"},
    group_name="table",
    code_version="delta-v2",
    backfill_policy=BACKFILL_POLICY,
    # A batch whose text, captions or embeddings changed after its rows (OCR switched on later, a
    # model changed) is re-committed.
    automation_condition=CATCH_UP,
    check_specs=[AssetCheckSpec(name, asset="asset_metadata", description=d) for name, d in _CHECKS.items()],
)
def asset_metadata(context: AssetExecutionContext, dam: DamResource) -> MaterializeResult:
    """One row per image: this batch's rows of the `assets` Delta table (replaced in one commit on re-run)."""
    commits = [_commit_batch(context, dam, batch) for batch in context.partition_keys]
    rows = [r for c in commits for r in c.rows]
    checks = RowChecks.total([c.checks for c in commits])
    return MaterializeResult(
        metadata={
            "batches": len(commits),
            "dagster/row_count": sum(c.committed for c in commits),
            "deleted_while_processing": sum(len(c.rows) - c.committed for c in commits),
            "errors": sum(1 for r in rows if r["error"]),
            "caption_model": commits[-1].caption_model,
            "embedding_model": commits[-1].embedding_model,
            "table": MetadataValue.path(dam.table.describe()),
            "table_version": commits[-1].version,
            "write_seconds": round(sum(c.seconds for c in commits), 3),
            "preview": MetadataValue.md(rows_preview(rows)),
        },
        check_results=_check_results(checks, commits[-1].dim),
    )


@dataclass
class _Commit:
    rows: list[dict]
    committed: int
    checks: RowChecks
    version: int
    seconds: float
    dim: int
    caption_model: str
    embedding_model: str


def _commit_batch(context: AssetExecutionContext, dam: DamResource, batch: str) -> _Commit:
    """One batch's rows into the table, in one commit."""
    store = dam.store
    staged = read_batch_rows(store, batch, processed_at=datetime.now(UTC))
    rows, embeddings = staged.rows, staged.embeddings
    # Deleted while the batch ran: left out before the commit, and removed again after it when
    # the delete landed between the two (its own table delete may have run before our commit).
    kept = not_deleted(store, rows)
    with metrics.stage("write") as took:
        version = dam.table.write_batch(batch, kept, embeddings.dim, store)
    committed_at = datetime.now(UTC)
    late = [r["id"] for r in deleted(store, kept)]
    if late:
        dam.table.delete_rows(late, batch=batch)  # a re-upload's row in a newer batch stays
        context.log.info(f"{len(late)} id(s) deleted while batch {batch} committed: their rows removed again")
    # A backfill re-commits old uploads: their lag says nothing about the pipeline keeping up.
    gone = set(late)
    metrics.rows_committed(
        [r for r in kept if r["id"] not in gone], committed_at, lag=BACKFILL_TAG not in context.run.tags
    )
    return _Commit(
        rows=rows,
        committed=len(kept) - len(late),
        checks=RowChecks.of(staged.manifest, rows, embeddings.dim),
        version=version,
        seconds=took.seconds,
        dim=embeddings.dim,
        caption_model=staged.captions.model or "",
        embedding_model=embeddings.model or "",
    )


def captions_preview(samples: list[tuple[str, str | None]]) -> str:
    """Up to 10 (filename, caption) pairs as a Markdown list (both are data: escaped)."""
    return "\n".join(f"- **{md_text(name)}**: {md_text(text)}" for name, text in samples[:10]) or "_none_"


def rows_preview(rows: list[dict]) -> str:
    """The first 10 table rows as a Markdown table (filenames, captions and errors are data: escaped)."""
    return md_table(
        ["filename", "caption", "error"], ([r["filename"], r["caption"], r["error"]] for r in rows[:10]), limit=40
    )


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
