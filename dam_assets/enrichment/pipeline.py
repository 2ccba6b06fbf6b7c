"""One batch's enrichment, top to bottom: its uploads go through the stages chunk by chunk
(stages/decode -> captions -> embeddings -> thumbnails), then each stage writes the batch's file
that asset_metadata reads (exif, captions, embeddings).

The models are the step's critical path (on a GPU the decode would otherwise leave it idle
between chunks); everything else moves off it onto threads:
- a producer thread fetches, decodes and turns each chunk into the models' input tensors, up to
  `prefetch` chunks ahead (0: the same work in line, one stage after the other);
- one thread makes each chunk's thumbnails and writes them to the store.
Memory stays bounded: the decode shares the process's pixel budget, and at most `prefetch` + 1
prepared chunks exist at once. The rows are the same whatever `prefetch` is (a test checks).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from dam_assets.enrichment.stages.captions import Captions, caption_batch, merge_captions, write_captions
from dam_assets.enrichment.stages.decode import Decode, Prepared, prepare_chunk
from dam_assets.enrichment.stages.embeddings import Embeddings, embed_batch, merge_embeddings, write_embeddings
from dam_assets.enrichment.stages.exif import exif_batch, write_exif
from dam_assets.enrichment.stages.thumbnails import thumbnail_batch, write_thumbnails
from dam_core.imaging import Decoded
from dam_core.manifests import read_manifest
from dam_core.messages import UploadMessage
from dam_core.store import ObjectStore

if TYPE_CHECKING:  # imports torch, which a run on served models never loads (dam_models/serving.py)
    from dam_models.captioner import Captioner
    from dam_models.embedder import Embedder


@dataclass
class Enrichment:
    """What to compute for a batch: the models (None: not selected), tag settings, thumbnails on or off."""

    captioner: Captioner | None = None
    embedder: Embedder | None = None
    labels: list[str] = field(default_factory=list)
    threshold: float = 0.0
    top_k: int = 0
    thumbnails: bool = True


@dataclass
class StepResult:
    decoded: list[Decoded]
    captions: Captions | None
    embeddings: Embeddings | None
    thumbnails: int
    busy: dict[str, float] = field(default_factory=dict)  # seconds per stage, summed over chunks
    wall: float = 0.0  # seconds for the whole step: below sum(busy) when stages overlapped


def enrich_batch(
    store: ObjectStore, batch: str, work: Enrichment, decode: Decode, chunk_size: int = 16, prefetch: int = 1
) -> StepResult:
    """The uploads of `batch`'s manifest through every selected stage, then the batch's stage files."""
    step = enrich_chunks(store, read_manifest(store, batch).uploads, work, decode, chunk_size, prefetch)
    # The EXIF columns were read during the decode: staged whichever assets are selected.
    write_exif(store, batch, exif_batch(step.decoded))
    if step.captions is not None:
        write_captions(store, batch, step.captions)
    if step.embeddings is not None:
        write_embeddings(store, batch, step.embeddings)
    return step


def enrich_chunks(
    store: ObjectStore,
    uploads: list[UploadMessage],
    work: Enrichment,
    decode: Decode,
    chunk_size: int = 16,
    prefetch: int = 1,
) -> StepResult:
    """Decode, caption, embed (with tags) and thumbnail `uploads`, `chunk_size` images at a time."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    started = time.perf_counter()
    clock = _Clock()
    c, e = work.captioner, work.embedder
    chunks = [uploads[i : i + chunk_size] for i in range(0, len(uploads), chunk_size)]
    produce = (prepare_chunk(store, chunk, decode, c, e, clock.time) for chunk in chunks)
    prepared_chunks = _prefetched(produce, prefetch) if prefetch > 0 else produce
    decoded: list[Decoded] = []
    captions: list[Captions] = []
    embeddings: list[Embeddings] = []
    thumbnails: list[Future] = []

    def thumbnail(chunk: list[Decoded]) -> int:  # on the thumbnail thread
        made = clock.time("thumbnail", lambda: thumbnail_batch(chunk))
        clock.time("thumbnail_write", lambda: write_thumbnails(store, made))
        return len(made)

    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="thumbnails") as pool,
        contextlib.closing(prepared_chunks),
    ):
        for p in prepared_chunks:
            decoded.extend(p.decoded)
            if work.thumbnails:
                thumbnails.append(pool.submit(thumbnail, p.decoded))
            if c is not None:
                captions.append(clock.time("caption", partial(caption_batch, p.decoded, c, p.caption_pixels)))
            if e is not None:
                embed = partial(embed_batch, p.decoded, e, work.labels, work.threshold, work.top_k, p.embed_pixels)
                embeddings.append(clock.time("embed", embed))
        made = sum(f.result() for f in thumbnails)
    return StepResult(
        decoded=decoded,
        captions=merge_captions(captions, c.model_id, c.version) if c is not None else None,
        embeddings=merge_embeddings(embeddings, e.model_id, e.version, e.dim) if e is not None else None,
        thumbnails=made,
        busy=dict(clock.busy),
        wall=time.perf_counter() - started,
    )


@dataclass
class Steps:
    """The sum of several batches' steps (a backfill's run may hold several), for the run's metadata."""

    images: int = 0
    errors: int = 0
    thumbnails: int = 0
    tagged: int = 0
    wall: float = 0.0
    busy: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    samples: list[tuple[str, str | None]] = field(default_factory=list)  # (filename, caption), the first 10

    def add(self, step: StepResult) -> None:
        self.images += len(step.decoded)
        self.errors += sum(1 for d in step.decoded if d.image is None)
        self.thumbnails += step.thumbnails
        self.wall += step.wall
        for stage, seconds in step.busy.items():
            self.busy[stage] += seconds
        if step.embeddings is not None:
            self.tagged += sum(1 for e in step.embeddings.items.values() if e.tags)
        if step.captions is not None:
            for d in step.decoded:
                if d.image is not None and len(self.samples) < 10:
                    self.samples.append((d.upload.filename, step.captions.items[d.upload.id].caption))


class _Clock:
    """Seconds per stage, summed over chunks; the producer and thumbnail threads add to it too."""

    def __init__(self) -> None:
        self.busy: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def time(self, stage: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            with self._lock:
                self.busy[stage] += time.perf_counter() - started


_DONE = object()


def _prefetched(produce: Iterator[Prepared], depth: int) -> Generator[Prepared, None, None]:
    """`produce` run on a thread, at most `depth` items ahead; its exception re-raised here."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in produce:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            items.put(err)

    thread = threading.Thread(target=run, name="enrichment-prefetch", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
