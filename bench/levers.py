"""Levers for the enrichment path, measured one at a time: `python -m bench.levers [--out bench/out] [--models-dir D]`.

Writes OUT/levers.json (figures + a Markdown section that bench.run puts into RESULTS.md).
A/B pairs are interleaved and the best of the repeats is kept, because other sessions may
share the machine; each row also carries the CPU the machine was busy with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.fixtures import (  # noqa: E402
    CAPTION_TOKENS,
    CpuMonitor,
    build_models,
    jpeg,
    machine,
    photo_like,
)


def _timed(fn, reps=1):
    best = None
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best


def attention(cap, n=8, reps=3) -> dict:
    import torch
    from transformers.models.blip.modeling_blip import BlipAttention

    from dam_models.captioner import use_sdpa_vision_attention

    pv = torch.randn(n, 3, 384, 384)
    mods = [m for m in cap.model.vision_model.modules() if isinstance(m, BlipAttention)]

    def mode(sdpa: bool):
        if sdpa:
            use_sdpa_vision_attention(cap.model)
        else:
            for m in mods:
                m.__dict__.pop("forward", None)  # back to the class's eager forward

    res = {"eager": [], "sdpa": []}
    cpu_s = {"eager": [], "sdpa": []}
    outs = {}
    mon = CpuMonitor()
    with torch.inference_mode():
        cap.model.vision_model(pixel_values=pv[:2])
        for i in range(2 * reps):
            name = "eager" if i % 2 == 0 else "sdpa"
            mode(name == "sdpa")
            t, c = time.perf_counter(), time.process_time()
            outs[name] = cap.model.vision_model(pixel_values=pv).last_hidden_state
            res[name].append((time.perf_counter() - t) / n)
            cpu_s[name].append((time.process_time() - c) / n)
    mode(True)
    diff = float((outs["eager"] - outs["sdpa"]).abs().max())
    return {
        "batch": n,
        "eager_s_per_image": round(min(res["eager"]), 3),
        "sdpa_s_per_image": round(min(res["sdpa"]), 3),
        "all": {k: [round(x, 3) for x in v] for k, v in res.items()},
        "cpu_s_per_image": {k: round(min(v), 3) for k, v in cpu_s.items()},
        "max_abs_diff": diff,
        "cpu": mon.stop(),
    }


def caption_batch(cap, images, sizes=(8, 16, 32)) -> dict:
    out = {}
    mon = CpuMonitor()
    cpu_s = {}
    for bs in sizes:
        c = time.process_time()
        dt = _timed(lambda bs=bs: cap.caption(images, batch_size=bs))
        out[str(bs)] = round(dt / len(images), 3)
        cpu_s[str(bs)] = round((time.process_time() - c) / len(images), 3)
    return {"images": len(images), "s_per_image": out, "cpu_s_per_image": cpu_s, "cpu": mon.stop()}


def threads(cap, emb, images) -> dict:
    import torch

    out = {}
    mon = CpuMonitor()
    base = torch.get_num_threads()
    for n in (1, 2, 1, 2):
        torch.set_num_threads(n)
        dt = _timed(lambda: (cap.caption(images, batch_size=len(images)), emb.embed_images(images)))
        out.setdefault(str(n), []).append(round(dt / len(images), 3))
    torch.set_num_threads(base)
    return {"images": len(images), "s_per_image": {k: min(v) for k, v in out.items()}, "all": out, "cpu": mon.stop()}


def decoding(cap, emb, n=8) -> dict:
    """Full decode vs JPEG draft (DECODE_MIN_SIDE), plus what the two processors cost on each."""
    from dam_core.imaging import DECODE_MIN_SIDE, decode

    datas = [jpeg(photo_like(1600, 1200, seed=300 + i)) for i in range(n)]
    mon = CpuMonitor()
    out = {}
    for name, side in (("full", 0), ("draft", DECODE_MIN_SIDE)):
        t_dec = _timed(lambda side=side: [decode(d, min_side=side) for d in datas], reps=3)
        imgs = [decode(d, min_side=side) for d in datas]
        t_proc = _timed(
            lambda imgs=imgs: (
                cap.processor.image_processor(images=imgs, return_tensors="pt"),
                emb.processor.image_processor(images=imgs, return_tensors="pt"),
            ),
            reps=3,
        )
        out[name] = {
            "size": list(imgs[0].size),
            "decode_ms": round(1000 * t_dec / n, 1),
            "processors_ms": round(1000 * t_proc / n, 1),
        }
    out["cpu"] = mon.stop()
    return out


def decode_threads(store_dir: Path, n=16) -> dict:
    from bench.fixtures import seed_store
    from dam_core.imaging import decode_batch
    from dam_core.store import LocalStore

    store = LocalStore(store_dir)
    uploads = seed_store(store, n, 0)
    mon = CpuMonitor()
    out = {}
    for t in (1, 2, 4, 8):
        out[str(t)] = round(1000 * _timed(lambda t=t: decode_batch(store, uploads, threads=t), reps=3) / n, 2)
    return {"images": n, "ms_per_image": out, "cpu": mon.stop()}


def bf16(blip: str, clip: str, images) -> dict:
    """Explicit DAM_DTYPE=bfloat16 on this CPU (auto stays fp32): speed and how much captions change."""
    from dam_models.captioner import get_captioner
    from dam_models.embedder import get_embedder

    out = {}
    mon = CpuMonitor()
    vecs = {}
    caps = {}
    for dtype in ("float32", "bfloat16"):
        cap = get_captioner(
            blip, device="cpu", dtype=dtype, max_new_tokens=CAPTION_TOKENS, min_new_tokens=CAPTION_TOKENS
        )
        emb = get_embedder(clip, device="cpu", dtype=dtype)
        cap.caption(images[:1])
        emb.embed_images(images[:1])
        t = time.perf_counter()
        caps[dtype] = cap.caption(images, batch_size=len(images))
        tc = time.perf_counter() - t
        t = time.perf_counter()
        vecs[dtype] = emb.embed_images(images)
        te = time.perf_counter() - t
        out[dtype] = {
            "caption_s_per_image": round(tc / len(images), 3),
            "embed_s_per_image": round(te / len(images), 3),
        }
    import numpy as np

    cos = (vecs["float32"] * vecs["bfloat16"]).sum(axis=1)
    out["embedding_cosine_min"] = round(float(np.min(cos)), 4)
    out["captions_identical"] = sum(a == b for a, b in zip(caps["float32"], caps["bfloat16"], strict=True))
    out["images"] = len(images)
    out["cpu"] = mon.stop()
    return out


def markdown(r: dict) -> str:
    lines = [
        "Measured with `python -m bench.levers` on the same models (random full-size BLIP-base / CLIP B/32), "
        "interleaved where it is an A/B pair, best of the repeats. CPU column: cores busy on the machine / "
        "ours / other sessions.\n",
        "| lever | measurement | kept? |",
        "|---|---|---|",
    ]

    def cpu(c):
        return f" (CPU {c['machine_busy_cores']}/{c['bench_cores']}/{c['other_cores']})"

    a = r.get("attention")
    if a:
        gain = 100 * (1 - a["sdpa_s_per_image"] / a["eager_s_per_image"])
        cs = a.get("cpu_s_per_image", {})
        cpu_txt = f" (process CPU {cs['eager']} -> {cs['sdpa']} s/image)" if cs else ""
        lines.append(
            f"| BLIP vision attention: eager (transformers) vs SDPA | vision tower, batch {a['batch']}: "
            f"{a['eager_s_per_image']} -> {a['sdpa_s_per_image']} s/image wall ({gain:.0f}% less){cpu_txt}, max abs diff "
            f"{a['max_abs_diff']:.1e}{cpu(a['cpu'])} | yes: `dam_models/captioner.py` |"
        )
    c = r.get("caption_batch")
    if c:
        cs = c.get("cpu_s_per_image", {})
        vals = ", ".join(
            f"batch {k}: {v} s" + (f" (CPU {cs[k]} s)" if k in cs else "") for k, v in c["s_per_image"].items()
        )
        lines.append(
            f"| caption batch size | `Captioner.caption`, {c['images']} images, s/image: {vals}{cpu(c['cpu'])} | "
            f"{r.get('caption_batch_decision', '')} |"
        )
    t = r.get("threads")
    if t:
        vals = ", ".join(f"{k} thread(s): {v} s" for k, v in t["s_per_image"].items())
        lines.append(
            f"| torch threads | caption + embed, {t['images']} images, s/image: {vals}{cpu(t['cpu'])} | "
            f"default kept (torch uses all cores); interop threads do not matter for one eager graph |"
        )
    d = r.get("decoding")
    if d:
        lines.append(
            f"| JPEG draft decode (DECODE_MIN_SIDE) | 1600x1200 JPEG: full decode {d['full']['decode_ms']} ms + "
            f"both processors {d['full']['processors_ms']} ms vs draft to {d['draft']['size'][0]}x{d['draft']['size'][1]} "
            f"{d['draft']['decode_ms']} ms + {d['draft']['processors_ms']} ms per image{cpu(d['cpu'])} | yes (already in "
            f"`imaging.py`); the decode is shared by both processors |"
        )
    dt = r.get("decode_threads")
    if dt:
        vals = ", ".join(f"{k}: {v} ms" for k, v in dt["ms_per_image"].items())
        lines.append(f"| `decode_batch` threads | fetch + decode per image: {vals}{cpu(dt['cpu'])} | default 4 kept |")
    b = r.get("bf16")
    if b:
        lines.append(
            f"| `DAM_DTYPE=bfloat16` vs `float32` (this CPU has AVX512-BF16) | caption "
            f"{b['float32']['caption_s_per_image']} -> {b['bfloat16']['caption_s_per_image']} s/image, embed "
            f"{b['float32']['embed_s_per_image']} -> {b['bfloat16']['embed_s_per_image']} s/image; embeddings "
            f"cosine >= {b['embedding_cosine_min']} to fp32, {b['captions_identical']}/{b['images']} captions "
            f"identical{cpu(b['cpu'])} | not in the fp32 headline; numerics change, so evaluate on real checkpoints before defaulting to it |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.levers")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    p.add_argument("--models-dir")
    p.add_argument(
        "--skip", default="", help="comma-separated: attention,caption_batch,threads,decoding,decode_threads,bf16"
    )
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    from dam_core.imaging import decode
    from dam_models.captioner import get_captioner
    from dam_models.embedder import get_embedder

    r: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-levers-") as tmp:
        blip, clip = build_models(Path(args.models_dir) if args.models_dir else Path(tmp) / "models")
        cap = get_captioner(
            str(blip), device="cpu", dtype="float32", max_new_tokens=CAPTION_TOKENS, min_new_tokens=CAPTION_TOKENS
        )
        emb = get_embedder(str(clip), device="cpu", dtype="float32")
        images = [decode(jpeg(photo_like(1600, 1200, seed=400 + i))) for i in range(32)]
        cap.caption(images[:2])
        emb.embed_images(images[:2])

        def step(name, fn):
            if name in skip:
                return
            print(f"levers: {name} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            r[name] = fn()
            print(f"  {name}: {json.dumps(r[name])} ({time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)

        step("attention", lambda: attention(cap))
        step("decoding", lambda: decoding(cap, emb))
        step("decode_threads", lambda: decode_threads(Path(tmp) / "store"))
        step("threads", lambda: threads(cap, emb, images[:8]))
        step("caption_batch", lambda: caption_batch(cap, images[:32]))
        step("bf16", lambda: bf16(str(blip), str(clip), images[:8]))
    c = r.get("caption_batch")
    if c:
        best = min(c["s_per_image"], key=c["s_per_image"].get)
        r["caption_batch_decision"] = (
            f"fastest here: batch {best}; the default stays 16 unless a larger batch wins by more than the noise"
        )
    r["markdown"] = markdown(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prev = out / "levers.json"
    if prev.exists() and skip:
        old = json.loads(prev.read_text())
        for k, v in old.items():
            r.setdefault(k, v)
        r["markdown"] = markdown(r)
    prev.write_text(json.dumps(r, indent=1, default=str))
    print(r["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
