"""Upload: the real API (`dam api`) vs the naive producer under 16 concurrent clients, plus ceilings.

Every server runs in its own process, served by uvicorn the same way, against real RabbitMQ
(a unique queue per run, deleted afterwards) and either a local store in a temp DAM_DATA_DIR or
the S3 API of a moto server (its own process). The load generator is a third process. Ceilings:
the store alone (puts/s) and the broker alone (confirmed publishes/s on one connection), and the
API's peak RSS around one 25 MiB upload.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.fixtures import (
    CpuMonitor,
    broker_pids,
    jpeg,
    photo_like,
    pid_cpu,
    pid_peak_rss_mb,
    pid_rss_mb,
)

RABBIT_URL = os.environ.get("DAM_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
S3_REGION = "us-east-1"  # moto refuses R2's "auto"
CONCURRENCY = 16
TARGET_BYTES = 200_000
BIG_BYTES = 25 * 1024 * 1024 - 4096  # 25 MiB: just under DAM_MAX_UPLOAD_BYTES (26,214,400)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            r = httpx.get(url, timeout=10)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
        except Exception as err:
            last = f"{type(err).__name__}: {err}"
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s (last: {last})")


def clean_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not (k.startswith(("R2_", "DAM_")) or k == "AMQP_URL")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def delete_queues(names: list[str]) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    ch = conn.channel()
    for q in names:
        try:
            ch.queue_delete(q)
        except Exception:
            ch = conn.channel()
    conn.close()


def _queue_depth(name: str) -> int | None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    try:
        return conn.channel().queue_declare(name, passive=True).method.message_count
    except Exception:
        return None
    finally:
        try:
            conn.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------- fixtures


def make_images(folder: Path, n: int) -> list[int]:
    """~200 KB photo-like JPEGs (1024x768, quality tuned to the size)."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    for i in range(n):
        im = photo_like(1024, 768, seed=2000 + i)
        q_lo, q_hi, best = 30, 95, None
        while q_lo <= q_hi:
            q = (q_lo + q_hi) // 2
            data = jpeg(im, quality=q)
            if len(data) <= TARGET_BYTES:
                best, q_lo = data, q + 1
            else:
                q_hi = q - 1
        data = best or jpeg(im, quality=30)
        (folder / f"img{i:03d}.jpg").write_bytes(data)
        sizes.append(len(data))
    return sizes


def big_jpeg(target: int = BIG_BYTES) -> bytes:
    """A real JPEG of just under `target` bytes (noisy pixels at high quality)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)

    def enc(w, h):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=92)
        return buf.getvalue()

    probe = enc(1000, 750)
    per_px = len(probe) / (1000 * 750)
    w = int(((target * 0.995) / per_px * 4 / 3) ** 0.5)
    for _ in range(12):
        data = enc(w, w * 3 // 4)
        if target * 0.97 <= len(data) <= target:
            return data
        w = int(w * (target * 0.99 / len(data)) ** 0.5)  # bytes scale with pixels
    raise RuntimeError("could not make a JPEG of the size target")


RTT_MS = 10.0


class Proxy:
    """bench.netem in its own process: `target` reached through a delay of `one_way_s` each way."""

    def __init__(self, target: tuple[str, int], one_way_s: float):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.netem",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--target",
                f"{target[0]}:{target[1]}",
                "--delay-ms",
                str(1000 * one_way_s),
            ],
            env=clean_env({}),
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("netem proxy did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class MotoServer:
    """moto's ThreadedMotoServer in its own process (`python -m bench.upload moto PORT`)."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.upload", "moto", str(self.port)], env=clean_env({}), stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto server exited (code {self.proc.returncode})") from None
                time.sleep(0.2)

    def bucket(self) -> dict:
        import boto3

        name = f"bench-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket=name)
        return {
            "R2_ENDPOINT": self.endpoint,
            "R2_ACCESS_KEY_ID": "test",
            "R2_SECRET_ACCESS_KEY": "test",
            "R2_BUCKET": name,
            "R2_REGION": S3_REGION,
        }

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _moto_main(port: int) -> int:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log: it costs CPU we measure
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


# ----------------------------------------------------------------------------- one server run


def start_server(kind: str, port: int, env: dict, workers: int = 1) -> subprocess.Popen:
    bindir = Path(sys.executable).parent
    if kind == "api":
        cmd = [str(bindir / "dam"), "api", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        if workers > 1:
            cmd += ["--workers", str(workers)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "bench.naive_producer",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_server(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    return err[-2000:]


def run_server(
    kind: str,
    backend: str,
    images_dir: Path,
    tmp: Path,
    duration: float,
    warmup: float,
    moto: MotoServer | None,
    big: bytes | None,
    log=print,
    amqp_url: str = RABBIT_URL,
    s3_endpoint: str | None = None,
    extra_pids: list[int] | None = None,
    workers: int = 1,
) -> dict:
    import httpx

    queue = f"bench-{kind}-{uuid.uuid4().hex[:10]}"
    data_dir = tmp / f"data-{kind}-{backend}"
    extra = {"DAM_DATA_DIR": str(data_dir), "AMQP_URL": amqp_url, "DAM_QUEUE": queue}
    if backend == "s3":
        extra.update(moto.bucket())
        if s3_endpoint:
            extra["R2_ENDPOINT"] = s3_endpoint
    port = free_port()
    proc = start_server(kind, port, clean_env(extra), workers)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", 90, proc)
        if kind == "api":
            wait_http(base + "/readyz", 90, proc)
        rss_start = pid_rss_mb(proc.pid)
        own = [proc.pid] + ([moto.proc.pid] if backend == "s3" else []) + list(extra_pids or [])
        mon = CpuMonitor(pids=own, broker_pids=broker_pids())
        split = CpuSplit(
            {
                "server": [proc.pid],
                "store": [moto.proc.pid] if backend == "s3" else [],
                "broker": broker_pids(),
                "proxies": list(extra_pids or []),
            }
        )
        server_cpu0 = pid_cpu(proc.pid)
        lg = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--url",
                base + "/upload",
                "--images",
                str(images_dir),
                "--concurrency",
                str(CONCURRENCY),
                "--duration",
                str(duration),
                "--warmup",
                str(warmup),
            ],
            stdout=subprocess.PIPE,
            text=True,
            timeout=duration + warmup + 180,
            env=clean_env({}),
        )
        cpu = mon.stop()
        server_cpu = (pid_cpu(proc.pid) or 0.0) - (server_cpu0 or 0.0)
        if lg.returncode != 0:
            raise RuntimeError(f"load generator exited {lg.returncode}")
        load = json.loads(lg.stdout.strip().splitlines()[-1])
        # Per request over the whole load-generator run (warm-up included, so are its requests).
        cpu_ms = split.stop(load.get("requests_total") or load["requests_ok"], children_as="client")
        result = {
            "server": kind,
            "backend": backend,
            **load,
            "server_rss_start_mb": rss_start,
            "server_peak_rss_mb": pid_peak_rss_mb(proc.pid),
            "cpu": cpu,
            "server_cores": round(server_cpu / cpu["wall_s"], 2),
            "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, load["requests_ok"]), 2),
            "cpu_ms_per_request": cpu_ms,
        }
        depth = _queue_depth(queue)
        result["queued_messages"] = depth
        if big is not None:
            before = pid_peak_rss_mb(proc.pid)
            t0 = time.perf_counter()
            r = httpx.post(base + "/upload", files={"file": ("big.jpg", big, "application/octet-stream")}, timeout=300)
            dt = time.perf_counter() - t0
            after = pid_peak_rss_mb(proc.pid)
            result["big_upload"] = {
                "bytes": len(big),
                "status": r.status_code,
                "seconds": round(dt, 2),
                "peak_rss_before_mb": before,
                "peak_rss_after_mb": after,
                "delta_mb": round(after - before, 1) if before is not None and after is not None else None,
            }
        return result
    finally:
        err = stop_server(proc)
        if proc.returncode not in (0, -2, -15, None) and err:
            log(f"  server stderr: {err[-500:]}")
        delete_queues([queue, f"{queue}.dead"])
        shutil.rmtree(data_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- CPU per request


def _family(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's worker processes under `dam api --workers N`)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class CpuSplit:
    """CPU seconds spent by each named part of a run (a process and its descendants, this
    process, or its waited-for children) between start and stop, as ms per request."""

    def __init__(self, groups: dict[str, list[int]]):
        import resource

        self._resource = resource
        self.groups = {name: [q for p in pids for q in _family(p)] for name, pids in groups.items()}
        self.before = {name: self._cpu(pids) for name, pids in self.groups.items()}
        self.self0 = self._rusage(resource.RUSAGE_SELF)
        self.children0 = self._rusage(resource.RUSAGE_CHILDREN)

    def _rusage(self, who) -> float:
        r = self._resource.getrusage(who)
        return r.ru_utime + r.ru_stime

    @staticmethod
    def _cpu(pids: list[int]) -> float:
        return sum(pid_cpu(p) or 0.0 for p in pids)

    def stop(self, requests: int, self_as: str | None = None, children_as: str | None = None) -> dict:
        """ms of CPU per request for each group (plus this process and its waited-for children
        when named), and their total."""
        spent = {name: self._cpu(pids) - self.before[name] for name, pids in self.groups.items()}
        if self_as:
            spent[self_as] = self._rusage(self._resource.RUSAGE_SELF) - self.self0
        if children_as:
            spent[children_as] = self._rusage(self._resource.RUSAGE_CHILDREN) - self.children0
        n = max(1, requests)
        out = {name: round(1000 * v / n, 2) for name, v in spent.items()}
        out["total"] = round(sum(out.values()), 2)
        return out


# ----------------------------------------------------------------------------- ceilings


def store_ceiling(store, payloads: list[bytes], seconds: float, threads: int = 1) -> dict:
    """Unique-key creates of ~200 KB objects, sequential or from `threads` threads."""
    stop = time.perf_counter() + seconds
    counts = [0] * threads
    run_id = uuid.uuid4().hex[:8]

    def loop(t: int):
        i = 0
        while time.perf_counter() < stop:
            store.create(f"assets/{run_id}{t:02d}{i:022d}.jpg", payloads[i % len(payloads)], content_type="image/jpeg")
            i += 1
        counts[t] = i

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    dt = time.perf_counter() - t0
    return {"threads": threads, "puts": sum(counts), "puts_per_s": round(sum(counts) / dt, 1)}


def broker_ceiling(seconds: float) -> dict:
    """Confirmed persistent publishes on one connection: the product's RabbitQueue.publish in a loop."""
    from dam_core.queue import RabbitQueue

    name = f"bench-broker-{uuid.uuid4().hex[:10]}"
    q = RabbitQueue(RABBIT_URL, name)
    body = b'{"bench": "' + b"x" * 400 + b'"}'  # about the size of an UploadMessage
    try:
        q.publish(body)
        n, lat = 0, []
        stop = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < stop:
            t = time.perf_counter()
            q.publish(body)
            lat.append(time.perf_counter() - t)
            n += 1
        dt = time.perf_counter() - t0
        lat.sort()
        return {
            "publishes": n,
            "publishes_per_s": round(n / dt, 1),
            "latency_ms_p50": round(1000 * lat[len(lat) // 2], 2),
            "latency_ms_p99": round(1000 * lat[int(len(lat) * 0.99)], 2),
        }
    finally:
        q.close()
        delete_queues([name, f"{name}.dead"])


# ----------------------------------------------------------------------------- run


def run(quick: bool, log=print) -> dict:
    from dam_core.settings import load_settings
    from dam_core.store import LocalStore, S3Store

    duration, warmup = (4.0, 1.0) if quick else (20.0, 3.0)
    ceiling_s = 2.0 if quick else 5.0
    out: dict = {"concurrency": CONCURRENCY, "duration_s": duration, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        tmp = Path(tmp)
        sizes = make_images(tmp / "images", 8 if quick else 32)
        out["image_bytes_mean"] = int(sum(sizes) / len(sizes))
        log(
            f"upload: {len(sizes)} JPEGs of ~{out['image_bytes_mean'] // 1000} KB; {CONCURRENCY} clients, "
            f"{duration:g}s per run; RabbitMQ {RABBIT_URL.split('@')[-1]}"
        )
        big = big_jpeg()
        moto = MotoServer()
        try:
            for backend in ("local", "s3"):
                for kind in ("api", "naive"):
                    log(f"upload: {kind} on {backend} store ...")
                    r = run_server(
                        kind,
                        backend,
                        tmp / "images",
                        tmp,
                        duration,
                        warmup,
                        moto,
                        big if kind == "api" else None,
                        log=log,
                    )
                    out["runs"][f"{kind}_{backend}"] = r
                    lat = r["latency_ms"]
                    log(
                        f"  {r['requests_per_s']} req/s, p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
                        f"peak RSS {r['server_peak_rss_mb']:.0f} MiB, statuses {r['statuses']}"
                    )
                    if "big_upload" in r:
                        b = r["big_upload"]
                        log(
                            f"  25 MiB upload: {b['status']} in {b['seconds']}s, peak RSS {b['peak_rss_before_mb']:.0f} -> "
                            f"{b['peak_rss_after_mb']:.0f} MiB (delta {b['delta_mb']} MiB)"
                        )
            rtt = RTT_MS
            log(f"upload: with {rtt:g} ms round trips to RabbitMQ and to S3 (bench.netem proxies), as in production")
            proxies = [Proxy(("127.0.0.1", 5672), rtt / 2000), Proxy(("127.0.0.1", moto.port), rtt / 2000)]
            try:
                rabbit_far = RABBIT_URL.replace("127.0.0.1:5672", f"127.0.0.1:{proxies[0].port}")
                for kind in ("api", "naive"):
                    log(f"upload: {kind} on s3 store, {rtt:g} ms RTT ...")
                    r = run_server(
                        kind,
                        "s3",
                        tmp / "images",
                        tmp,
                        duration,
                        warmup,
                        moto,
                        None,
                        log=log,
                        amqp_url=rabbit_far,
                        s3_endpoint=f"http://127.0.0.1:{proxies[1].port}",
                        extra_pids=[px.proc.pid for px in proxies],
                    )
                    r["rtt_ms"] = rtt
                    out["runs"][f"{kind}_s3_rtt{rtt:g}ms"] = r
                    lat = r["latency_ms"]
                    log(
                        f"  {r['requests_per_s']} req/s, p50 {lat['p50']} ms, p99 {lat['p99']} ms, statuses {r['statuses']}"
                    )
            finally:
                for px in proxies:
                    px.stop()
            log("upload: ceilings (store alone, broker alone)")
            payloads = [f.read_bytes() for f in sorted((tmp / "images").glob("*.jpg"))]
            local = LocalStore(tmp / "ceiling-store")
            s3env = moto.bucket()
            s3 = S3Store.from_settings(load_settings(dam_data_dir=str(tmp), **{k.lower(): v for k, v in s3env.items()}))
            out["ceilings"] = {
                "store_local_1": store_ceiling(local, payloads, ceiling_s, 1),
                "store_local_16": store_ceiling(local, payloads, ceiling_s, 16),
                "store_s3_1": store_ceiling(s3, payloads, ceiling_s, 1),
                "store_s3_16": store_ceiling(s3, payloads, ceiling_s, 16),
                "broker_confirmed_1conn": broker_ceiling(ceiling_s),
            }
            shutil.rmtree(tmp / "ceiling-store", ignore_errors=True)
            for k, v in out["ceilings"].items():
                log(f"  {k}: {v}")
        finally:
            moto.stop()
    runs = out["runs"]
    for backend in ("local", "s3", f"s3_rtt{RTT_MS:g}ms"):
        api, naive = runs.get(f"api_{backend}"), runs.get(f"naive_{backend}")
        if api and naive and naive["requests_per_s"]:
            ratio = api["requests_per_s"] / naive["requests_per_s"]
            p99 = api["latency_ms"]["p99"]
            out[f"ratio_{backend}"] = round(ratio, 2)
            out[f"met_{backend}"] = bool(ratio >= 10 and p99 is not None and p99 < 100)
    out["target"] = ">= 10x naive requests/s with p99 < 100 ms"
    return out


# ----------------------------------------------------------------------------- at the store's speed


RTTS_MS = (0.0, 10.0, 20.0)
TARGETS = {"vs_ceiling": 0.8, "p99_vs_ceiling": 1.5, "vs_naive": 1.0}


def s3_put_ceiling(
    s3_env: dict,
    payloads: list[bytes],
    seconds: float,
    warmup: float,
    threads: int = CONCURRENCY,
    cpu_groups: dict[str, list[int]] | None = None,
) -> dict:
    """The store's own speed: `threads` clients doing nothing but unique-key creates (the API's
    first call per upload), through the product's S3Store, with the same latency percentiles."""
    from bench.loadgen import percentile
    from dam_core.settings import load_settings
    from dam_core.store import S3Store

    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        store = S3Store.from_settings(load_settings(dam_data_dir=tmp, **{k.lower(): v for k, v in s3_env.items()}))
    run_id = uuid.uuid4().hex[:8]
    t_measure = time.perf_counter() + warmup
    t_stop = t_measure + seconds
    lat: list[list[float]] = [[] for _ in range(threads)]
    last = [t_measure] * threads

    puts = [0] * threads

    def loop(t: int):
        i = 0
        while (t0 := time.perf_counter()) < t_stop:
            store.create(f"assets/{run_id}{t:02d}{i:022d}.jpg", payloads[i % len(payloads)], content_type="image/jpeg")
            t1 = time.perf_counter()
            if t0 >= t_measure:
                lat[t].append(t1 - t0)
                last[t] = t1
            i += 1
        puts[t] = i

    split = CpuSplit(cpu_groups or {})
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    all_lat = sorted(x for part in lat for x in part)
    elapsed = max(max(last), t_stop) - t_measure
    return {
        "requests_ok": len(all_lat),
        "requests_per_s": round(len(all_lat) / elapsed, 2),
        "latency_ms": {q: round(1000 * percentile(all_lat, v), 1) for q, v in (("p50", 0.5), ("p99", 0.99))},
        "cpu_ms_per_request": split.stop(sum(puts), self_as="client"),
    }


def _compare(api: dict, ceiling: dict, naive: dict) -> dict:
    rps, p99 = api["requests_per_s"] or 0.0, api["latency_ms"]["p99"]
    out = {
        "vs_ceiling": round(rps / ceiling["requests_per_s"], 2) if ceiling["requests_per_s"] else None,
        "p99_vs_ceiling": round(p99 / ceiling["latency_ms"]["p99"], 2)
        if p99 and ceiling["latency_ms"]["p99"]
        else None,
        "vs_naive": round(rps / naive["requests_per_s"], 2) if naive["requests_per_s"] else None,
    }
    out["met"] = bool(
        out["vs_ceiling"] is not None
        and out["vs_ceiling"] >= TARGETS["vs_ceiling"]
        and out["p99_vs_ceiling"] is not None
        and out["p99_vs_ceiling"] <= TARGETS["p99_vs_ceiling"]
        and out["vs_naive"] is not None
        and out["vs_naive"] >= TARGETS["vs_naive"]
    )
    return out


def run_rtt(quick: bool, log=print, workers: tuple[int, ...] = (1, 2), rtts_ms: tuple[float, ...] = RTTS_MS) -> dict:
    """S3 (moto) and RabbitMQ at 0, 10 and 20 ms round trips (bench.netem): per RTT the store's
    ceiling (raw creates at the same concurrency), the naive producer, and `dam api` with each
    number of workers; requests/s, p99, and the API's ratios to the ceiling and to naive."""
    duration, warmup = (4.0, 1.0) if quick else (15.0, 3.0)
    out: dict = {"concurrency": CONCURRENCY, "duration_s": duration, "targets": dict(TARGETS), "rtts": {}}
    with tempfile.TemporaryDirectory(prefix="bench-upload-rtt-") as tmp:
        tmp = Path(tmp)
        sizes = make_images(tmp / "images", 8 if quick else 32)
        payloads = [f.read_bytes() for f in sorted((tmp / "images").glob("*.jpg"))]
        out["image_bytes_mean"] = int(sum(sizes) / len(sizes))
        log(
            f"upload_rtt: {len(sizes)} JPEGs of ~{out['image_bytes_mean'] // 1000} KB (every body made unique); "
            f"{CONCURRENCY} clients, {duration:g}s per run after {warmup:g}s warm-up; S3 = moto, RabbitMQ local"
        )
        moto = MotoServer()
        try:
            for rtt in rtts_ms:
                proxies = []
                try:
                    amqp_url, s3_endpoint, extra_pids = RABBIT_URL, None, []
                    if rtt:
                        proxies = [Proxy(("127.0.0.1", 5672), rtt / 2000), Proxy(("127.0.0.1", moto.port), rtt / 2000)]
                        amqp_url = RABBIT_URL.replace("127.0.0.1:5672", f"127.0.0.1:{proxies[0].port}")
                        s3_endpoint = f"http://127.0.0.1:{proxies[1].port}"
                        extra_pids = [px.proc.pid for px in proxies]
                    row: dict = {}
                    s3env = moto.bucket()
                    if s3_endpoint:
                        s3env["R2_ENDPOINT"] = s3_endpoint
                    row["ceiling"] = s3_put_ceiling(
                        s3env, payloads, duration, warmup, cpu_groups={"store": [moto.proc.pid], "proxies": extra_pids}
                    )
                    kw = dict(log=log, amqp_url=amqp_url, s3_endpoint=s3_endpoint, extra_pids=extra_pids)
                    row["naive"] = run_server("naive", "s3", tmp / "images", tmp, duration, warmup, moto, None, **kw)
                    for n in workers:
                        api = run_server(
                            "api", "s3", tmp / "images", tmp, duration, warmup, moto, None, workers=n, **kw
                        )
                        api["vs"] = _compare(api, row["ceiling"], row["naive"])
                        row[f"api_w{n}"] = api
                    out["rtts"][f"{rtt:g}"] = row
                    for line in rtt_table({"rtts": {f"{rtt:g}": row}})[2:]:
                        log("  " + line)
                finally:
                    for px in proxies:
                        px.stop()
        finally:
            moto.stop()
    return out


def rtt_table(result: dict) -> list[str]:
    """The run_rtt result as a fixed-width table, then the CPU each request cost, per process."""
    head = (
        f"{'RTT':>6}  {'server':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  {'/ceiling':>8} {'p99/ceil':>8} "
        f"{'/naive':>7}  target"
    )
    lines = [head, "-" * len(head)]
    for rtt, row in result["rtts"].items():
        for name, r in row.items():
            lat = r["latency_ms"]
            label = {"ceiling": "store ceiling", "naive": "naive"}.get(name, f"dam api w={name[5:]}")
            vs = r.get("vs")
            cols = (
                f"{vs['vs_ceiling']:>8} {vs['p99_vs_ceiling']:>8} {vs['vs_naive']:>7}  {'met' if vs['met'] else 'SHORT'}"
                if vs
                else f"{'':>8} {'':>8} {'':>7}"
            )
            bad = {k: v for k, v in r.get("statuses", {}).items() if k != "202"}
            lines.append(
                f"{rtt + ' ms':>6}  {label:<14} {r['requests_per_s']:>8} {lat['p50']:>8} {lat['p99']:>8}  {cols}"
                + (f"  non-202: {bad}" if bad else "")
            )
    lines.append(
        "CPU ms per request, by process (all on this machine's cores; `client` is the load generator,"
        " or the ceiling's own threads):"
    )
    for rtt, row in result["rtts"].items():
        for name, r in row.items():
            cpu = r.get("cpu_ms_per_request")
            if cpu:
                label = {"ceiling": "store ceiling", "naive": "naive"}.get(name, f"dam api w={name[5:]}")
                parts = ", ".join(f"{k} {v}" for k, v in cpu.items() if k != "total" and v)
                lines.append(f"{rtt + ' ms':>6}  {label:<14} total {cpu['total']:>6}  ({parts})")
    return lines


def _rtt_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.upload rtt", description=run_rtt.__doc__)
    p.add_argument("--quick", action="store_true", help="4 s per run instead of 15 s")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts for `dam api` (default 1,2)")
    p.add_argument("--rtt-ms", default=",".join(f"{r:g}" for r in RTTS_MS), help="comma-separated round trips")
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args(argv)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    result = run_rtt(
        args.quick,
        log=log,
        workers=tuple(int(w) for w in args.workers.split(",")),
        rtts_ms=tuple(float(r) for r in args.rtt_ms.split(",")),
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(
        f"targets: dam api >= {TARGETS['vs_ceiling']}x the store ceiling's req/s, p99 <= "
        f"{TARGETS['p99_vs_ceiling']}x its p99, >= {TARGETS['vs_naive']}x naive"
    )
    for line in rtt_table(result):
        print(line)
    return 0


# ----------------------------------------------------------------------------- metrics on vs off


METRICS_TARGET = 0.05  # metrics may cost at most 5% of the upload rate


def run_metrics(quick: bool = False, log=print, rounds: int | None = None, seconds: float | None = None) -> dict:
    """`dam api` with metrics on and with DAM_METRICS=0, both started at once on the local store and
    RabbitMQ, loaded in turn (on, off, off, on, ...: drift on a shared machine hits both alike); the
    ratio of their mean upload rates, and of the server's CPU per request."""
    rounds = rounds or (2 if quick else 4)
    seconds = seconds or (4.0 if quick else 8.0)
    warmup = 1.0
    out: dict = {
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "seconds_per_round": seconds,
        "runs": {"on": [], "off": []},
    }
    with tempfile.TemporaryDirectory(prefix="bench-upload-metrics-") as tmp:
        tmp = Path(tmp)
        sizes = make_images(tmp / "images", 8)
        out["image_bytes_mean"] = int(sum(sizes) / len(sizes))
        servers, queues = {}, []
        try:
            for mode in ("on", "off"):
                queue = f"bench-metrics-{mode}-{uuid.uuid4().hex[:10]}"
                queues += [queue, f"{queue}.dead"]
                env = clean_env(
                    {
                        "DAM_DATA_DIR": str(tmp / f"data-{mode}"),
                        "AMQP_URL": RABBIT_URL,
                        "DAM_QUEUE": queue,
                        "DAM_METRICS": "1" if mode == "on" else "0",
                    }
                )
                port = free_port()
                servers[mode] = (start_server("api", port, env), f"http://127.0.0.1:{port}")
            for proc, base in servers.values():
                wait_http(base + "/readyz", 90, proc)
            log(
                f"upload_metrics: {rounds} rounds of {seconds:g}s per server, {CONCURRENCY} clients, "
                f"~{out['image_bytes_mean'] // 1000} KB JPEGs, local store + RabbitMQ"
            )
            order = [m for i in range(rounds) for m in (("on", "off") if i % 2 == 0 else ("off", "on"))]
            for mode in order:
                proc, base = servers[mode]
                cpu0 = pid_cpu(proc.pid) or 0.0
                lg = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.loadgen",
                        "--url",
                        base + "/upload",
                        "--images",
                        str(tmp / "images"),
                        "--concurrency",
                        str(CONCURRENCY),
                        "--duration",
                        str(seconds),
                        "--warmup",
                        str(warmup),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                    timeout=seconds + warmup + 120,
                    env=clean_env({}),
                )
                if lg.returncode != 0:
                    raise RuntimeError(f"load generator exited {lg.returncode}")
                load = json.loads(lg.stdout.strip().splitlines()[-1])
                cpu = (pid_cpu(proc.pid) or 0.0) - cpu0
                run = {
                    "requests_per_s": load["requests_per_s"],
                    "p99_ms": load["latency_ms"]["p99"],
                    "server_cpu_ms_per_request": round(1000 * cpu / max(1, load["requests_total"]), 2),
                    "statuses": load["statuses"],
                }
                out["runs"][mode].append(run)
                log(
                    f"  metrics {mode:>3}: {run['requests_per_s']} req/s, p99 {run['p99_ms']} ms, "
                    f"server CPU {run['server_cpu_ms_per_request']} ms/request"
                )
            if servers["on"][0].poll() is None:  # the metrics were there all along
                import httpx

                text = httpx.get(servers["on"][1] + "/metrics", timeout=10).text
                out["accepted_on_server"] = next(
                    (
                        float(line.split()[-1])
                        for line in text.splitlines()
                        if line.startswith("dam_uploads_accepted_total")
                    ),
                    None,
                )
        finally:
            for proc, _ in servers.values():
                stop_server(proc)
            delete_queues(queues)

    def mean(mode: str, key: str) -> float:
        vals = [r[key] for r in out["runs"][mode] if r[key] is not None]
        return sum(vals) / len(vals) if vals else 0.0

    on, off = mean("on", "requests_per_s"), mean("off", "requests_per_s")
    out["requests_per_s"] = {"on": round(on, 1), "off": round(off, 1)}
    out["rate_ratio"] = round(on / off, 3) if off else None
    cpu_on, cpu_off = mean("on", "server_cpu_ms_per_request"), mean("off", "server_cpu_ms_per_request")
    out["server_cpu_ms_per_request"] = {"on": round(cpu_on, 2), "off": round(cpu_off, 2)}
    out["cpu_ratio"] = round(cpu_on / cpu_off, 3) if cpu_off else None
    out["target"] = f"rate with metrics >= {1 - METRICS_TARGET:.2f}x without"
    out["met"] = bool(out["rate_ratio"] is not None and out["rate_ratio"] >= 1 - METRICS_TARGET)
    return out


def _metrics_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.upload metrics", description=run_metrics.__doc__)
    p.add_argument("--rounds", type=int, default=4, help="rounds per server (default 4)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round (default 8)")
    args = p.parse_args(argv)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    r = run_metrics(log=log, rounds=args.rounds, seconds=args.seconds)
    print(
        f"upload rate, metrics on / off: {r['requests_per_s']['on']} / {r['requests_per_s']['off']} req/s "
        f"= {r['rate_ratio']} ({'met' if r['met'] else 'SHORT'}: {r['target']}); server CPU per request "
        f"{r['server_cpu_ms_per_request']['on']} / {r['server_cpu_ms_per_request']['off']} ms = {r['cpu_ratio']}"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "metrics":
        raise SystemExit(_metrics_main(sys.argv[2:]))
    if len(sys.argv) == 3 and sys.argv[1] == "moto":
        raise SystemExit(_moto_main(int(sys.argv[2])))
    if len(sys.argv) >= 2 and sys.argv[1] == "rtt":
        raise SystemExit(_rtt_main(sys.argv[2:]))
    print(
        "usage: python -m bench.upload moto PORT  (used by bench.run)\n"
        "       python -m bench.upload rtt [--quick] [--workers 1,2] [--rtt-ms 0,10,20] [--out FILE]\n"
        "       python -m bench.upload metrics [--rounds 4] [--seconds 8]",
        file=sys.stderr,
    )
    raise SystemExit(2)
