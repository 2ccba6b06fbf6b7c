"""Software-defined assets, partitioned by ingest batch: manifest -> captions + embeddings -> table."""


import io
import json
import math
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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

from dam_assets.enrichment.renditions import THUMBNAIL_LONG_EDGE, thumbnail
from dam_assets.ingest.partitions import batches_partitions_def
from dam_assets.resources import DamResource, ModelsResource
from dam_core.imaging import decode_batch
from dam_core.layout import (
    captions_stage_key,
    embeddings_stage_key,
    thumbnail_key,
    vector_key,
)
from dam_core.manifests import read_manifest
from dam_core.settings import Settings, load_settings
from dam_core.table import write_batch
from dam_models.tagging import load_vocabulary, tag_images

CAPTIONS = AssetKey("image_captions")
EMBEDDINGS = AssetKey("image_embeddings")
THUMBNAILS = AssetKey("image_thumbnails")


def caption_code_version(settings: Settings) -> str:
    """Model id and generation settings: changing either marks every batch's captions stale."""
    return f"blip:{settings.dam_caption_model}:greedy:max{settings.dam_caption_max_tokens}:v1"


def embedding_code_version(settings: Settings) -> str:
    """Model id and tag settings: tags are computed from the embeddings in the same step."""
    tags = f"{settings.dam_tags_file or 'default'}:{settings.dam_tag_threshold}:{settings.dam_tags_top_k}"
    return f"clip:{settings.dam_embedding_model}:l2norm:tags={tags}:v2"


def _settings_for_definitions() -> Settings:
    try:
        return load_settings()
    except Exception:  # the code location must still load to show the error in the UI
        return Settings.model_construct()


_SETTINGS = _settings_for_definitions()


@asset(
    partitions_def=batches_partitions_def,
    kinds={"json"},
    group_name="ingest",
    code_version="v1",
)
def upload_batch(context: AssetExecutionContext, dam: DamResource) -> MaterializeResult:
    """The batch manifest: the uploads the sensor drained from the queue into this partition."""
    manifest = read_manifest(dam.store, context.partition_key)
    preview = "\n".join(f"| `{u.id}` | {u.filename} | {u.mime_type} | {u.width}x{u.height} |" for u in manifest.uploads[:20])
    return MaterializeResult(
        metadata={
            "uploads": len(manifest.uploads),
            "bytes": sum(u.bytes for u in manifest.uploads),
            "manifest": MetadataValue.path(f"{dam.store.describe()}/batches/{manifest.batch}.json"),
            "preview": MetadataValue.md("| id | filename | type | size |\n|---|---|---|---|\n" + preview),
        }
    )


@multi_asset(
    specs=[
        AssetSpec(
            CAPTIONS,
            deps=[upload_batch],
            description="A BLIP caption for every image of the batch.",
            kinds={"pytorch", "blip"},
            group_name="enrichment",
            code_version=caption_code_version(_SETTINGS),
            skippable=True,
        ),
        AssetSpec(
            EMBEDDINGS,
            deps=[upload_batch],
            description="A CLIP image embedding for every image of the batch; also vectors/{id}.json.",
            kinds={"pytorch", "clip"},
            group_name="enrichment",
            code_version=embedding_code_version(_SETTINGS),
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
    """Decode each image once, then caption, embed, tag and thumbnail the whole batch."""
    batch = context.partition_key
    store = dam.store
    manifest = read_manifest(store, batch)
    decoded = decode_batch(store, manifest.uploads, pixel_budget_size=dam.settings.dam_decode_pixel_budget)
    ok = [d for d in decoded if d.image is not None]
    images = [d.image for d in ok]
    selected = context.selected_asset_keys

    if CAPTIONS in selected:
        captioner = models.captioner()
        captions = dict(zip((d.upload.id for d in ok), captioner.caption(images))) if images else {}
        items = {
            d.upload.id: {"caption": captions.get(d.upload.id), "error": d.error} for d in decoded
        }
        store.put(
            captions_stage_key(batch),
            json.dumps({"model": captioner.model_id, "version": captioner.version, "items": items}).encode(),
            content_type="application/json",
        )
        yield MaterializeResult(
            asset_key=CAPTIONS,
            metadata={
                "images": len(decoded),
                "errors": len(decoded) - len(ok),
                "model": captioner.model_id,
                "sample_captions": MetadataValue.md(
                    "\n".join(f"- **{d.upload.filename}**: {captions[d.upload.id]}" for d in ok[:10]) or "_none_"
                ),
            },
        )

    if EMBEDDINGS in selected:
        embedder = models.embedder()
        vectors = embedder.embed_images(images) if images else np.zeros((0, embedder.dim), np.float32)
        by_id = {d.upload.id: v for d, v in zip(ok, vectors)}
        settings = dam.settings
        labels = load_vocabulary(settings.dam_tags_file)
        tags = dict(
            zip(
                (d.upload.id for d in ok),
                tag_images(embedder, vectors, labels, settings.dam_tag_threshold, settings.dam_tags_top_k),
            )
        )
        for uid, v in by_id.items():
            store.put(
                vector_key(uid),
                json.dumps({"id": uid, "model": embedder.model_id, "dim": int(v.shape[0]), "embedding": v.tolist()}).encode(),
                content_type="application/json",
            )
        table = pa.table(
            {
                "id": [d.upload.id for d in decoded],
                "embedding": pa.array(
                    [by_id[d.upload.id].tolist() if d.upload.id in by_id else None for d in decoded],
                    type=pa.list_(pa.float32(), embedder.dim),
                ),
                "error": [d.error for d in decoded],
                "tags": pa.array([tags.get(d.upload.id) for d in decoded], type=pa.list_(pa.string())),
            }
        ).replace_schema_metadata({"model": embedder.model_id, "version": embedder.version})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.put(embeddings_stage_key(batch), buf.getvalue(), content_type="application/vnd.apache.parquet")
        yield MaterializeResult(
            asset_key=EMBEDDINGS,
            metadata={
                "images": len(decoded),
                "errors": len(decoded) - len(ok),
                "model": embedder.model_id,
                "dim": embedder.dim,
                "tag_vocabulary": len(labels),
                "tagged_images": sum(1 for t in tags.values() if t),
            },
        )

    if THUMBNAILS in selected:
        written = 0
        for d in decoded:
            data = thumbnail(d)
            if data is not None:
                store.put(thumbnail_key(d.upload.id), data, content_type="image/webp")
                written += 1
        yield MaterializeResult(
            asset_key=THUMBNAILS,
            metadata={"thumbnails": written, "errors": len(decoded) - written, "long_edge_px": THUMBNAIL_LONG_EDGE},
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
    kinds={"parquet", "duckdb"},
    group_name="table",
    code_version="v1",
    check_specs=[AssetCheckSpec(name, asset="asset_metadata", description=d) for name, d in _CHECKS.items()],
)
def asset_metadata(context: AssetExecutionContext, dam: DamResource) -> MaterializeResult:
    """One row per image: the `assets` table's Parquet file for this batch (overwritten on re-run)."""
    batch = context.partition_key
    store = dam.store
    manifest = read_manifest(store, batch)
    captions = json.loads(store.get(captions_stage_key(batch)))
    emb = pq.read_table(io.BytesIO(store.get(embeddings_stage_key(batch))))
    emb_by_id = {r["id"]: r for r in emb.to_pylist()}
    dim = emb.schema.field("embedding").type.list_size
    emb_meta = (emb.schema.metadata or {}).get(b"model", b"").decode() or None
    processed_at = datetime.now(UTC)

    rows = []
    for u in manifest.uploads:
        c = captions["items"].get(u.id, {})
        e = emb_by_id.get(u.id, {})
        error = c.get("error") or e.get("error")
        if not error and (c.get("caption") is None or e.get("embedding") is None):
            error = "missing caption or embedding for this image (upstream asset out of date)"
        rows.append(
            {
                "id": u.id,
                "filename": u.filename,
                "r2_key": u.r2_key,
                "vector_key": vector_key(u.id),
                "mime_type": u.mime_type,
                "caption": None if error else c.get("caption"),
                "embedding": None if error else e.get("embedding"),
                "width": u.width,
                "height": u.height,
                "bytes": u.bytes,
                "sha256": u.sha256,
                "uploaded_at": u.uploaded_at,
                "processed_at": processed_at,
                "caption_model": captions.get("model"),
                "embedding_model": emb_meta,
                "batch": batch,
                "error": error,
                "tags": None if error else e.get("tags"),
            }
        )
    key = write_batch(store, batch, rows, dim)
    errors = sum(1 for r in rows if r["error"])
    preview = "\n".join(
        f"| {r['filename'][:40]} | {r['caption'] or ''} | {r['error'] or ''} |" for r in rows[:10]
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "errors": errors,
            "caption_model": captions.get("model") or "",
            "embedding_model": emb_meta or "",
            "path": MetadataValue.path(f"{store.describe()}/{key}"),
            "preview": MetadataValue.md("| filename | caption | error |\n|---|---|---|\n" + preview),
        },
        check_results=_checks(manifest, rows, dim),
    )


def _checks(manifest, rows: list[dict], dim: int) -> list[AssetCheckResult]:
    ids = [r["id"] for r in rows]
    expected = {u.id for u in manifest.uploads}
    bad_vectors = [
        r["id"]
        for r in rows
        if r["embedding"] is not None
        and (len(r["embedding"]) != dim or not all(math.isfinite(x) for x in r["embedding"]))
    ]
    empty_captions = [r["id"] for r in rows if r["error"] is None and not (r["caption"] or "").strip()]
    return [
        AssetCheckResult(
            check_name="one_row_per_upload",
            passed=set(ids) == expected and len(ids) == len(expected),
            metadata={"rows": len(ids), "uploads": len(expected)},
        ),
        AssetCheckResult(check_name="unique_ids", passed=len(set(ids)) == len(ids), metadata={"duplicates": len(ids) - len(set(ids))}),
        AssetCheckResult(
            check_name="embeddings_valid",
            passed=not bad_vectors,
            metadata={"dim": dim, "invalid": len(bad_vectors)},
        ),
        AssetCheckResult(
            check_name="captions_present",
            passed=not empty_captions,
            severity=AssetCheckSeverity.WARN,
            metadata={"empty": len(empty_captions)},
        ),
    ]
