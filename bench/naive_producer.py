"""The naive producer the ingest API replaced (the seed's design), kept as a baseline.

An ``async def`` FastAPI route that reads the whole upload into memory, writes the original
with a blocking store call and opens a new pika ``BlockingConnection`` for every request to
publish the message -- all on the event loop, so one request at a time makes progress. It
gives the same guarantee as the real API (202 only after the object is stored and the broker
confirmed a persistent message), so the comparison is about design, not about durability.

    python -m bench.naive_producer --port 8001      # settings from the environment, as `dam api`
"""

from __future__ import annotations

import argparse
import hashlib
import io
from datetime import UTC, datetime

from fastapi import FastAPI, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image

_EXT = {
    "JPEG": (".jpg", "image/jpeg"),
    "PNG": (".png", "image/png"),
    "WEBP": (".webp", "image/webp"),
    "GIF": (".gif", "image/gif"),
    "TIFF": (".tiff", "image/tiff"),
    "BMP": (".bmp", "image/bmp"),
}


def create_app(settings=None) -> FastAPI:
    import pika

    from dam_core.layout import original_key
    from dam_core.messages import UploadMessage
    from dam_core.settings import load_settings
    from dam_core.store import make_store

    settings = settings or load_settings()
    store = make_store(settings)
    if settings.amqp_url is None:
        raise SystemExit("the naive producer needs AMQP_URL (RabbitMQ)")
    amqp_url = settings.amqp_url.get_secret_value()
    queue = settings.dam_queue
    queue_args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": settings.dead_letter_queue}
    app = FastAPI(title="naive producer")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.post("/upload", status_code=202)
    async def upload(file: UploadFile):
        data = await file.read()
        try:
            img = Image.open(io.BytesIO(data))
            ext, mime = _EXT[img.format]
            width, height = img.size
        except Exception:
            return JSONResponse({"detail": "not an image"}, status_code=415)
        sha = hashlib.sha256(data).hexdigest()
        asset_id = sha[:32]
        key = original_key(asset_id, ext)
        store.put(key, data, content_type=mime)  # blocking call on the event loop
        message = UploadMessage(
            id=asset_id,
            filename=file.filename or "upload",
            r2_key=key,
            mime_type=mime,
            bytes=len(data),
            sha256=sha,
            width=width,
            height=height,
            uploaded_at=datetime.now(UTC),
        )
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))  # a new connection per request
        try:
            ch = conn.channel()
            ch.queue_declare(settings.dead_letter_queue, durable=True)
            ch.queue_declare(queue, durable=True, arguments=queue_args)
            ch.confirm_delivery()
            ch.basic_publish(
                "",
                queue,
                message.to_json(),
                pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json"),
                mandatory=True,
            )
        finally:
            conn.close()
        return {"id": asset_id, "r2_key": key, "status": "queued"}

    return app


def main(argv=None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m bench.naive_producer")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    # Served the way `dam api` serves the real app.
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
