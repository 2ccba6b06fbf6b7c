"""HTTP load generator, run in its own process so it never shares a GIL with the server.

    python -m bench.loadgen --url http://127.0.0.1:8000/upload --images DIR --concurrency 16 --duration 20

Each request posts one JPEG as multipart field ``file``. Every body is unique (a JPEG comment
segment with a counter is inserted after the SOI marker), so the content-derived id, the object
key and the queue message are new each time: nothing is answered from a duplicate check.
Bodies are assembled from pre-read bytes so the generator spends little CPU per request.
Prints one JSON line: requests/s, latency percentiles, status counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

BOUNDARY = "benchboundary7MA4YWxkTrZu0gW"


def unique_jpeg(base: bytes, tag: bytes) -> bytes:
    """The same image with a COM segment carrying `tag`: new bytes, new sha256, same pixels."""
    assert base[:2] == b"\xff\xd8"
    seg = b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag
    return base[:2] + seg + base[2:]


def multipart(data: bytes, filename: str) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def percentile(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    k = (len(sorted_vals) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


async def _run(
    url: str, images: list[bytes], concurrency: int, duration: float, warmup: float, api_key: str | None
) -> dict:
    import httpx

    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if api_key:
        headers["X-API-Key"] = api_key
    run_id = os.urandom(6).hex().encode()
    counter = 0
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    sent_bytes = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(60.0, connect=10.0)
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_stop = t_measure + duration
    last_done = t_measure

    async with httpx.AsyncClient(limits=limits, timeout=timeout, http2=False) as client:

        async def worker(wid: int):
            nonlocal counter, sent_bytes, last_done
            while True:
                now = time.perf_counter()
                if now >= t_stop:
                    return
                counter += 1
                data = unique_jpeg(images[counter % len(images)], run_id + b"-%d-%d" % (wid, counter))
                body = multipart(data, f"bench-{counter}.jpg")
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers=headers)
                    code = str(r.status_code)
                except Exception as err:  # counted, never fatal: the server may be saturated
                    code = "error"
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                t1 = time.perf_counter()
                if t0 >= t_measure:
                    statuses[code] = statuses.get(code, 0) + 1
                    if code == "202":
                        latencies.append(t1 - t0)
                        sent_bytes += len(data)
                    last_done = max(last_done, t1)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = max(last_done, t_stop) - t_measure
    lat = sorted(latencies)
    ok = len(lat)
    return {
        "concurrency": concurrency,
        "duration_s": round(elapsed, 3),
        "requests_ok": ok,
        "requests_total": counter,  # sent over the whole run, warm-up included (per-request CPU)
        "requests_per_s": round(ok / elapsed, 2) if elapsed else None,
        "mb_per_s": round(sent_bytes / elapsed / 1e6, 2) if elapsed else None,
        "latency_ms": {
            "p50": round(1000 * percentile(lat, 0.50), 1) if lat else None,
            "p90": round(1000 * percentile(lat, 0.90), 1) if lat else None,
            "p99": round(1000 * percentile(lat, 0.99), 1) if lat else None,
            "max": round(1000 * lat[-1], 1) if lat else None,
            "mean": round(1000 * statistics.fmean(lat), 1) if lat else None,
        },
        "statuses": statuses,
        "errors": errors,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("--url", required=True)
    p.add_argument("--images", required=True, help="folder of JPEGs to post")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    p.add_argument("--api-key", default=os.environ.get("DAM_API_KEY"))
    args = p.parse_args(argv)
    images = [f.read_bytes() for f in sorted(Path(args.images).glob("*.jpg"))]
    if not images:
        print("no images", file=sys.stderr)
        return 2
    coro = _run(args.url, images, args.concurrency, args.duration, args.warmup, args.api_key)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
