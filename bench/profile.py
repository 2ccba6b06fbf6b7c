"""Profiles behind the targets that are short: `python -m bench.profile [enrichment|upload|all] [--out bench/out]`.

enrichment: torch.profiler op table of the batch path's model calls (BLIP generate + CLIP) on 8 images.
upload:     py-spy (`pip install py-spy`) sampling `dam api` while 16 clients post ~200 KB JPEGs;
            top functions by own samples and by inclusive samples. Writes OUT/profiles/*.txt.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def enrichment(out: Path, models_dir: str | None) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.fixtures import CAPTION_TOKENS, build_models, jpeg, photo_like
    from dam_core.imaging import decode
    from dam_models.captioner import get_captioner
    from dam_models.embedder import get_embedder

    with tempfile.TemporaryDirectory() as tmp:
        blip, clip = build_models(Path(models_dir) if models_dir else Path(tmp) / "models")
        cap = get_captioner(
            str(blip), device="cpu", dtype="float32", max_new_tokens=CAPTION_TOKENS, min_new_tokens=CAPTION_TOKENS
        )
        emb = get_embedder(str(clip), device="cpu", dtype="float32")
        images = [decode(jpeg(photo_like(1600, 1200, seed=700 + i))) for i in range(8)]
        cap.caption(images[:1])
        emb.embed_images(images[:1])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with torch.profiler.record_function("caption (BLIP generate, batch 8)"):
                cap.caption(images)
            with torch.profiler.record_function("embed (CLIP, batch 8)"):
                emb.embed_images(images)
        text = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    (out / "enrichment_torch_profile.txt").write_text(text)
    return text


def _fold(raw: Path, top: int = 25) -> str:
    own, incl, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        n = int(n)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"{total} samples (all threads, active only)", "", "own %  function (file:line)"]
    lines += [f"{100 * v / total:5.1f}  {k}" for k, v in own.most_common(top)]
    lines += ["", "inclusive %  function"]
    lines += [
        f"{100 * v / total:5.1f}  {k}"
        for k, v in incl.most_common(top + 15)
        if not k.startswith(("thread (", "Thread._bootstrap"))
    ]
    return "\n".join(lines)


def upload(out: Path) -> str:
    from bench.upload import (
        RABBIT_URL,
        clean_env,
        delete_queues,
        free_port,
        make_images,
        start_server,
        stop_server,
        wait_http,
    )

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return "py-spy is not installed (pip install py-spy); no upload profile"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "images", 8)
        queue = f"bench-prof-{uuid.uuid4().hex[:8]}"
        port = free_port()
        proc = start_server(
            "api", port, clean_env({"DAM_DATA_DIR": str(tmp / "data"), "AMQP_URL": RABBIT_URL, "DAM_QUEUE": queue})
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", 60, proc)
            lg = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    "--url",
                    f"http://127.0.0.1:{port}/upload",
                    "--images",
                    str(tmp / "images"),
                    "--duration",
                    "14",
                    "--warmup",
                    "1",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(2)
            raw = out / "upload_pyspy_raw.txt"
            subprocess.run(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    "10",
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--threads",
                    "--nonblocking",
                    "-o",
                    str(raw),
                ],
                capture_output=True,
                timeout=60,
            )
            load = lg.communicate(timeout=60)[0].strip()
        finally:
            stop_server(proc)
            delete_queues([queue, f"{queue}.dead"])
    text = f"load during the profile: {load}\n\n" + (_fold(raw) if raw.exists() else "py-spy wrote nothing")
    (out / "upload_pyspy.txt").write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("what", nargs="?", default="all", choices=["enrichment", "upload", "all"])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    p.add_argument("--models-dir")
    args = p.parse_args(argv)
    out = Path(args.out) / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    if args.what in ("enrichment", "all"):
        print(enrichment(out, args.models_dir))
    if args.what in ("upload", "all"):
        print(upload(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
