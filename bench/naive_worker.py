"""The naive per-image worker the pipeline replaced (the seed's design), kept as a baseline.

One message at a time: fetch the original, decode it at full resolution, caption it with BLIP
and embed it with CLIP at batch size 1, write ``vectors/{id}.json``, then read the whole
``metadata/assets.parquet``, append one row and write the whole file back. Plain transformers
calls, nothing shared with the pipeline except the object store classes (so both sides read the
same bytes from the same kind of store).

    python -m bench.naive_worker consume --amqp URL --queue NAME --store DIR --blip DIR --clip DIR
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

TABLE_KEY = "metadata/assets.parquet"
# The seed's metadata columns.
SCHEMA = pa.schema([(name, pa.string()) for name in ("id", "filename", "r2_key", "vector_key", "mime_type", "caption")])


class NaiveWorker:
    def __init__(
        self, blip_dir: str, clip_dir: str, store, caption_tokens: int = 20, min_new_tokens: int | None = None
    ):
        from transformers import (
            AutoTokenizer,
            BlipForConditionalGeneration,
            BlipImageProcessorPil,
            BlipProcessor,
            CLIPImageProcessorPil,
            CLIPModel,
            CLIPProcessor,
        )

        self.store = store
        self.max_new_tokens = caption_tokens
        self.min_new_tokens = caption_tokens if min_new_tokens is None else min_new_tokens
        # The PIL processors, named explicitly: this environment has no torchvision.
        self.blip_processor = BlipProcessor(
            image_processor=BlipImageProcessorPil.from_pretrained(blip_dir),
            tokenizer=AutoTokenizer.from_pretrained(blip_dir),
        )
        self.blip = BlipForConditionalGeneration.from_pretrained(blip_dir).eval()
        self.clip_processor = CLIPProcessor(
            image_processor=CLIPImageProcessorPil.from_pretrained(clip_dir),
            tokenizer=AutoTokenizer.from_pretrained(clip_dir),
        )
        self.clip = CLIPModel.from_pretrained(clip_dir).eval()

    def caption(self, image: Image.Image) -> str:
        inputs = self.blip_processor(images=image, return_tensors="pt")
        out = self.blip.generate(
            pixel_values=inputs["pixel_values"], max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens
        )
        return self.blip_processor.tokenizer.decode(out[0], skip_special_tokens=True).strip()

    def embed(self, image: Image.Image) -> list[float]:
        inputs = self.clip_processor(images=image, return_tensors="pt")
        out = self.clip.get_image_features(pixel_values=inputs["pixel_values"])
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return feats[0].tolist()

    def handle(self, body: bytes) -> dict:
        """Process one queue message end to end; returns the metadata row."""
        msg = json.loads(body)
        data = self.store.get(msg["r2_key"])
        image = Image.open(io.BytesIO(data)).convert("RGB")  # full resolution, every pixel decoded
        with torch.no_grad():
            caption = self.caption(image)
            embedding = self.embed(image)
        vkey = f"vectors/{msg['id']}.json"
        self.store.put(
            vkey, json.dumps({"id": msg["id"], "embedding": embedding}).encode(), content_type="application/json"
        )
        row = {
            "id": msg["id"],
            "filename": msg["filename"],
            "r2_key": msg["r2_key"],
            "vector_key": vkey,
            "mime_type": msg["mime_type"],
            "caption": caption,
        }
        self.append_row(row)
        return row

    def append_row(self, row: dict) -> None:
        """Read the whole table, add one row, write the whole table back."""
        from dam_core.store import KeyNotFound

        new = pa.Table.from_pylist([row], schema=SCHEMA)
        try:
            table = pa.concat_tables([pq.read_table(io.BytesIO(self.store.get(TABLE_KEY))), new])
        except KeyNotFound:
            table = new
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.store.put(TABLE_KEY, buf.getvalue(), content_type="application/vnd.apache.parquet")


def consume(worker: NaiveWorker, amqp_url: str, queue: str, limit: int | None = None, idle_timeout: float = 5) -> int:
    """The seed's loop: prefetch 1, handle, ack, repeat. Returns the number of messages handled."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, passive=True)
    ch.basic_qos(prefetch_count=1)
    done = 0
    for method, _props, body in ch.consume(queue, auto_ack=False, inactivity_timeout=idle_timeout):
        if method is None:
            break
        worker.handle(body)
        ch.basic_ack(method.delivery_tag)
        done += 1
        if limit and done >= limit:
            break
    ch.cancel()
    conn.close()
    return done


def main(argv=None) -> int:
    from dam_core.store import LocalStore

    p = argparse.ArgumentParser(prog="python -m bench.naive_worker")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("consume", help="consume a RabbitMQ queue one message at a time")
    c.add_argument("--amqp", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    c.add_argument("--queue", required=True)
    c.add_argument("--store", required=True)
    c.add_argument("--blip", required=True)
    c.add_argument("--clip", required=True)
    c.add_argument("--limit", type=int)
    c.add_argument("--idle-timeout", type=float, default=5, help="stop after this many seconds without a message")
    args = p.parse_args(argv)
    worker = NaiveWorker(args.blip, args.clip, LocalStore(args.store))
    print("naive worker: models loaded, consuming", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    n = consume(worker, args.amqp, args.queue, args.limit, args.idle_timeout)
    dt = time.perf_counter() - t0
    print(json.dumps({"messages": n, "seconds": round(dt, 3), "per_s": round(n / dt, 3) if dt else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
