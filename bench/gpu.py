"""GPU throughput: models alone, decode + preprocess on the machine's cores, and the pipeline's batch path.

`python -m bench.gpu [--quick] [--device auto|cuda|cpu] [--dtypes fp16,bf16] [--models-dir DIR] [--out bench/out]`

Nothing is downloaded: full-size BLIP-base captioning (ViT-B/16 at 384 px, bert-base decoder with
12 heads, as Salesforce/blip-image-captioning-base) and CLIP ViT-B/32 (224 px, 512-d projection, as
openai/clip-vit-base-patch32) are built from configs with random weights, saved with
``save_pretrained`` beside generated tokenizers and image processors, and loaded through the
project's own code (``dam_models.captioner.get_captioner``, ``dam_models.embedder.get_embedder``
and their process-wide model cache), so what runs is what the pipeline runs.

Random weights would let a caption stop anywhere, so every caption is forced to the project's
``DAM_CAPTION_MAX_TOKENS`` default (min_new_tokens = max_new_tokens): the worst case, and the same
cost on every run.

1. CLIP image embeddings alone: images/s at several batch sizes per dtype (pixel tensors already on the device).
2. BLIP captions alone (``generate``, greedy): images/s at several batch sizes per dtype.
3. Decode + preprocess on the machine's cores: 3000x2000 photo-like JPEGs through
   ``dam_core.imaging.decode`` (draft mode + reduce) and the models' image processors, in a pool of
   ``os.cpu_count()`` threads; also the arrangement the pipeline uses today (decode on
   ``decode_batch``'s threads, processors on a whole batch in the calling thread).
4. The pipeline through a warm worker: ``decode_batch`` -> ``caption_batch`` -> ``embed_batch``
   (with tags) -> ``thumbnail_batch`` (dam_assets.enrichment.stages, the Dagster-free body of the
   ``image_enrichment`` step) on batches of ``DAM_BATCH_SIZE`` from a LocalStore, models already
   loaded; images/s and its share of the model-alone ceiling (caption + embed on the same images'
   pixel tensors, already on the device, at the pipeline's chunk sizes and at the batch size).

Timings synchronize the device after each call and follow warm-up calls. The result (one JSON
object) goes to stdout and to ``OUT/gpu.json`` (``gpu-quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT_PACKAGES = ("bench", "dam_core", "dam_models", "dam_assets", "dam_cli", "dam_ingest_api")

FULL = {
    "clip_batches": (16, 64, 256),
    "blip_batches": (8, 32, 64, 128, 256),
    "photo_size": (3000, 2000),
    "base_photos": 8,  # distinct generated photos; the others are transposed / re-encoded variants
    "photos": 128,  # decode + preprocess set
    "pipeline_batches": 3,  # measured batches of DAM_BATCH_SIZE, after one warm-up batch
    "min_seconds": 1.5,  # each model timing: at least this long (and at least 3 calls)
    "max_calls": 30,
    "budget_s": 420,  # the whole run, model build included; later measurements are skipped beyond it
}
QUICK = {
    "clip_batches": (2,),
    "blip_batches": (2,),
    "photo_size": (3000, 2000),
    "base_photos": 1,
    "photos": 4,
    "pipeline_batches": 1,
    "pipeline_batch_size": 4,
    "min_seconds": 0.0,
    "max_calls": 1,
    "budget_s": 170,
}

# What the real checkpoints have that the config defaults do not (transformers' BlipTextConfig
# defaults to 8 heads; blip-image-captioning-base has 12, bert-base's).
BLIP_TEXT_HEADS = 12


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cuda_visible() -> bool:
    """Whether torch sees a CUDA device (bench/run.py skips this benchmark otherwise)."""
    import torch

    return torch.cuda.is_available()


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ----------------------------------------------------------------------------- imports


def third_party(modules=None) -> dict[str, str]:
    """Distributions (name -> version) behind the non-stdlib modules loaded in this process."""
    import importlib.metadata as md

    dists = md.packages_distributions()
    names = sorted({m.split(".")[0] for m in (modules if modules is not None else list(sys.modules))})
    out: dict[str, str] = {}
    for name in names:
        if name in sys.stdlib_module_names or name.startswith("_") or name in PROJECT_PACKAGES:
            continue
        for dist in dists.get(name, ()):
            try:
                out[dist] = md.version(dist)
            except md.PackageNotFoundError:
                out[dist] = "?"
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def import_project() -> dict:
    """Import every project module this benchmark runs; a missing third-party module is named."""
    before = set(sys.modules)
    try:
        import dam_assets.enrichment.stages.captions  # noqa: F401  (no dagster: the step's Dagster-free body)
        import dam_assets.enrichment.stages.embeddings  # noqa: F401
        import dam_assets.enrichment.stages.thumbnails  # noqa: F401
        import dam_core.imaging  # noqa: F401
        import dam_core.store  # noqa: F401
        import dam_models.captioner  # noqa: F401
        import dam_models.embedder  # noqa: F401
        import dam_models.tagging  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"the project's model/decode code needs the module {err.name!r}, which is not installed here "
            f"({err}); install or carry its wheel"
        ) from err
    return third_party(set(sys.modules) - before)


# ----------------------------------------------------------------------------- models


def build_models(directory: Path, log=log) -> tuple[Path, Path]:
    """Full-size BLIP-base captioning (with the real checkpoint's 12 decoder heads) and CLIP ViT-B/32,
    random weights, reused when complete; folders of their own beside bench/fixtures.py's 8-head BLIP."""
    from bench.fixtures import build_models as build

    return build(directory, log=log, blip_text_heads=BLIP_TEXT_HEADS, name="gpu-")


def _architecture(captioner, embedder) -> dict:
    bc, cc = captioner.model.config, embedder.model.config
    return {
        "blip": {
            "params_m": round(sum(p.numel() for p in captioner.model.parameters()) / 1e6, 1),
            "vision": f"ViT {bc.vision_config.num_hidden_layers}x{bc.vision_config.hidden_size}, "
            f"patch {bc.vision_config.patch_size} @ {bc.vision_config.image_size} px",
            "text": f"{bc.text_config.num_hidden_layers}x{bc.text_config.hidden_size}, "
            f"{bc.text_config.num_attention_heads} heads, vocab {bc.text_config.vocab_size}",
        },
        "clip": {
            "params_m": round(sum(p.numel() for p in embedder.model.parameters()) / 1e6, 1),
            "vision": f"ViT {cc.vision_config.num_hidden_layers}x{cc.vision_config.hidden_size}, "
            f"patch {cc.vision_config.patch_size} @ {cc.vision_config.image_size} px",
            "projection_dim": cc.projection_dim,
        },
    }


def _attention(captioner, embedder) -> dict:
    from transformers.models.blip.modeling_blip import BlipAttention

    from dam_models.captioner import _sdpa_attention_forward

    vis = [m for m in captioner.model.vision_model.modules() if isinstance(m, BlipAttention)]
    sdpa = sum(1 for m in vis if getattr(m.forward, "__func__", None) is _sdpa_attention_forward)
    return {
        "clip": getattr(embedder.model.config, "_attn_implementation", None),
        "blip_vision": f"sdpa in {sdpa} of {len(vis)} layers (dam_models.captioner.use_sdpa_vision_attention)",
        "blip_text_decoder": "eager (transformers' BlipText attention has no SDPA path)",
    }


# ----------------------------------------------------------------------------- timing


class Clock:
    """The run's time budget: measurements that would not fit are skipped and say so."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)


def _sync(device: str):
    import torch

    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def timed(fn, sync, warmup: int = 2, min_calls: int = 3, min_seconds: float = 1.5, max_calls: int = 30) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` calls, the device synchronized around each."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < min_seconds and len(times) < max_calls):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def _rate(n: int, times: list[float]) -> dict:
    med = statistics.median(times)
    return {
        "images_per_s": round(n / med, 2),
        "best_images_per_s": round(n / min(times), 2),
        "ms_per_call": round(1000 * med, 2),
        "calls": len(times),
    }


def _peak_mem(device: str) -> float | None:
    import torch

    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return None


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _tile(pixels, n: int, device: str, dtype):
    """``n`` rows of ``pixels`` (repeated as needed), on the device in the model's dtype."""
    reps = math.ceil(n / pixels.shape[0])
    return pixels.repeat(reps, 1, 1, 1)[:n].to(device, dtype=dtype).contiguous()


# ----------------------------------------------------------------------------- images


def make_photos(n: int, bases: int, size: tuple[int, int], threads: int) -> list[bytes]:
    """``n`` distinct photo-like JPEGs: ``bases`` generated photos, transposed and re-encoded into variants."""
    from PIL import Image

    from bench.fixtures import jpeg, photo_like

    def generate(i):
        im = photo_like(*size, seed=7000 + i)
        im.load()
        return im.copy()  # its own pixels: the encoder threads below only ever read them

    with ThreadPoolExecutor(max_workers=max(1, min(threads, bases))) as pool:
        base = list(pool.map(generate, range(bases)))
    ops = [
        None,
        Image.Transpose.FLIP_LEFT_RIGHT,
        Image.Transpose.FLIP_TOP_BOTTOM,
        Image.Transpose.ROTATE_180,
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
    ]
    variants = [(b, k, q) for q in (88, 85, 91, 82, 94, 79, 90) for k in range(len(ops)) for b in range(bases)][:n]
    if len(variants) < n:
        raise ValueError(f"{n} photos wanted, only {len(variants)} variants of {bases} bases")
    shapes: dict = {}
    for b, k, _ in variants:  # transposed copies made here, one thread; encoded in parallel below
        if (b, k) not in shapes:
            shapes[(b, k)] = base[b] if ops[k] is None else base[b].transpose(ops[k])

    # Each encode gets its own copy: Image.save keeps its options on the image object (encoderinfo),
    # so two threads saving one image at once can both use one thread's quality, and so can later saves.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        out = list(pool.map(lambda v: jpeg(shapes[(v[0], v[1])].copy(), quality=v[2]), variants))
    seen: set[bytes] = set()
    for i, (b, k, _q) in enumerate(variants):  # ids are content hashes: every photo must differ
        for q2 in range(97, 50, -1):
            if out[i] not in seen:
                break
            out[i] = jpeg(shapes[(b, k)].copy(), quality=q2)
        if out[i] in seen:
            raise RuntimeError("could not make the photo variants distinct")
        seen.add(out[i])
    return out


def seed_store(store, photos: list[bytes]) -> list:
    """The photos as uploaded originals in ``store``; their UploadMessages."""
    import hashlib

    from PIL import Image

    from dam_core.layout import original_key
    from dam_core.messages import UploadMessage

    uploads = []
    for i, data in enumerate(photos):
        sha = hashlib.sha256(data).hexdigest()
        key = original_key(sha[:32], ".jpg")
        store.put(key, data, content_type="image/jpeg")
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
        uploads.append(
            UploadMessage(
                id=sha[:32],
                filename=f"gpu-bench-{i}.jpg",
                r2_key=key,
                mime_type="image/jpeg",
                bytes=len(data),
                sha256=sha,
                width=w,
                height=h,
                uploaded_at=datetime.now(UTC),
            )
        )
    return uploads


# ----------------------------------------------------------------------------- 1 + 2: models alone


def bench_clip(embedder, pixels, batches, device, cfg, clock: Clock, log=log) -> dict:
    import torch

    from dam_models.embedder import _pooled

    sync = _sync(device)
    out = {}
    for bs in batches:
        if clock.left() < 10:
            out[str(bs)] = {"skipped": "time budget"}
            continue
        x = _tile(pixels, bs, device, embedder.dtype)
        _reset_peak(device)

        def call(x=x):  # bound now, not looked up late; ``del x, call`` below frees the tensor
            with torch.inference_mode():
                return _pooled(embedder.model.get_image_features(pixel_values=x))

        try:
            r = _rate(
                bs,
                timed(
                    call,
                    sync,
                    min_seconds=cfg["min_seconds"],
                    max_calls=cfg["max_calls"],
                    min_calls=min(3, cfg["max_calls"]),
                    warmup=min(2, cfg["max_calls"]),
                ),
            )
        except torch.OutOfMemoryError as err:
            r = {"error": f"out of memory: {str(err)[:200]}"}
        r["peak_mem_mib"] = _peak_mem(device)
        out[str(bs)] = r
        del x, call
        log(f"  clip {embedder.dtype} batch {bs}: {r.get('images_per_s')} images/s")
    return out


def bench_blip(captioner, pixels, batches, device, cfg, clock: Clock, log=log) -> dict:
    import torch

    sync = _sync(device)
    kw = captioner._generate_kwargs()
    out = {}
    for bs in batches:
        if clock.left() < 20:
            out[str(bs)] = {"skipped": "time budget"}
            continue
        x = _tile(pixels, bs, device, captioner.dtype)
        _reset_peak(device)
        shape = {}

        def call(x=x, shape=shape):  # bound now, not looked up late; ``del x, call`` below frees the tensor
            with torch.inference_mode():
                ids = captioner.model.generate(pixel_values=x, **kw)
            shape["tokens"] = int(ids.shape[1])

        try:
            r = _rate(
                bs,
                timed(
                    call,
                    sync,
                    warmup=min(1, cfg["max_calls"]),
                    min_calls=min(3, cfg["max_calls"]),
                    min_seconds=cfg["min_seconds"],
                    max_calls=cfg["max_calls"],
                ),
            )
            r["sequence_tokens"] = shape.get("tokens")  # [DEC] + the generated tokens
        except torch.OutOfMemoryError as err:
            r = {"error": f"out of memory: {str(err)[:200]}"}
        r["peak_mem_mib"] = _peak_mem(device)
        out[str(bs)] = r
        del x, call
        log(f"  blip {captioner.dtype} batch {bs}: {r.get('images_per_s')} images/s")
    return out


# ----------------------------------------------------------------------------- 3: decode + preprocess


def bench_cpu_side(photos: list[bytes], blip_proc, clip_proc, pipeline_batch: int, log=log) -> dict:
    """Images/s of the CPU work per image: threaded over all cores, and as the pipeline arranges it."""
    from dam_assets.enrichment.stages.thumbnails import thumbnail
    from dam_core.imaging import DEFAULT_PIXEL_BUDGET, Decoded, decode, pixel_budget

    cores = os.cpu_count() or 1
    budget = pixel_budget(DEFAULT_PIXEL_BUDGET)
    n = len(photos)

    def dec(data):
        return decode(data, budget=budget)

    def dec_pre(data):
        im = dec(data)
        blip_proc(images=[im], return_tensors="pt")
        clip_proc(images=[im], return_tensors="pt")
        return im

    def dec_pre_thumb(data):
        im = dec_pre(data)
        thumbnail(Decoded(None, im))
        return im

    def pooled(fn, threads):
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(fn, photos[: max(threads, 2)]))  # warm-up
            t = time.perf_counter()
            list(pool.map(fn, photos))
            return time.perf_counter() - t

    out: dict = {"images": n, "cores": cores}
    for name, fn in (("decode", dec), ("decode+preprocess", dec_pre), ("decode+preprocess+thumbnail", dec_pre_thumb)):
        s = pooled(fn, cores)
        out[f"{name} ({cores} threads)"] = {"threads": cores, "images_per_s": round(n / s, 1)}
        log(f"  {name} on {cores} threads: {n / s:.1f} images/s")
    s = pooled(dec, 4)
    out["decode (4 threads: decode_batch's default)"] = {"threads": 4, "images_per_s": round(n / s, 1)}
    s = pooled(dec, 1)
    out["decode (1 thread)"] = {"threads": 1, "images_per_s": round(n / s, 1)}

    # The pipeline's arrangement: each processor runs on a whole batch in the calling thread.
    images = [dec(d) for d in photos]
    chunks = [images[i : i + pipeline_batch] for i in range(0, n, pipeline_batch)]
    blip_proc(images=images[:2], return_tensors="pt")
    t = time.perf_counter()
    for c in chunks:
        blip_proc(images=c, return_tensors="pt")
    bs = time.perf_counter() - t
    t = time.perf_counter()
    for c in chunks:
        clip_proc(images=c, return_tensors="pt")
    cs = time.perf_counter() - t
    t = time.perf_counter()
    for im in images:
        thumbnail(Decoded(None, im))
    ts = time.perf_counter() - t
    out["blip preprocess (1 thread, whole batch)"] = {"threads": 1, "images_per_s": round(n / bs, 1)}
    out["clip preprocess (1 thread, whole batch)"] = {"threads": 1, "images_per_s": round(n / cs, 1)}
    out["thumbnail (1 thread)"] = {"threads": 1, "images_per_s": round(n / ts, 1)}
    out["decoded_size_example"] = list(images[0].size)
    log(
        f"  in the calling thread: blip preprocess {n / bs:.1f}, clip preprocess {n / cs:.1f}, "
        f"thumbnails {n / ts:.1f} images/s"
    )
    return out


# ----------------------------------------------------------------------------- 4: the pipeline


def bench_pipeline(
    store, warm_uploads, uploads, captioner, embedder, batch_size: int, device: str, cfg, log=log
) -> dict:
    import torch

    from dam_assets.enrichment.stages.captions import caption_batch, write_captions
    from dam_assets.enrichment.stages.embeddings import embed_batch, write_embeddings
    from dam_assets.enrichment.stages.thumbnails import thumbnail_batch, write_thumbnails
    from dam_core.imaging import DEFAULT_PIXEL_BUDGET, decode_batch
    from dam_core.settings import Settings
    from dam_models.captioner import Captioner
    from dam_models.embedder import Embedder, _pooled
    from dam_models.loading import track_loads
    from dam_models.tagging import load_vocabulary

    f = Settings.model_fields
    labels = load_vocabulary()
    threshold, top_k = f["dam_tag_threshold"].default, f["dam_tags_top_k"].default
    sync = _sync(device)

    def step(chunk, batch_key: str, stages: dict | None, write: bool):
        def mark(name, t):
            sync()
            if stages is not None:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - t
            return time.perf_counter()

        t = time.perf_counter()
        decoded = decode_batch(store, chunk, pixel_budget_size=DEFAULT_PIXEL_BUDGET)
        t = mark("decode", t)
        captions = caption_batch(decoded, captioner)
        t = mark("caption", t)
        embeddings = embed_batch(decoded, embedder, labels, threshold, top_k)
        t = mark("embed+tags", t)
        thumbs = thumbnail_batch(decoded)
        t = mark("thumbnails", t)
        if write:
            write_captions(store, batch_key, captions)
            write_embeddings(store, batch_key, embeddings)  # and vectors/{id}.json
            write_thumbnails(store, thumbs)
            mark("writes", t)
        errors = sum(1 for d in decoded if d.image is None)
        return decoded, captions, errors

    with track_loads() as warm_load:
        step(warm_uploads, "warmup", None, write=True)  # label embeddings, allocator, kernels
    chunks = [uploads[i : i + batch_size] for i in range(0, len(uploads), batch_size)]
    stages: dict[str, float] = {}
    errors = 0
    words = set()
    batch_s: list[float] = []
    with track_loads() as load:
        t0 = time.perf_counter()
        for i, chunk in enumerate(chunks):
            tb = time.perf_counter()
            decoded, captions, e = step(chunk, f"b{i}", stages, write=False)
            batch_s.append(round(time.perf_counter() - tb, 3))
            errors += e
            words.update(len((c.caption or "").split()) for c in captions.items.values())
        total = time.perf_counter() - t0
    n = len(uploads)
    # The same batches again with the step's writes (captions, vectors/{id}.json, embeddings, thumbnails)
    # to a LocalStore on this machine's disk.
    w_stages: dict[str, float] = {}
    w_batch_s: list[float] = []
    t0 = time.perf_counter()
    for i, chunk in enumerate(chunks):
        tb = time.perf_counter()
        step(chunk, f"w{i}", w_stages, write=True)
        w_batch_s.append(round(time.perf_counter() - tb, 3))
    total_w = time.perf_counter() - t0

    # Model-alone ceiling: the last batch's decoded images as pixel tensors already on the device.
    images = [d.image for d in decoded if d.image is not None]
    bp = captioner.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    cp = embedder.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    bp = bp.to(device, dtype=captioner.dtype)
    cp = cp.to(device, dtype=embedder.dtype)
    kw = captioner._generate_kwargs()
    cap_chunk = inspect.signature(Captioner.caption).parameters["batch_size"].default
    emb_chunk = inspect.signature(Embedder.embed_images).parameters["batch_size"].default

    def models_alone(cb, eb):
        def call():
            with torch.inference_mode():
                for s in range(0, len(images), cb):
                    captioner.model.generate(pixel_values=bp[s : s + cb], **kw)
                for s in range(0, len(images), eb):
                    _pooled(embedder.model.get_image_features(pixel_values=cp[s : s + eb]))

        times = timed(
            call,
            sync,
            warmup=1,
            min_calls=min(3, cfg["max_calls"]),
            min_seconds=cfg["min_seconds"],
            max_calls=cfg["max_calls"],
        )
        return {"caption_batch": cb, "embed_batch": eb, **_rate(len(images), times)}

    ceiling = models_alone(cap_chunk, emb_chunk)
    ceiling_b = models_alone(len(images), len(images))
    ips = n / total
    ips_w = n / total_w
    result = {
        "batch_size": batch_size,
        "batches": len(chunks),
        "images": n,
        "errors": errors,
        "dtype": str(captioner.dtype).removeprefix("torch."),
        "caption_chunk": cap_chunk,
        "embed_chunk": emb_chunk,
        "decode_threads": inspect.signature(decode_batch).parameters["threads"].default,
        "tag_labels": len(labels),
        "images_per_s": round(ips, 2),
        "batch_s": batch_s,  # each measured batch, end to end: the spread shows how steady the machine was
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
        "with_writes": {
            "images_per_s": round(ips_w, 2),
            "batch_s": w_batch_s,
            "stages_s": {k: round(v, 3) for k, v in w_stages.items()},
        },
        "model_load_s_warmup": round(warm_load.seconds, 3),
        "model_load_s_measured": round(load.seconds, 3),  # 0.0: the worker was warm
        "caption_words": sorted(words),
        "ceiling": ceiling,
        "ceiling_at_batch_size": ceiling_b,
        "share_of_ceiling": round(ips / ceiling["images_per_s"], 3),
        "share_of_ceiling_at_batch_size": round(ips / ceiling_b["images_per_s"], 3),
    }
    log(
        f"  pipeline: {ips:.1f} images/s ({100 * result['share_of_ceiling']:.0f}% of the models alone at "
        f"{cap_chunk}/{emb_chunk}, {ceiling['images_per_s']} images/s; "
        f"{100 * result['share_of_ceiling_at_batch_size']:.0f}% of them at {len(images)}/{len(images)}, "
        f"{ceiling_b['images_per_s']} images/s); with writes {ips_w:.1f} images/s"
    )
    return result


# ----------------------------------------------------------------------------- run


def _device_facts(device: str) -> dict:
    import platform

    import torch
    import transformers

    out = {
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:  # not bench.fixtures.machine(): it imports duckdb, fastapi, ... for their versions
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        out.update(
            {
                "gpu": torch.cuda.get_device_name(torch.device(device)),
                "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                "gpu_sms": p.multi_processor_count,
                "gpu_capability": f"{p.major}.{p.minor}",
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "bf16_supported": torch.cuda.is_bf16_supported(),
            }
        )
    else:
        out["gpu"] = None
    return out


def run(
    quick: bool = False,
    device: str = "auto",
    dtypes: str | None = None,
    models_dir: str | None = None,
    models: str | None = None,
    log=log,
) -> dict:
    """``models``: "full" (random full-size BLIP-base + CLIP B/32) or "tiny" (dam_models.tiny); default
    tiny with ``quick``, else full."""
    _offline()
    cfg = dict(QUICK if quick else FULL)
    models = models or ("tiny" if quick else "full")
    if models not in ("full", "tiny"):
        raise ValueError(f"models must be full or tiny, not {models!r}")
    clock = Clock(cfg["budget_s"])
    project_imports = import_project()

    import torch

    from dam_core.imaging import decode
    from dam_core.settings import Settings
    from dam_core.store import LocalStore
    from dam_models.captioner import get_captioner
    from dam_models.embedder import get_embedder
    from dam_models.loading import dtype_name, resolve_device, resolve_dtype, track_loads

    dev = resolve_device(device)
    on_gpu = dev.startswith("cuda")
    dtype_list = [d.strip() for d in (dtypes or ("fp16,bf16" if on_gpu else "fp32")).split(",") if d.strip()]
    f = Settings.model_fields
    max_tokens = f["dam_caption_max_tokens"].default
    batch_size = cfg.get("pipeline_batch_size", f["dam_batch_size"].default)
    pipeline_dtype = dtype_name(resolve_dtype(f["dam_dtype"].default, dev))
    facts = _device_facts(dev)
    log(
        f"gpu: {'quick' if quick else 'full'} run on {facts.get('gpu') or facts.get('cpu')} "
        f"({facts['cpu_count']} cores), torch {facts['torch']}, transformers {facts['transformers']}"
    )

    result: dict = {
        "mode": "quick" if quick else "full",
        "models": models,
        "machine": facts,
        "caption_tokens": max_tokens,
        "caption_tokens_note": (
            f"every caption is forced to DAM_CAPTION_MAX_TOKENS={max_tokens} new tokens "
            "(random weights; the worst case)"
        ),
        "third_party_imports": {"project_modules": project_imports},
        "seconds": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        if models == "full":
            blip_dir, clip_dir = build_models(Path(models_dir) if models_dir else tmp / "models", log=log)
        else:
            from dam_models.tiny import write_tiny_models

            blip_dir, clip_dir = write_tiny_models(tmp / "tiny-models")
            log("gpu: tiny random models (dam_models.tiny): a smoke run, not a measurement of the real sizes")
        result["seconds"]["build_models"] = round(time.perf_counter() - t, 1)

        t = time.perf_counter()
        cores = os.cpu_count() or 1
        n_photos = max(cfg["photos"], 2 * batch_size if not quick else cfg["photos"])
        n_pipeline = cfg["pipeline_batches"] * batch_size
        photos = make_photos(n_photos + n_pipeline + batch_size, cfg["base_photos"], cfg["photo_size"], cores)
        cpu_photos = photos[:n_photos]
        warm_photos = photos[n_photos : n_photos + batch_size]
        pipe_photos = photos[n_photos + batch_size :]
        result["photos"] = {
            "size": list(cfg["photo_size"]),
            "mean_jpeg_kib": round(sum(map(len, photos)) / len(photos) / 1024, 1),
            "distinct_bases": cfg["base_photos"],
            "count": len(photos),
        }
        result["seconds"]["make_photos"] = round(time.perf_counter() - t, 1)
        log(
            f"gpu: {len(photos)} photo-like JPEGs {cfg['photo_size'][0]}x{cfg['photo_size'][1]} "
            f"(~{result['photos']['mean_jpeg_kib']:.0f} KiB) in {result['seconds']['make_photos']}s"
        )
        sample = [decode(d) for d in cpu_photos[: min(8, len(cpu_photos))]]

        # 1 + 2: the models alone, per dtype.
        result["clip"], result["blip"], result["load_s"], result["attention"] = {}, {}, {}, None
        for dt in dtype_list:
            t = time.perf_counter()
            with track_loads() as load:
                captioner = get_captioner(
                    str(blip_dir), device=dev, dtype=dt, max_new_tokens=max_tokens, min_new_tokens=max_tokens
                )
                embedder = get_embedder(str(clip_dir), device=dev, dtype=dt)
            name = dtype_name(captioner.dtype)
            result["load_s"][name] = round(load.seconds, 2)
            if result["attention"] is None:
                result["attention"] = _attention(captioner, embedder)
                result["architecture"] = _architecture(captioner, embedder)
            log(f"gpu: {name}: models loaded in {load.seconds:.1f}s; CLIP alone")
            cpix = embedder.processor.image_processor(images=sample, return_tensors="pt")["pixel_values"]
            bpix = captioner.processor.image_processor(images=sample, return_tensors="pt")["pixel_values"]
            result["clip"][name] = bench_clip(embedder, cpix, cfg["clip_batches"], dev, cfg, clock, log)
            log(f"gpu: {name}: BLIP alone ({max_tokens} tokens per caption)")
            result["blip"][name] = bench_blip(captioner, bpix, cfg["blip_batches"], dev, cfg, clock, log)
            result["seconds"][f"models_{name}"] = round(time.perf_counter() - t, 1)

        # 3: decode + preprocess on the machine's cores.
        t = time.perf_counter()
        log(f"gpu: decode + preprocess, {len(cpu_photos)} JPEGs, {cores} threads")
        try:
            result["cpu_side"] = bench_cpu_side(
                cpu_photos, captioner.processor.image_processor, embedder.processor.image_processor, batch_size, log
            )
        except Exception as err:
            result["cpu_side"] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
        result["seconds"]["cpu_side"] = round(time.perf_counter() - t, 1)

        # 4: the pipeline through a warm worker (DAM_DTYPE=auto on this device).
        t = time.perf_counter()
        if clock.left() < 30:
            result["pipeline"] = {"skipped": "time budget"}
        else:
            try:
                store = LocalStore(tmp / "store")
                warm_up = seed_store(store, warm_photos)
                up = seed_store(store, pipe_photos)
                with track_loads() as load:
                    captioner = get_captioner(
                        str(blip_dir),
                        device=dev,
                        dtype=pipeline_dtype,
                        max_new_tokens=max_tokens,
                        min_new_tokens=max_tokens,
                    )
                    embedder = get_embedder(str(clip_dir), device=dev, dtype=pipeline_dtype)
                log(
                    f"gpu: pipeline, DAM_DTYPE=auto -> {pipeline_dtype} (models {'loaded' if load.loads else 'warm'}), "
                    f"{len(up)} images in batches of {batch_size}"
                )
                result["pipeline"] = bench_pipeline(store, warm_up, up, captioner, embedder, batch_size, dev, cfg, log)
            except Exception as err:
                result["pipeline"] = {
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc()[-2000:],
                }
                log(f"gpu: pipeline FAILED: {type(err).__name__}: {err}")
        result["seconds"]["pipeline"] = round(time.perf_counter() - t, 1)
    result["seconds"]["total"] = round(time.perf_counter() - clock.t0, 1)
    result["third_party_imports"]["after_run"] = third_party()
    if on_gpu:
        result["machine"]["gpu_peak_mem_mib_total"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return result


# ----------------------------------------------------------------------------- report


def _table(per_dtype: dict, title: str) -> list[str]:
    sizes = sorted({int(b) for d in per_dtype.values() for b in d})
    lines = [f"| {title} | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for dt, rows in per_dtype.items():
        cells = []
        for b in sizes:
            r = rows.get(str(b), {})
            note = (r.get("skipped") or r.get("error", "-"))[:30]
            cells.append(f"{r['images_per_s']:,.1f}" if "images_per_s" in r else note)
        lines.append(f"| {dt} | " + " | ".join(cells) + " |")
    return lines


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def lines(result: dict) -> list[str]:
    """Markdown for bench/RESULTS.md: images/s tables."""
    m = result.get("machine", {})
    where = m.get("gpu") or f"CPU only ({m.get('cpu', '?')})"
    tiny = " -- TINY MODELS, a smoke run" if result.get("models") == "tiny" else ""
    out = [
        f"### GPU throughput ({result.get('mode')}{tiny}): {where}",
        "",
        f"torch {m.get('torch')}, transformers {m.get('transformers')}, CUDA {m.get('cuda', '-')}, "
        f"{m.get('cpu_count')} CPU cores ({m.get('cpu', '?')}). "
        + ("Tiny random models" if tiny else "Random-weight BLIP-base and CLIP ViT-B/32")
        + f" loaded through dam_models; attention: CLIP {(result.get('attention') or {}).get('clip')}, BLIP vision "
        f"SDPA (project patch), BLIP decoder eager. {_sentence(result.get('caption_tokens_note', ''))}.",
        "",
    ]
    if result.get("clip"):
        out += ["CLIP image embeddings alone, images/s (pixel tensors on the device):", ""]
        out += _table(result["clip"], "CLIP dtype") + [""]
    if result.get("blip"):
        out += [f"BLIP captions alone (generate, greedy, {result.get('caption_tokens')} tokens), images/s:", ""]
        out += _table(result["blip"], "BLIP dtype") + [""]
    cs = result.get("cpu_side")
    if cs and "error" not in cs:
        out += [
            f"Decode + preprocess of {result.get('photos', {}).get('size')} JPEGs on the CPU, images/s:",
            "",
            "| work | threads | images/s |",
            "|---|---:|---:|",
        ]
        for k, v in cs.items():
            if isinstance(v, dict) and "images_per_s" in v:
                out.append(f"| {k} | {v['threads']} | {v['images_per_s']:,.1f} |")
        out.append("")
    elif cs:
        out += [f"Decode + preprocess: ERROR {cs['error']}", ""]
    p = result.get("pipeline")
    if p and "images_per_s" in p:
        c, cb = p["ceiling"], p["ceiling_at_batch_size"]
        out += [
            "Pipeline through a warm worker (decode_batch -> caption_batch -> embed_batch + tags -> "
            f"thumbnail_batch), batches of {p['batch_size']}, {p['dtype']}:",
            "",
            "| | images/s | share |",
            "|---|---:|---:|",
            f"| pipeline (no writes) | {p['images_per_s']:,.1f} | |",
            f"| pipeline + writes to a local-disk store | {p['with_writes']['images_per_s']:,.1f} | |",
            f"| models alone at the pipeline's chunks (caption {c['caption_batch']}, embed {c['embed_batch']}) | "
            f"{c['images_per_s']:,.1f} | pipeline = {100 * p['share_of_ceiling']:.0f}% |",
            f"| models alone at batch {cb['caption_batch']} | {cb['images_per_s']:,.1f} | "
            f"pipeline = {100 * p['share_of_ceiling_at_batch_size']:.0f}% |",
            "",
            "Pipeline seconds by stage (all measured batches): "
            + ", ".join(f"{k} {v:.2f}" for k, v in p["stages_s"].items())
            + "; seconds per batch: "
            + ", ".join(f"{v:.2f}" for v in p.get("batch_s", []))
            + " (with writes: "
            + ", ".join(f"{v:.2f}" for v in p["with_writes"].get("batch_s", []))
            + ").",
            "",
        ]
    elif p:
        out += [f"Pipeline: {p.get('error') or p.get('skipped')}", ""]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (also on CPU): tiny models, batch 2, 4 photos, 1 pipeline batch of 4",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when visible), cuda, cuda:N or cpu")
    p.add_argument("--dtypes", help="model dtypes to time (default fp16,bf16 on CUDA, fp32 on CPU)")
    p.add_argument(
        "--models",
        choices=["full", "tiny"],
        help="full-size random BLIP-base + CLIP B/32 (default), or the tiny test models (default with --quick)",
    )
    p.add_argument("--models-dir", help="reuse (or create) the random full-size models here")
    p.add_argument("--out", default=str(HERE / "out"))
    args = p.parse_args(argv)
    result = run(
        args.quick, device=args.device, dtypes=args.dtypes, models_dir=args.models_dir, models=args.models, log=log
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("gpu-quick.json" if args.quick else "gpu.json")
    path.write_text(json.dumps(result, indent=1, default=str))
    log(f"gpu: wrote {path}")
    for line in lines(result):
        print(line, file=sys.stderr)
    print(json.dumps(result, default=str))
    return 0 if all("error" not in (result.get(k) or {}) for k in ("cpu_side", "pipeline")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
