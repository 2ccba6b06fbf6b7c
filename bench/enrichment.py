"""Enrichment: images/s of the pipeline's batch path vs the naive per-image worker, plus ceilings.

Both sides read the same originals from a LocalStore and load the same full-size BLIP-base and
CLIP ViT-B/32 architectures (random weights, saved with ``save_pretrained``) through
``from_pretrained``; captions are forced to exactly 20 new tokens on both sides. Each side runs
in its own subprocess so that its peak RSS is its own.

Batch path: the calls the ``image_enrichment`` asset makes -- ``dam_core.imaging.decode_batch``,
``Captioner.caption``, ``Embedder.embed_images`` -- on batches of ``DAM_BATCH_SIZE`` (64), plus the
outputs the naive worker also writes (``vectors/{id}.json`` and the table, one file per batch).
Ceiling: the same models on pixel tensors prepared beforehand, no fetch, decode or writes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.fixtures import (
    CAPTION_TOKENS,
    CpuMonitor,
    build_models,
    peak_rss_mb,
    run_json_subprocess,
    seed_store,
)

BATCH_SIZE = 64  # DAM_BATCH_SIZE default: uploads per partition


def _load_uploads(path: str):
    from dam_core.messages import UploadMessage

    return [UploadMessage.model_validate(u) for u in json.loads(Path(path).read_text())]


def _chunks(seq, n):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


# ----------------------------------------------------------------------------- children


def child_batch(args) -> dict:
    import torch

    from dam_core.imaging import decode_batch
    from dam_core.layout import TABLE_PREFIX, vector_key
    from dam_core.manifests import new_batch_key
    from dam_core.store import LocalStore
    from dam_core.table import AssetTable, Location
    from dam_models.captioner import get_captioner
    from dam_models.embedder import get_embedder

    store = LocalStore(Path(args.store))
    table = AssetTable(Location(str(store.root / TABLE_PREFIX).rstrip("/"), None))  # where the product keeps it
    uploads = _load_uploads(args.uploads)
    warm = _load_uploads(args.warmup)
    t_load = time.perf_counter()
    captioner = get_captioner(
        args.blip, device="cpu", dtype=args.dtype, max_new_tokens=CAPTION_TOKENS, min_new_tokens=CAPTION_TOKENS
    )
    embedder = get_embedder(args.clip, device="cpu", dtype=args.dtype)
    load_s = time.perf_counter() - t_load

    # Warm-up on an image outside the measured set (first-call allocations, oneDNN primitives).
    w = decode_batch(store, warm)
    captioner.caption([d.image for d in w])
    embedder.embed_images([d.image for d in w])

    stages = {"fetch_decode": 0.0, "caption": 0.0, "embed": 0.0, "write": 0.0}
    mon = CpuMonitor()
    c0 = time.process_time()
    t0 = time.perf_counter()
    captions_out = []
    errors = 0
    for chunk in _chunks(uploads, BATCH_SIZE):
        t = time.perf_counter()
        decoded = decode_batch(store, chunk)
        stages["fetch_decode"] += time.perf_counter() - t
        ok = [d for d in decoded if d.image is not None]
        errors += len(decoded) - len(ok)
        images = [d.image for d in ok]
        t = time.perf_counter()
        captions = captioner.caption(images)
        stages["caption"] += time.perf_counter() - t
        t = time.perf_counter()
        vectors = embedder.embed_images(images)
        stages["embed"] += time.perf_counter() - t
        t = time.perf_counter()
        now = datetime.now(UTC)
        rows = []
        for d, cap, vec in zip(ok, captions, vectors, strict=True):
            u = d.upload
            store.put(
                vector_key(u.id),
                json.dumps(
                    {"id": u.id, "model": embedder.model_id, "dim": int(vec.shape[0]), "embedding": vec.tolist()}
                ).encode(),
                content_type="application/json",
            )
            rows.append(
                {
                    "id": u.id,
                    "filename": u.filename,
                    "r2_key": u.r2_key,
                    "vector_key": vector_key(u.id),
                    "mime_type": u.mime_type,
                    "caption": cap,
                    "embedding": vec.tolist(),
                    "width": u.width,
                    "height": u.height,
                    "bytes": u.bytes,
                    "sha256": u.sha256,
                    "uploaded_at": u.uploaded_at,
                    "processed_at": now,
                    "caption_model": captioner.model_id,
                    "embedding_model": embedder.model_id,
                    "batch": "",
                    "error": None,
                    "tags": None,
                }
            )
        batch = new_batch_key()
        for r in rows:
            r["batch"] = batch
        table.write_batch(batch, rows, embedder.dim, store)
        stages["write"] += time.perf_counter() - t
        captions_out.extend(captions)
    total = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    cpu = mon.stop()
    rss = peak_rss_mb()
    n = len(uploads)
    result = {
        "side": "batch",
        "dtype": args.dtype,
        "images": n,
        "errors": errors,
        "seconds": round(total, 3),
        "images_per_s": round(n / total, 4),
        "cpu_s_per_image": round(cpu_s / n, 3),
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
        "peak_rss_mb": round(rss, 1),
        "model_load_s": round(load_s, 2),
        "caption_words": sorted({len(c.split()) for c in captions_out}),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu,
    }

    if args.ceiling:
        # Model alone: pixel tensors made beforehand from the same decoded images, no I/O.
        decoded = decode_batch(store, uploads)
        images = [d.image for d in decoded if d.image is not None]
        bp = captioner.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        cp = embedder.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        kw = captioner._generate_kwargs()
        mon = CpuMonitor()
        with torch.inference_mode():
            t = time.perf_counter()
            for s in range(0, len(images), args.caption_batch):
                captioner.model.generate(pixel_values=bp[s : s + args.caption_batch], **kw)
            cap_s = time.perf_counter() - t
            t = time.perf_counter()
            for s in range(0, len(images), args.embed_batch):
                embedder.model.get_image_features(pixel_values=cp[s : s + args.embed_batch])
            emb_s = time.perf_counter() - t
        result["ceiling"] = {
            "images": len(images),
            "caption_s": round(cap_s, 3),
            "embed_s": round(emb_s, 3),
            "images_per_s": round(len(images) / (cap_s + emb_s), 4),
            "caption_batch": args.caption_batch,
            "embed_batch": args.embed_batch,
            "cpu": mon.stop(),
        }
    return result


def child_naive(args) -> dict:
    import torch

    from bench.naive_worker import TABLE_KEY, NaiveWorker
    from dam_core.store import LocalStore

    store = LocalStore(Path(args.store))
    uploads = _load_uploads(args.uploads)
    warm = _load_uploads(args.warmup)
    t_load = time.perf_counter()
    worker = NaiveWorker(args.blip, args.clip, store, caption_tokens=CAPTION_TOKENS)
    load_s = time.perf_counter() - t_load
    for u in warm:
        worker.handle(u.to_json())
    store.delete(TABLE_KEY)  # the measured run starts from an empty table, like the batch side
    bodies = [u.to_json() for u in uploads]
    mon = CpuMonitor()
    c0 = time.process_time()
    t0 = time.perf_counter()
    words = set()
    for body in bodies:
        row = worker.handle(body)
        words.add(len(row["caption"].split()))
    total = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    n = len(bodies)
    return {
        "side": "naive",
        "images": n,
        "seconds": round(total, 3),
        "images_per_s": round(n / total, 4),
        "cpu_s_per_image": round(cpu_s / n, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "model_load_s": round(load_s, 2),
        "caption_words": sorted(words),
        "torch_threads": torch.get_num_threads(),
        "cpu": mon.stop(),
    }


def child_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.enrichment")
    p.add_argument("side", choices=["batch", "naive"])
    p.add_argument("--store", required=True)
    p.add_argument("--uploads", required=True)
    p.add_argument("--warmup", required=True)
    p.add_argument("--blip", required=True)
    p.add_argument("--clip", required=True)
    p.add_argument("--ceiling", action="store_true")
    # float32 by default, named explicitly: the comparison with the naive worker (plain from_pretrained,
    # fp32) is fp32 against fp32 whatever DAM_DTYPE=auto resolves to on this machine.
    p.add_argument("--dtype", default="float32", help="DAM_DTYPE for the batch side")
    p.add_argument("--caption-batch", type=int, default=16)
    p.add_argument("--embed-batch", type=int, default=32)
    args = p.parse_args(argv)
    result = child_batch(args) if args.side == "batch" else child_naive(args)
    print(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- parent


def run(quick: bool, models_dir: str | None = None, log=print) -> dict:
    from dam_core.store import LocalStore

    n_jpeg, n_png = (7, 1) if quick else (48, 4)
    with tempfile.TemporaryDirectory(prefix="bench-enrich-") as tmp:
        tmp = Path(tmp)
        log("enrichment: building full-size BLIP-base and CLIP B/32 with random weights")
        blip, clip = build_models(Path(models_dir) if models_dir else tmp / "models", log=log)
        store = LocalStore(tmp / "store")
        log(f"enrichment: writing {n_jpeg} JPEGs 1600x1200 + {n_png} PNGs 1024x768")
        uploads = seed_store(store, n_jpeg, n_png)
        warm = _warmup(store)
        (tmp / "uploads.json").write_text(json.dumps([u.model_dump(mode="json") for u in uploads]))
        (tmp / "warmup.json").write_text(json.dumps([u.model_dump(mode="json") for u in warm]))
        common = [
            "--store",
            str(tmp / "store"),
            "--uploads",
            str(tmp / "uploads.json"),
            "--warmup",
            str(tmp / "warmup.json"),
            "--blip",
            str(blip),
            "--clip",
            str(clip),
        ]
        log(f"enrichment: batch path on {len(uploads)} images (own process), then the model-alone ceiling")
        batch = _quietest(["-m", "bench.enrichment", "batch", "--ceiling", *common], quick, log)
        log(
            f"  batch: {batch['images_per_s']:.3f} images/s, peak RSS {batch['peak_rss_mb']:.0f} MiB; "
            f"ceiling {batch['ceiling']['images_per_s']:.3f} images/s"
        )
        log(f"enrichment: naive per-image worker on the same {len(uploads)} images (own process)")
        naive = _quietest(["-m", "bench.enrichment", "naive", *common], quick, log)
        log(f"  naive: {naive['images_per_s']:.3f} images/s, peak RSS {naive['peak_rss_mb']:.0f} MiB")
        bf16 = {"error": "skipped in --quick"}
        if not quick:
            log("enrichment: batch path again with DAM_DTYPE=bfloat16")
            try:
                bf16 = run_json_subprocess(
                    ["-m", "bench.enrichment", "batch", "--dtype", "bfloat16", *common], timeout=1800
                )
                log(
                    f"  batch bf16: {bf16['images_per_s']:.3f} images/s = {bf16['images_per_s'] / naive['images_per_s']:.2f}x naive"
                )
            except Exception as err:  # informational only
                bf16 = {"error": f"{type(err).__name__}: {err}"}
    ratio = batch["images_per_s"] / naive["images_per_s"]
    try:
        from dam_models.loading import dtype_name, resolve_dtype

        auto = dtype_name(resolve_dtype("auto", "cpu"))
    except Exception as err:  # informational
        auto = f"unknown ({type(err).__name__})"
    ceiling = batch["ceiling"]["images_per_s"]
    return {
        "images": {"jpeg_1600x1200": n_jpeg, "png_1024x768": n_png},
        "caption_tokens": CAPTION_TOKENS,
        "dam_dtype_auto_on_this_cpu": auto,
        "batch": batch,
        "naive": naive,
        "batch_bf16": bf16,
        "ratio_bf16": round(bf16["images_per_s"] / naive["images_per_s"], 2) if "images_per_s" in bf16 else None,
        "ratio": round(ratio, 2),
        "pipeline_vs_ceiling": round(batch["images_per_s"] / ceiling, 3),
        # If the pipeline cost nothing but the models: the most batching could win over naive.
        "ceiling_vs_naive": round(ceiling / naive["images_per_s"], 2),
        "target": ">= 3x naive",
        "met": ratio >= 3.0,
    }


QUIET_CORES = 0.2  # other sessions' CPU above which a full-mode measurement is taken again


def _contention(r: dict) -> float:
    return max(r["cpu"]["other_cores"], r.get("ceiling", {}).get("cpu", {}).get("other_cores", 0.0))


def _quietest(args: list[str], quick: bool, log) -> dict:
    """Run a side; in full mode, again (at most twice more) while other sessions took > QUIET_CORES."""
    attempts = []
    for _ in range(1 if quick else 3):
        r = run_json_subprocess(args, timeout=3600)
        attempts.append(r)
        if _contention(r) <= QUIET_CORES:
            break
        log(
            f"  other sessions used {_contention(r)} cores during this measurement "
            f"({r['images_per_s']:.3f} images/s): measuring again"
        )
    best = min(attempts, key=_contention)
    best["attempts"] = [{"images_per_s": a["images_per_s"], "other_cores": _contention(a)} for a in attempts]
    return best


def _warmup(store):
    import hashlib

    from bench.fixtures import jpeg, photo_like
    from dam_core.layout import original_key
    from dam_core.messages import UploadMessage

    data = jpeg(photo_like(640, 480, seed=99))
    sha = hashlib.sha256(data).hexdigest()
    key = original_key(sha[:32], ".jpg")
    store.put(key, data)
    return [
        UploadMessage(
            id=sha[:32],
            filename="warmup.jpg",
            r2_key=key,
            mime_type="image/jpeg",
            bytes=len(data),
            sha256=sha,
            width=640,
            height=480,
            uploaded_at=datetime.now(UTC),
        )
    ]


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
