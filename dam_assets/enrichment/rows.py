"""A batch's rows of the `assets` table, assembled from its manifest and the stage files that
image_enrichment wrote, less the ids deleted meanwhile; and what the checks look at."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from dam_assets.enrichment.stages.captions import CaptionItem, Captions, read_captions
from dam_assets.enrichment.stages.embeddings import EmbeddingItem, Embeddings, read_embeddings
from dam_assets.enrichment.stages.exif import read_exif
from dam_assets.enrichment.stages.text import TextItem, read_text
from dam_core.exif import ExifInfo
from dam_core.layout import vector_key
from dam_core.manifests import read_manifest
from dam_core.messages import BatchManifest
from dam_core.store import ObjectStore
from dam_core.tombstones import is_deleted, read_tombstones

MISSING_UPSTREAM = "missing caption or embedding for this image (upstream asset out of date)"


@dataclass(frozen=True)
class BatchRows:
    """One batch's rows, with what they were assembled from."""

    manifest: BatchManifest
    captions: Captions
    embeddings: Embeddings
    rows: list[dict]


def read_batch_rows(store: ObjectStore, batch: str, processed_at: datetime) -> BatchRows:
    """The batch's manifest and stage files (captions, embeddings, EXIF, text), as its table rows."""
    manifest = read_manifest(store, batch)
    captions = read_captions(store, batch)
    embeddings = read_embeddings(store, batch)
    rows = batch_rows(
        manifest,
        captions,
        embeddings,
        processed_at=processed_at,
        exif=read_exif(store, batch),
        text=read_text(store, batch),
    )
    return BatchRows(manifest, captions, embeddings, rows)


def batch_rows(
    manifest: BatchManifest,
    captions: Captions,
    embeddings: Embeddings,
    processed_at: datetime,
    exif: dict[str, ExifInfo] | None = None,
    text: dict[str, TextItem] | None = None,
) -> list[dict]:
    """One row per upload; an image that failed anywhere upstream is a row with `error`, no caption or vector.

    EXIF describes the original file, so it is kept on error rows too; null where none was read.
    The text read in the image (OCR) is null where it was not read (OCR off, not yet, or it failed).
    """
    exif = exif or {}
    text = text or {}
    rows = []
    for u in manifest.uploads:
        c = captions.items.get(u.id, CaptionItem(None))
        e = embeddings.items.get(u.id, EmbeddingItem(None))
        x = exif.get(u.id, ExifInfo())
        error = c.error or e.error
        if not error and (c.caption is None or e.embedding is None):
            error = MISSING_UPSTREAM
        rows.append(
            {
                "id": u.id,
                "filename": u.filename,
                "r2_key": u.r2_key,
                "vector_key": vector_key(u.id),
                "mime_type": u.mime_type,
                "caption": None if error else c.caption,
                "embedding": None if error else e.embedding,
                "width": u.width,
                "height": u.height,
                "bytes": u.bytes,
                "sha256": u.sha256,
                "uploaded_at": u.uploaded_at,
                "processed_at": processed_at,
                "caption_model": captions.model,
                "embedding_model": embeddings.model,
                "batch": manifest.batch,
                "error": error,
                "tags": None if error else e.tags,
                "taken_at": x.taken_at,
                "camera_make": x.camera_make,
                "camera_model": x.camera_model,
                "lens": x.lens,
                "gps_lat": x.gps_lat,
                "gps_lon": x.gps_lon,
                "orientation": x.orientation,
                "ocr_text": t.text if (t := text.get(u.id)) is not None else None,
            }
        )
    return rows


def deleted(store: ObjectStore, rows: list[dict]) -> list[dict]:
    """The rows whose upload a tombstone written since (or before) covers."""
    tombstones = read_tombstones(store, [r["id"] for r in rows])
    return [r for r in rows if is_deleted(tombstones, r["id"], r["uploaded_at"])]


def not_deleted(store: ObjectStore, rows: list[dict]) -> list[dict]:
    gone = {id(r) for r in deleted(store, rows)}
    return [r for r in rows if id(r) not in gone]


@dataclass(frozen=True)
class RowChecks:
    """What asset_metadata's checks report on one batch's rows."""

    rows: int
    uploads: int
    one_per_upload: bool  # the ids are exactly the manifest's, each once
    duplicates: int
    invalid_vectors: int  # wrong dimension or not finite
    empty_captions: int  # rows without an error whose caption is blank

    @classmethod
    def total(cls, checks: list[RowChecks]) -> RowChecks:
        """Several batches' checks as one (a backfill's run may hold several batches)."""
        return cls(
            rows=sum(c.rows for c in checks),
            uploads=sum(c.uploads for c in checks),
            one_per_upload=all(c.one_per_upload for c in checks),
            duplicates=sum(c.duplicates for c in checks),
            invalid_vectors=sum(c.invalid_vectors for c in checks),
            empty_captions=sum(c.empty_captions for c in checks),
        )

    @classmethod
    def of(cls, manifest: BatchManifest, rows: list[dict], dim: int) -> RowChecks:
        ids = [r["id"] for r in rows]
        expected = {u.id for u in manifest.uploads}
        return cls(
            rows=len(ids),
            uploads=len(expected),
            one_per_upload=set(ids) == expected and len(ids) == len(expected),
            duplicates=len(ids) - len(set(ids)),
            invalid_vectors=sum(
                1
                for r in rows
                if r["embedding"] is not None
                and (len(r["embedding"]) != dim or not all(math.isfinite(x) for x in r["embedding"]))
            ),
            empty_captions=sum(1 for r in rows if r["error"] is None and not (r["caption"] or "").strip()),
        )
