"""The Dagster-free enrichment functions: the stage files round-trip, a batch's rows, one decoded batch."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
from datetime import UTC, datetime

import pytest

from dam_assets.enrichment.pipeline import Enrichment, enrich_chunks
from dam_assets.enrichment.rows import MISSING_UPSTREAM, RowChecks, batch_rows
from dam_assets.enrichment.stages.captions import CaptionItem, Captions, caption_batch, read_captions, write_captions
from dam_assets.enrichment.stages.embeddings import (
    EmbeddingItem,
    Embeddings,
    embed_batch,
    read_embeddings,
    write_embeddings,
)
from dam_assets.enrichment.stages.thumbnails import thumbnail_batch
from dam_assets_tests.conftest import jpeg_bytes, png_bytes
from dam_core.imaging import decode_batch
from dam_core.layout import captions_stage_key, embeddings_stage_key, thumbnail_key, vector_key
from dam_core.messages import BatchManifest, UploadMessage
from dam_core.store import LocalStore, StoreError
from dam_models.captioner import get_captioner
from dam_models.embedder import get_embedder
from dam_models.tagging import load_vocabulary

BATCH = "20261124T101500Z-3fa2c1"
GOOD, BROKEN, LATE = "a" * 32, "b" * 32, "c" * 32


def upload(asset_id: str, data: bytes = b"x", ext: str = "jpg") -> UploadMessage:
    return UploadMessage(
        id=asset_id,
        filename=f"{asset_id[:6]}.{ext}",
        r2_key=f"assets/{asset_id}.{ext}",
        mime_type=f"image/{ext}",
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        width=64,
        height=48,
        uploaded_at=datetime(2026, 11, 24, 10, 15, tzinfo=UTC),
    )


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_captions_round_trip(store):
    captions = Captions(
        "Salesforce/blip-image-captioning-base",
        "blip:base:max30:beams1:fp32",
        {GOOD: CaptionItem("a red café sign"), BROKEN: CaptionItem(None, "could not decode image: truncated")},
    )
    assert write_captions(store, BATCH, captions) == captions_stage_key(BATCH)
    assert read_captions(store, BATCH) == captions


def test_embeddings_round_trip_keeps_empty_tags_apart_from_none(store):
    embeddings = Embeddings(
        "openai/clip-vit-base-patch32",
        "clip:base:fp32",
        4,
        {
            GOOD: EmbeddingItem([0.5, -0.25, 0.125, 0.0], None, ["cat", "sofa"]),
            LATE: EmbeddingItem([1.0, 0.0, 0.0, -1.0], None, []),  # no label scored enough
            BROKEN: EmbeddingItem(None, "original not found at assets/b.jpg", None),
        },
    )
    assert write_embeddings(store, BATCH, embeddings) == embeddings_stage_key(BATCH)
    # The stage's other output: vectors/{id}.json for every embedded image, in the seed's format.
    vector = {"id": GOOD, "model": embeddings.model, "dim": 4, "embedding": [0.5, -0.25, 0.125, 0.0]}
    assert json.loads(store.get(vector_key(GOOD))) == vector
    assert not store.exists(vector_key(BROKEN))
    got = read_embeddings(store, BATCH)
    assert got == embeddings
    assert list(got.items) == [GOOD, LATE, BROKEN]  # the batch's order


def test_rows_of_a_batch_with_an_error_image_and_a_stale_stage():
    manifest = BatchManifest(
        batch=BATCH, created_at=datetime.now(UTC), uploads=[upload(GOOD), upload(BROKEN), upload(LATE)]
    )
    captions = Captions("blip", "v", {GOOD: CaptionItem("a dog"), BROKEN: CaptionItem(None, "could not decode image")})
    # LATE came after the stages were written: its captions and embeddings are missing.
    embeddings = Embeddings(
        "clip",
        "v",
        2,
        {
            GOOD: EmbeddingItem([0.6, 0.8], None, ["dog"]),
            BROKEN: EmbeddingItem(None, "could not decode image"),
        },
    )
    at = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    rows = {r["id"]: r for r in batch_rows(manifest, captions, embeddings, processed_at=at)}

    assert list(rows) == [GOOD, BROKEN, LATE]
    good = rows[GOOD]
    assert (good["caption"], good["embedding"], good["tags"], good["error"]) == ("a dog", [0.6, 0.8], ["dog"], None)
    assert (good["vector_key"], good["batch"], good["processed_at"]) == (vector_key(GOOD), BATCH, at)
    assert (good["caption_model"], good["embedding_model"]) == ("blip", "clip")
    broken = rows[BROKEN]
    assert broken["error"] == "could not decode image"
    assert broken["caption"] is broken["embedding"] is broken["tags"] is None
    assert broken["filename"] == "bbbbbb.jpg" and broken["width"] == 64  # the manifest's facts stay
    assert rows[LATE]["error"] == MISSING_UPSTREAM and rows[LATE]["caption"] is None

    assert RowChecks.of(manifest, list(rows.values()), dim=2) == RowChecks(
        rows=3, uploads=3, one_per_upload=True, duplicates=0, invalid_vectors=0, empty_captions=0
    )


def test_row_checks_see_bad_vectors_blank_captions_and_duplicates():
    manifest = BatchManifest(batch=BATCH, created_at=datetime.now(UTC), uploads=[upload(GOOD), upload(BROKEN)])
    rows = [
        {"id": GOOD, "embedding": [math.nan, 1.0], "caption": "  ", "error": None},
        {"id": GOOD, "embedding": [1.0, 0.0, 0.0], "caption": "x", "error": None},
    ]
    assert RowChecks.of(manifest, rows, dim=2) == RowChecks(
        rows=2, uploads=2, one_per_upload=False, duplicates=1, invalid_vectors=2, empty_captions=1
    )


def test_one_decoded_batch_with_an_unreadable_image(store, tiny_models):
    """Caption, embed and thumbnail a real decoded batch: the bad image carries its error everywhere."""
    data = {GOOD: jpeg_bytes(64, 48), LATE: png_bytes(40, 30), BROKEN: jpeg_bytes(64, 48)[:200]}  # BROKEN: truncated
    good, clear = upload(GOOD, data[GOOD], ext="jpeg"), upload(LATE, data[LATE], ext="png")
    broken = upload(BROKEN, data[BROKEN], ext="jpeg")
    for u in (good, clear, broken):
        store.put(u.r2_key, data[u.id])
    decoded = decode_batch(store, [good, broken, clear])
    assert [d.image is None for d in decoded] == [False, True, False]

    captions = caption_batch(decoded, get_captioner(tiny_models["DAM_CAPTION_MODEL"], device="cpu"))
    assert list(captions.items) == [GOOD, BROKEN, LATE]
    assert isinstance(captions.items[GOOD].caption, str) and captions.items[GOOD].error is None
    assert captions.items[BROKEN].caption is None and captions.items[BROKEN].error

    embedder = get_embedder(tiny_models["DAM_EMBEDDING_MODEL"], device="cpu")
    embeddings = embed_batch(decoded, embedder, load_vocabulary(), threshold=0.0, top_k=2)
    assert (embeddings.model, embeddings.dim) == (embedder.model_id, embedder.dim)
    assert len(embeddings.items[GOOD].embedding) == embedder.dim
    assert len(embeddings.items[GOOD].tags) == 2  # threshold 0: the top 2 labels
    assert embeddings.items[BROKEN] == EmbeddingItem(None, captions.items[BROKEN].error, None)

    thumbs = thumbnail_batch(decoded)
    assert set(thumbs) == {GOOD, LATE} and all(t[8:12] == b"WEBP" for t in thumbs.values())


def _pipeline_batch(store, n: int = 7) -> list[UploadMessage]:
    uploads = []
    for i in range(n):
        data = png_bytes(40 + i, 30 + 2 * i, mode="RGB") if i % 3 == 0 else jpeg_bytes(64 + 3 * i, 48, seed=i)
        data = data[:150] if i == 4 else data  # the fifth is truncated: an error row
        u = upload(f"{i:x}" * 32 if i < 16 else "d" * 32, data, ext="png" if i % 3 == 0 else "jpeg")
        store.put(u.r2_key, data)
        uploads.append(u)
    return uploads


@pytest.mark.slow
def test_the_prefetching_step_yields_exactly_the_rows_of_the_sequential_one(store, tiny_models):
    """Chunks prepared on a thread ahead of the models: the same captions, vectors, tags and thumbnails."""
    uploads = _pipeline_batch(store)
    work = Enrichment(
        captioner=get_captioner(tiny_models["DAM_CAPTION_MODEL"], device="cpu", dtype="float32"),
        embedder=get_embedder(tiny_models["DAM_EMBEDDING_MODEL"], device="cpu", dtype="float32"),
        labels=load_vocabulary(),
        threshold=0.0,
        top_k=3,
    )
    results = {}
    for prefetch, chunk in ((0, 64), (2, 2), (1, 3)):
        step = enrich_chunks(store, uploads, work, functools.partial(decode_batch), chunk_size=chunk, prefetch=prefetch)
        thumbs = {u.id: store.get(thumbnail_key(u.id)) for u in uploads if u.id != uploads[4].id}
        results[prefetch] = (step.captions, step.embeddings, step.thumbnails, thumbs, [d.error for d in step.decoded])
        assert list(step.captions.items) == [u.id for u in uploads]
        assert step.captions.items[uploads[4].id].error and step.embeddings.items[uploads[4].id].error
        assert {"decode", "caption", "embed", "thumbnail"} <= set(step.busy)
    sequential = results[0]
    for prefetch in (2, 1):
        got = results[prefetch]
        assert got[0] == sequential[0] and got[2:] == sequential[2:]
        for uid, item in sequential[1].items.items():
            other = got[1].items[uid]
            assert (other.error, other.tags) == (item.error, item.tags)
            if item.embedding is not None:
                assert max(abs(a - b) for a, b in zip(item.embedding, other.embedding, strict=True)) < 1e-5


@pytest.mark.slow
def test_a_failing_fetch_fails_the_step_and_stops_the_prefetch(store, tiny_models):
    uploads = _pipeline_batch(store)
    calls = []

    def decode(s, chunk):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise StoreError("the store went away")
        return decode_batch(s, chunk)

    work = Enrichment(
        captioner=get_captioner(tiny_models["DAM_CAPTION_MODEL"], device="cpu", dtype="float32"), thumbnails=False
    )
    with pytest.raises(StoreError, match="went away"):
        enrich_chunks(store, uploads, work, decode, chunk_size=2, prefetch=1)
    assert calls == [2, 2]  # nothing decoded after the failure
    assert not [t for t in threading.enumerate() if t.name == "enrichment-prefetch"]
