"""The enrichment step on each model runtime, against the naive fp32 worker, the models alone and the CPU's matmul rates, plus parity.

    python -m bench.runtimes [--quick] [--models-dir DIR] [--out bench/out]

Every figure comes from one run on this machine: the seed's naive worker (fp32, one image at a
time), then the product's step (`dam_assets.enrichment.pipeline.enrich_chunks` and the stage writes
the asset makes) on each (runtime, dtype), each in its own process so its peak RSS is its own,
each with the models-alone ceiling measured in the same process (the model calls on input
prepared beforehand, no fetch, decode or writes). The default runtime also runs with the
prefetch off, so the overlap of decode and models shows (`wall` against the sum of the stages).

Parity: fp32 PyTorch is the reference. For each runtime and dtype, on the full-size random
models and on the tiny ones: image and text embedding cosine (min and mean over items), and for
captions the teacher-forced next-token logits after each token of the reference's own greedy
captions (cosine; top-1 agreement). Exact caption text is not compared: with random weights every
step is a near-tie (docs/models.md).

Writes OUT/runtimes.json and the "Model runtimes" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.fixtures import CAPTION_TOKENS, CpuMonitor, build_models, peak_rss_mb, run_json_subprocess, seed_store

# (runtime, dtype, quantization of the captioner's image side); the last is DAM_RUNTIME/DAM_QUANTIZE=auto.
# On a CPU without native bfloat16 (AVX2 only, say) `auto` runs float32 and PyTorch's bf16 is emulated
# (slower than fp32, never chosen): its rows are the float32 ones.
CONFIGS_BF16 = [
    ("torch", "float32", "none"),
    ("torch", "bfloat16", "none"),
    ("openvino", "float32", "none"),
    ("openvino", "bfloat16", "none"),
    ("openvino", "bfloat16", "int8"),
]
CONFIGS_FP32 = [
    ("torch", "float32", "none"),
    ("openvino", "float32", "none"),
    ("openvino", "float32", "int8"),
]


def configs() -> list[tuple[str, str, str]]:
    """This CPU's rows: the last is the default (`auto`), the first of its dtype on torch the old default."""
    from dam_models.cpu import cpu_has_native_bf16  # torch-free: the parent process never loads a model

    return CONFIGS_BF16 if cpu_has_native_bf16() else CONFIGS_FP32


def defaults() -> tuple[str, str]:
    """(the default's row, the old default's row: eager PyTorch at the dtype `auto` picks here)."""
    rows = configs()
    return _name(*rows[-1]), _name("torch", rows[-1][1], "none")


def _name(runtime: str, dtype: str, quantize: str) -> str:
    return f"{runtime}/{dtype}" + ("/int8" if quantize == "int8" else "")


CHUNK = 16  # the CPU's batch size (DEVICE_BATCH_SIZE)


def _uploads(path: str):
    from dam_core.messages import UploadMessage

    return [UploadMessage.model_validate(u) for u in json.loads(Path(path).read_text())]


# ----------------------------------------------------------------------------- children


def child_step(args) -> dict:
    import functools

    from dam_assets.enrichment.pipeline import Enrichment, enrich_chunks
    from dam_assets.enrichment.stages.captions import write_captions
    from dam_assets.enrichment.stages.embeddings import write_embeddings
    from dam_core.imaging import decode_batch
    from dam_core.store import LocalStore
    from dam_models.captioner import get_captioner
    from dam_models.embedder import get_embedder
    from dam_models.tagging import load_vocabulary

    store = LocalStore(Path(args.store))
    uploads = _uploads(args.uploads)
    t = time.perf_counter()
    kw = dict(device="cpu", dtype=args.dtype, runtime=args.runtime, cache_dir=args.cache)
    captioner = get_captioner(
        args.blip, max_new_tokens=CAPTION_TOKENS, min_new_tokens=CAPTION_TOKENS, quantize=args.quantize, **kw
    )
    embedder = get_embedder(args.clip, **kw)
    load_s = time.perf_counter() - t
    work = Enrichment(captioner=captioner, embedder=embedder, labels=load_vocabulary(), threshold=0.05, top_k=5)
    decode = functools.partial(decode_batch)
    enrich_chunks(store, uploads[:2], work, decode, chunk_size=CHUNK, prefetch=args.prefetch)  # warm-up

    mon = CpuMonitor()
    c0, t0 = time.process_time(), time.perf_counter()
    step = enrich_chunks(store, uploads, work, decode, chunk_size=CHUNK, prefetch=args.prefetch)
    t = time.perf_counter()
    write_captions(store, "bench", step.captions)
    write_embeddings(store, "bench", step.embeddings)  # and vectors/{id}.json
    writes_s = time.perf_counter() - t
    total = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    cpu = mon.stop()
    n = len(uploads)
    result = {
        "runtime": args.runtime,
        "dtype": args.dtype,
        "quantize": args.quantize,
        "prefetch": args.prefetch,
        "images": n,
        "errors": sum(1 for d in step.decoded if d.image is None),
        "seconds": round(total, 3),
        "images_per_s": round(n / total, 4),
        "cpu_s_per_image": round(cpu_s / n, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "model_load_s": round(load_s, 2),
        "step_wall_s": round(step.wall, 3),
        "stages_busy_s": {k: round(v, 3) for k, v in sorted(step.busy.items())},
        "stage_writes_s": round(writes_s, 3),
        "described": captioner.describe(),
        "cpu": cpu,
    }
    if args.ceiling:
        # The models alone: their input made beforehand from the same decoded images.
        images = [d.image for d in step.decoded if d.image is not None]
        chunks = [images[i : i + CHUNK] for i in range(0, len(images), CHUNK)]
        bp = [captioner.pixel_values(c) for c in chunks]
        cp = [embedder.pixel_values(c) for c in chunks]
        mon = CpuMonitor()
        t = time.perf_counter()
        for x in bp:
            captioner.backend.generate(x, **captioner._generate_kwargs())
        cap_s = time.perf_counter() - t
        t = time.perf_counter()
        for x in cp:
            embedder.embed_pixels(x)
        emb_s = time.perf_counter() - t
        result["ceiling"] = {
            "images": len(images),
            "caption_s": round(cap_s, 3),
            "embed_s": round(emb_s, 3),
            "images_per_s": round(len(images) / (cap_s + emb_s), 4),
            "cpu": mon.stop(),
        }
    return result


def _cos(a, b):
    import numpy as np

    a = np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1])
    b = np.asarray(b, np.float64).reshape(-1, np.shape(b)[-1])
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def child_parity(args) -> dict:
    import numpy as np

    from bench.fixtures import photo_like
    from dam_models.captioner import get_captioner
    from dam_models.embedder import get_embedder

    images = [photo_like(640 + 32 * i, 480, seed=300 + i) for i in range(args.images)]
    texts = ["a photo of a cat", "two people riding bikes on a street at sunset", "invoice", "a red car", ""]
    tokens = dict(max_new_tokens=CAPTION_TOKENS, min_new_tokens=CAPTION_TOKENS)
    ref_c = get_captioner(args.blip, device="cpu", dtype="float32", runtime="torch", cache_dir=args.cache, **tokens)
    ref_e = get_embedder(args.clip, device="cpu", dtype="float32", runtime="torch", cache_dir=args.cache)
    prefixes = np.asarray(ref_c.backend.generate(ref_c.pixel_values(images), **ref_c._generate_kwargs()))[:, :-1]
    want_logits = ref_c.prefix_logits(images, prefixes)
    want_img, want_txt = ref_e.embed_images(images), ref_e.embed_texts(texts)
    out = {}
    for runtime, dtype, quantize in configs():
        kw = dict(device="cpu", dtype=dtype, runtime=runtime, cache_dir=args.cache)
        c = get_captioner(args.blip, **tokens, quantize=quantize, **kw)
        e = get_embedder(args.clip, **kw)
        logits = c.prefix_logits(images, prefixes)
        lc, ic, tc = (
            _cos(logits, want_logits),
            _cos(e.embed_images(images), want_img),
            _cos(e.embed_texts(texts), want_txt),
        )
        out[_name(runtime, dtype, quantize)] = {
            "logits_cos_min": round(float(lc.min()), 5),
            "logits_cos_mean": round(float(lc.mean()), 5),
            "top1_agreement": round(float((logits.argmax(-1) == want_logits.argmax(-1)).mean()), 4),
            "image_cos_min": round(float(ic.min()), 5),
            "image_cos_mean": round(float(ic.mean()), 5),
            "text_cos_min": round(float(tc.min()), 5),
        }
    return {"images": len(images), "prefix_tokens": int(prefixes.shape[1]), "configs": out}


def child_gemm(args) -> dict:
    """This CPU's matrix-multiply rate through OpenVINO per precision, on ViT-B's MLP shapes (a chunk of
    16 images at BLIP's 577 tokens through 768 -> 3072 -> 768 layers): the hardware's own ceiling for
    what a runtime or a precision can gain."""
    import nncf
    import numpy as np
    import openvino as ov
    import torch

    rows, width, hidden, layers = CHUNK * 577, 768, 3072, 4

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = torch.nn.ModuleList(torch.nn.Linear(width, hidden) for _ in range(layers))
            self.down = torch.nn.ModuleList(torch.nn.Linear(hidden, width) for _ in range(layers))

        def forward(self, x):
            for up, down in zip(self.up, self.down, strict=True):
                x = x + down(torch.nn.functional.gelu(up(x)))
            return x

    torch.manual_seed(0)
    model = Mlp().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(rows, width).numpy()
    graph = ov.convert_model(model, example_input=torch.from_numpy(x))
    int8 = nncf.quantize(
        graph, nncf.Dataset([x[i * 577 : (i + 1) * 577] for i in range(4)]), model_type=nncf.ModelType.TRANSFORMER
    )
    ops = 2 * rows * width * hidden * 2 * layers
    core = ov.Core()
    out = {"shape": f"{rows}x{width}x{hidden}", "gops": {}}
    for name, g, precision in (("fp32", graph, "f32"), ("bf16", graph, "bf16"), ("int8", int8, "bf16")):
        request = core.compile_model(g, "CPU", {"INFERENCE_PRECISION_HINT": precision}).create_infer_request()
        request.infer({0: x})  # first call compiles kernels for the shape
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            request.infer({0: x})
            times.append(time.perf_counter() - t)
        out["gops"][name] = round(ops / float(np.median(times)) / 1e9, 1)
    return out


def child_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.runtimes child")
    p.add_argument("what", choices=["step", "parity", "gemm"])
    p.add_argument("--blip")
    p.add_argument("--clip")
    p.add_argument("--cache")
    p.add_argument("--store")
    p.add_argument("--uploads")
    p.add_argument("--runtime", default="torch")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prefetch", type=int, default=1)
    p.add_argument("--quantize", default="none")
    p.add_argument("--ceiling", action="store_true")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    child = {"step": child_step, "parity": child_parity, "gemm": child_gemm}[args.what]
    print(json.dumps(child(args)))
    return 0


# ----------------------------------------------------------------------------- parent


def run(quick: bool, models_dir: str | None = None, log=print) -> dict:
    from dam_core.store import LocalStore
    from dam_models.tiny import write_tiny_models

    n_jpeg, n_png = (14, 2) if quick else (48, 4)
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp:
        tmp = Path(tmp)
        blip, clip = build_models(Path(models_dir) if models_dir else tmp / "models", log=log, blip_text_heads=12)
        tiny_blip, tiny_clip = write_tiny_models(tmp / "tiny")
        cache = str(tmp / "converted")
        store = LocalStore(tmp / "store")
        uploads = seed_store(store, n_jpeg, n_png)
        (tmp / "uploads.json").write_text(json.dumps([u.model_dump(mode="json") for u in uploads]))
        (tmp / "warmup.json").write_text(json.dumps([u.model_dump(mode="json") for u in uploads[:1]]))
        common = ["--blip", str(blip), "--clip", str(clip), "--cache", cache]
        data = ["--store", str(tmp / "store"), "--uploads", str(tmp / "uploads.json")]

        # Conversions first (timed), so no measured process converts.
        t = time.perf_counter()
        run_json_subprocess(["-m", "bench.runtimes", "parity", *common, "--images", "2"], timeout=3600)
        convert_s = round(time.perf_counter() - t, 1)
        log(f"runtimes: conversions and a first parity pass in {convert_s} s")

        gemm = run_json_subprocess(["-m", "bench.runtimes", "gemm"], timeout=1200)
        log(f"runtimes: this CPU's matmuls through OpenVINO, GOPS: {gemm['gops']}")
        log(f"runtimes: naive fp32 worker on {len(uploads)} images")
        naive = run_json_subprocess(
            [
                "-m",
                "bench.enrichment",
                "naive",
                *data,
                "--warmup",
                str(tmp / "warmup.json"),
                "--blip",
                str(blip),
                "--clip",
                str(clip),
            ],
            timeout=3600,
        )
        log(f"  naive: {naive['images_per_s']:.3f} images/s")
        steps = {}
        for runtime, dtype, quantize in configs():
            name = _name(runtime, dtype, quantize)
            r = run_json_subprocess(
                [
                    "-m",
                    "bench.runtimes",
                    "step",
                    *common,
                    *data,
                    "--runtime",
                    runtime,
                    "--dtype",
                    dtype,
                    "--quantize",
                    quantize,
                    "--ceiling",
                ],
                timeout=3600,
            )
            steps[name] = r
            log(f"  step {name}: {r['images_per_s']:.3f} images/s; models alone {r['ceiling']['images_per_s']:.3f}")
        sequential = run_json_subprocess(
            [
                "-m",
                "bench.runtimes",
                "step",
                *common,
                *data,
                "--runtime",
                "openvino",
                "--dtype",
                configs()[-1][1],
                "--quantize",
                "int8",
                "--prefetch",
                "0",
            ],
            timeout=3600,
        )
        log(f"  step {defaults()[0]} without prefetch: {sequential['images_per_s']:.3f} images/s")
        n_parity = 4 if quick else 8
        parity = {
            "full_size": run_json_subprocess(
                ["-m", "bench.runtimes", "parity", *common, "--images", str(n_parity)], timeout=3600
            ),
            "tiny": run_json_subprocess(
                [
                    "-m",
                    "bench.runtimes",
                    "parity",
                    "--blip",
                    str(tiny_blip),
                    "--clip",
                    str(tiny_clip),
                    "--cache",
                    cache,
                    "--images",
                    str(n_parity),
                ],
                timeout=3600,
            ),
        }
    default, old_default = defaults()
    base = steps[old_default]["images_per_s"]
    return {
        "mode": "quick" if quick else "full",
        "images": {"jpeg_1600x1200": n_jpeg, "png_1024x768": n_png},
        "caption_tokens": CAPTION_TOKENS,
        "conversion_s": convert_s,
        "naive": naive,
        "default": default,
        "old_default": old_default,
        "steps": steps,
        "sequential_default": sequential,
        "gemm": gemm,
        "parity": parity,
        "ratios": {
            k: {
                "vs_naive": round(v["images_per_s"] / naive["images_per_s"], 2),
                "vs_old_default": round(v["images_per_s"] / base, 2),
                "vs_models_alone": round(v["images_per_s"] / v["ceiling"]["images_per_s"], 3),
            }
            for k, v in steps.items()
        },
    }


def render(r: dict) -> str:
    lines: list[str] = []
    w = lines.append
    w(
        f"## Model runtimes (issue 23): `python -m bench.runtimes{' --quick' if r['mode'] == 'quick' else ''}`, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    n = sum(r["images"].values())
    w(
        f"{n} images ({r['images']['jpeg_1600x1200']} JPEG 1600x1200, {r['images']['png_1024x768']} PNG 1024x768), "
        f"full-size random BLIP-base (384 px, 12 decoder heads) and CLIP B/32, {r['caption_tokens']} forced caption "
        f"tokens, chunks of {CHUNK}; one run, each row its own process; conversions took {r['conversion_s']} s before.\n"
    )
    w(
        "Rows: runtime / dtype, and /int8 where the captioner's image side is int8 (DAM_QUANTIZE); the last row is the default.\n"
    )
    w(
        f"| runtime / dtype | step images/s | x naive fp32 | x {r['old_default']} (old default) | models alone images/s | step / models alone | CPU s per image | peak RSS MiB | other cores busy |"
    )
    w("|---|---|---|---|---|---|---|---|---|")
    nv = r["naive"]
    w(
        f"| naive worker, torch fp32, one image at a time | {nv['images_per_s']:.3f} | 1.00 | | | | {nv['cpu_s_per_image']} | {nv['peak_rss_mb']:.0f} | {nv['cpu'].get('other_cores')} |"
    )
    for k, s in r["steps"].items():
        q = r["ratios"][k]
        w(
            f"| {k} | {s['images_per_s']:.3f} | {q['vs_naive']} | {q['vs_old_default']} | {s['ceiling']['images_per_s']:.3f} | "
            f"{q['vs_models_alone']} | {s['cpu_s_per_image']} | {s['peak_rss_mb']:.0f} | {s['cpu'].get('other_cores')} |"
        )
    seq = r["sequential_default"]
    default = r["default"]
    par = r["steps"][default]
    busy = par["stages_busy_s"]
    w("")
    w(
        f"Overlap on this CPU (no GPU here): {default} (the default) with the prefetch on did the step in {par['step_wall_s']} s "
        f"against {round(sum(busy.values()), 3)} s of stage time ({', '.join(f'{k} {v}' for k, v in busy.items())}); "
        f"with the prefetch off, {seq['step_wall_s']} s ({seq['images_per_s']:.3f} images/s). On two cores the models "
        "already use both, so the overlap mostly hides the decode and thumbnails.\n"
    )
    if "gemm" in r:
        w(_ceiling(r) + "\n")
    for name, p in r["parity"].items():
        w(
            f"Parity against fp32 PyTorch, {name.replace('_', '-')} models ({p['images']} images, "
            f"{p['prefix_tokens']} teacher-forced tokens each; target: cosine >= 0.99 per item):\n"
        )
        w(
            "| runtime / dtype | logits cosine min | logits cosine mean | top-1 agreement | image emb. cosine min | image mean | text emb. cosine min |"
        )
        w("|---|---|---|---|---|---|---|")
        for k, c in p["configs"].items():
            w(
                f"| {k} | {c['logits_cos_min']} | {c['logits_cos_mean']} | {c['top1_agreement']} | {c['image_cos_min']} | "
                f"{c['image_cos_mean']} | {c['text_cos_min']} |"
            )
        w("")
    w('Runtimes tried by hand beside these (ONNX Runtime int8, NNCF presets, streams): bench/NOTES.md, "Issue 23".')
    return "\n".join(lines) + "\n"


def _ceiling(r: dict) -> str:
    """What this CPU allows the int8 image side to gain over the old default, from its matmul rates."""
    gops = r["gemm"]["gops"]
    default, old_default = r["default"], r["old_default"]
    dtype = old_default.split("/")[1]
    short = "bf16" if dtype == "bfloat16" else "fp32"
    quant = gops["int8"] / gops[short]
    same = r["ratios"].get(f"openvino/{dtype}", {}).get("vs_old_default")
    bound = f"{quant * same:.2f}" if same else "n/a"
    return (
        f"The hardware's ceiling (`python -m bench.runtimes gemm`: OpenVINO matmuls of ViT-B's MLP shapes, "
        f"{r['gemm']['shape']}): fp32 {gops['fp32']}, bf16 {gops['bf16']}, int8 {gops['int8']} GOPS on this CPU. "
        f"int8 matmuls run {quant:.2f}x the {short} ones, and OpenVINO {dtype} ran the step {same}x eager PyTorch "
        f"{dtype}: if int8 sped up every part of that step as much as it speeds up matmuls, the step would reach "
        f"{bound}x the old default, its upper bound here. The default, whose decoder steps, attention and decode stay "
        f"{dtype}, reached "
        f"{r['ratios'][default]['vs_old_default']}x."
    )


def main(argv=None) -> int:
    from bench.report import standalone

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("step", "parity", "gemm"):
        return child_main(argv)
    return standalone(argv, "python -m bench.runtimes", __doc__, run, "runtimes", render)


if __name__ == "__main__":
    raise SystemExit(main())
