"""Direct-to-store uploads against the store's own speed, at 0, 10 and 20 ms to the store and the broker.

Per round trip, the same 16 client threads send the same ~200 KB JPEGs (every body unique) three ways,
one after the other, for the same time:
- raw: presigned PUTs straight to the bucket (signed in the client, no API): the store's ceiling;
- direct: the API's direct path (`GET /s3/params`, the PUT to the store, `POST /s3/complete`);
- upload: `POST /upload` through the API.
Uploads/s, p50/p99, and the API process's CPU per upload. S3 is moto in its own process, RabbitMQ the
local broker; latency is added by bench.netem proxies in front of both. Then a 200 MB file is sent
multipart, cut half way (a part cut mid-body, as a dropped connection leaves it), and resumed from
the parts the store lists: the bytes sent again.

    python -m bench.direct [--quick] [--no-report]
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.loadgen import percentile, unique_jpeg
from bench.upload import (
    CONCURRENCY,
    RABBIT_URL,
    MotoServer,
    Proxy,
    clean_env,
    delete_queues,
    free_port,
    make_images,
    start_server,
    stop_server,
    wait_http,
)

RTTS_MS = (0.0, 10.0, 20.0)
QUICK_RTTS_MS = (0.0,)
TARGET_DIRECT = 0.9  # direct path / raw presigned PUTs
TARGET_UPLOAD = 0.8  # POST /upload / raw presigned PUTs
TARGET_API_CPU_MS = 3.0
BIG = 200 * 1024 * 1024
PART = 8 * 1024 * 1024


def _s3_client(env: dict):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["R2_ENDPOINT"],
        region_name=env["R2_REGION"],
        aws_access_key_id=env["R2_ACCESS_KEY_ID"],
        aws_secret_access_key=env["R2_SECRET_ACCESS_KEY"],
    )


def _drive(send, payloads: list[bytes], seconds: float, warmup: float) -> dict:
    """CONCURRENCY threads calling send(body) -> ok until the time is up; rate and latency after the warm-up."""
    run = uuid.uuid4().hex[:8].encode()
    t_measure = time.perf_counter() + warmup
    t_stop = t_measure + seconds
    lat: list[list[float]] = [[] for _ in range(CONCURRENCY)]
    failed = [0] * CONCURRENCY

    def loop(t: int) -> None:
        i = 0
        while (t0 := time.perf_counter()) < t_stop:
            body = unique_jpeg(payloads[i % len(payloads)], run + b"-%d-%d" % (t, i))
            ok = send(body)
            if t0 >= t_measure:
                if ok:
                    lat[t].append(time.perf_counter() - t0)
                else:
                    failed[t] += 1
            i += 1

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(loop, range(CONCURRENCY)))
    all_lat = sorted(x for part in lat for x in part)
    return {
        "ok": len(all_lat),
        "failed": sum(failed),
        "per_s": round(len(all_lat) / seconds, 1),
        "p50_ms": round(1000 * percentile(all_lat, 0.5), 1) if all_lat else None,
        "p99_ms": round(1000 * percentile(all_lat, 0.99), 1) if all_lat else None,
    }


def _api_cpu(pid: int) -> float:
    from bench.fixtures import pid_cpu

    return pid_cpu(pid) or 0.0


def _one_rtt(rtt: float, moto: MotoServer, payloads: list[bytes], seconds: float, warmup: float, log) -> dict:
    import httpx

    proxies: list[Proxy] = []
    s3env = moto.bucket()
    amqp = RABBIT_URL
    if rtt:
        proxies = [Proxy(("127.0.0.1", 5672), rtt / 2000), Proxy(("127.0.0.1", moto.port), rtt / 2000)]
        amqp = RABBIT_URL.replace("127.0.0.1:5672", f"127.0.0.1:{proxies[0].port}")
        s3env["R2_ENDPOINT"] = f"http://127.0.0.1:{proxies[1].port}"
    queue = f"bench-direct-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-direct-"))
    env = clean_env(
        {
            **s3env,
            "DAM_DATA_DIR": str(tmp),
            "AMQP_URL": amqp,
            "DAM_QUEUE": queue,
            "DAM_MAX_UPLOAD_BYTES": str(BIG + 2**20),
        }
    )
    port = free_port()
    api = start_server("api", port, env)
    base = f"http://127.0.0.1:{port}"
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=4))
        return local.c

    s3 = _s3_client(s3env)

    def raw(body: bytes) -> bool:
        key = f"raw/{hashlib.sha256(body).hexdigest()}"
        url = s3.generate_presigned_url(
            "put_object", Params={"Bucket": s3env["R2_BUCKET"], "Key": key, "ContentType": "image/jpeg"}, ExpiresIn=900
        )
        return client().put(url, content=body, headers={"Content-Type": "image/jpeg"}).status_code == 200

    def direct(body: bytes) -> bool:
        c = client()
        sha = hashlib.sha256(body).hexdigest()
        p = c.get(
            f"{base}/s3/params",
            params={"filename": "b.jpg", "type": "image/jpeg", "metadata[sha256]": sha, "metadata[size]": len(body)},
        )
        if p.status_code != 200:
            return False
        signed = p.json()
        if c.put(signed["url"], content=body, headers=signed.get("headers") or {}).status_code != 200:
            return False
        return c.post(f"{base}/s3/complete", params={"key": signed["key"]}).status_code == 202

    def upload(body: bytes) -> bool:
        r = client().post(f"{base}/upload", files={"file": ("b.jpg", body, "application/octet-stream")})
        return r.status_code == 202

    row: dict = {}
    try:
        wait_http(base + "/readyz", 90, api)
        for name, send in (("raw", raw), ("direct", direct), ("upload", upload)):
            cpu0 = _api_cpu(api.pid)
            row[name] = _drive(send, payloads, seconds, warmup)
            spent = _api_cpu(api.pid) - cpu0
            row[name]["api_cpu_ms"] = round(1000 * spent / max(1, row[name]["ok"]), 2) if name != "raw" else 0.0
            log(f"  {rtt:g} ms {name:<7} {row[name]}")
        for name in ("direct", "upload"):
            row[name]["vs_raw"] = round(row[name]["per_s"] / row["raw"]["per_s"], 2) if row["raw"]["per_s"] else None
        if rtt == 0:
            row["resume"] = _cut_and_resume(base, client, log)
    finally:
        stop_server(api)
        for px in proxies:
            px.stop()
        delete_queues([queue, f"{queue}.dead"])
    return row


def _big_body() -> bytes:
    """A 200 MB upload that passes the API's header checks: a real JPEG's header, its pixels, padding."""
    from bench.fixtures import jpeg
    from dam_models.calibration import photo_like

    head = jpeg(photo_like(640, 480, seed=3))
    return head + os.urandom(BIG - len(head))


def _cut_and_resume(base: str, client, log) -> dict:
    """Multipart: half the parts, then one part cut mid-body; then list the parts and send the rest."""
    c = client()
    body = _big_body()
    sha = hashlib.sha256(body).hexdigest()
    parts = [body[i : i + PART] for i in range(0, len(body), PART)]
    sent = 0
    r = c.post(
        f"{base}/s3/multipart",
        json={"filename": "big.jpg", "type": "image/jpeg", "metadata": {"sha256": sha, "size": str(len(body))}},
    )
    r.raise_for_status()
    up = r.json()
    upload_id, key = up["uploadId"], up["key"]

    def put_part(n: int, data: bytes) -> None:
        nonlocal sent
        url = c.get(f"{base}/s3/multipart/{upload_id}/{n}", params={"key": key}).json()["url"]
        sent += len(data)
        c.put(url, content=data).raise_for_status()

    half = len(parts) // 2
    for n in range(1, half + 1):
        put_part(n, parts[n - 1])
    # The connection drops half way through the next part: the store keeps nothing of it.
    url = c.get(f"{base}/s3/multipart/{upload_id}/{half + 1}", params={"key": key}).json()["url"]
    cut = parts[half][: len(parts[half]) // 2]
    sent += len(cut)
    try:
        c.put(url, content=cut, headers={"Content-Length": str(len(parts[half]))}, timeout=5)
    except Exception:
        pass
    first_run = sent
    # Resumed: what the store holds is listed, the rest sent.
    listed = c.get(f"{base}/s3/multipart/{upload_id}", params={"key": key}).json()
    have = {p["PartNumber"]: p["ETag"] for p in listed}
    resent = 0
    for n in range(1, len(parts) + 1):
        if n not in have:
            before = sent
            put_part(n, parts[n - 1])
            resent += sent - before
    listed = c.get(f"{base}/s3/multipart/{upload_id}", params={"key": key}).json()
    t = time.perf_counter()
    done = c.post(
        f"{base}/s3/multipart/{upload_id}/complete",
        params={"key": key},
        json={"parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed]},
        timeout=600,
    )
    complete_s = time.perf_counter() - t
    out = {
        "bytes": len(body),
        "parts": len(parts),
        "part_bytes": PART,
        "sent_before_cut": first_run,
        "parts_listed_after_cut": len(have),
        "sent_on_resume": resent,
        "unfinished_bytes": len(body) - half * PART,
        "complete_status": done.status_code,
        "complete_s": round(complete_s, 2),
    }
    log(f"  resume: {out}")
    return out


def run(quick: bool, models_dir: str | None = None, log=print) -> dict:
    seconds, warmup = (4.0, 1.0) if quick else (10.0, 2.0)
    with tempfile.TemporaryDirectory(prefix="bench-direct-img-") as tmp:
        make_images(Path(tmp), 8 if quick else 32)
        payloads = [f.read_bytes() for f in sorted(Path(tmp).glob("*.jpg"))]
    moto = MotoServer()
    try:
        rtts = {
            f"{rtt:g}": _one_rtt(rtt, moto, payloads, seconds, warmup, log)
            for rtt in (QUICK_RTTS_MS if quick else RTTS_MS)
        }
    finally:
        moto.stop()
    return {
        "concurrency": CONCURRENCY,
        "seconds": seconds,
        "image_bytes_mean": int(sum(map(len, payloads)) / len(payloads)),
        "rtts": rtts,
        "cpus": os.cpu_count(),
    }


def render(r: dict) -> str:
    lines = [
        "## Direct uploads\n",
        f"`python -m bench.direct`: {r['concurrency']} client threads, ~{r['image_bytes_mean'] // 1000} KB JPEGs (every "
        f"body unique), {r['seconds']:g} s per way after a warm-up; S3 = moto in its own process, RabbitMQ local, "
        "the round trip added in front of both by bench.netem. raw = presigned PUTs straight to the bucket (the "
        "store's ceiling); direct = `GET /s3/params` + the PUT + `POST /s3/complete`; upload = `POST /upload`. "
        f"Targets: direct >= {TARGET_DIRECT}x raw with <= {TARGET_API_CPU_MS} ms API CPU per upload; upload >= "
        f"{TARGET_UPLOAD}x raw. {r['cpus']} cores.\n",
        "| RTT | raw /s (p99 ms) | direct /s (p99 ms) | direct / raw | API CPU ms per direct upload | upload /s (p99 ms) "
        "| upload / raw | API CPU ms per POST /upload |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rtt, row in r["rtts"].items():
        raw, d, u = row["raw"], row["direct"], row["upload"]
        lines.append(
            f"| {rtt} ms | {raw['per_s']} ({raw['p99_ms']}) | {d['per_s']} ({d['p99_ms']}) | {d['vs_raw']}x "
            f"({'met' if (d['vs_raw'] or 0) >= TARGET_DIRECT else '**short**'}) | {d['api_cpu_ms']} "
            f"({'met' if d['api_cpu_ms'] <= TARGET_API_CPU_MS else '**short**'}) | {u['per_s']} ({u['p99_ms']}) | "
            f"{u['vs_raw']}x ({'met' if (u['vs_raw'] or 0) >= TARGET_UPLOAD else '**short**'}) | {u['api_cpu_ms']} |"
        )
    res = r["rtts"]["0"].get("resume")
    if res:
        lines += [
            "",
            f"A {res['bytes'] // 2**20} MiB upload in {res['parts']} parts of {res['part_bytes'] // 2**20} MiB, cut half "
            f"way through part {res['parts_listed_after_cut'] + 1} after {res['sent_before_cut'] / 2**20:.0f} MiB sent, "
            f"then resumed from the {res['parts_listed_after_cut']} parts the store listed: "
            f"{res['sent_on_resume'] / 2**20:.0f} MiB sent again, the unfinished part and the rest "
            f"({res['unfinished_bytes'] / 2**20:.0f} MiB were not stored yet); completion answered "
            f"{res['complete_status']} in {res['complete_s']} s (the API reads the object once for its SHA-256).",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from bench.report import standalone

    argv = sys.argv[1:] if argv is None else argv
    return standalone(argv, "python -m bench.direct", __doc__, run, "direct", render)


if __name__ == "__main__":
    raise SystemExit(main())
