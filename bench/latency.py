"""Upload-to-row latency on the embedded default (`dam dev`): one upload at a time, then a burst.

`python -m bench.latency [--quick] [--singles 5] [--burst 32] [--dagster-yaml PATH] [--out bench/out]`

Starts `dam dev` (API + `dagster dev`, the project's dagster.yaml) on free ports with a temporary
DAM_DATA_DIR and tiny random models (`dam models tiny`; the real BLIP/CLIP are not downloadable
here, so the step is shorter than with them: the waits around it are what this measures). The
latency of an image is from the start of its POST to the moment its row is readable in the
table (polled every 0.2 s by this client). Where the time went comes from the Dagster instance:
the run's creation (the sensor tick that requested it), its RUN_ENQUEUED, RUN_STARTING (the
queue daemon dequeued and launched it), RUN_START (run process up), first STEP_START and
RUN_SUCCESS events.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.fixtures import jpeg, machine, photo_like
from bench.loadgen import percentile
from bench.upload import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
POLL = 0.2
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def _p(vals: list[float]) -> dict:
    s = sorted(vals)
    return {
        "n": len(s),
        "p50": round(percentile(s, 0.5), 2) if s else None,
        "p99": round(percentile(s, 0.99), 2) if s else None,
        "max": round(s[-1], 2) if s else None,
    }


class Rows:
    """Which ids have a row in the table, and in which batch (reads the Parquet files directly)."""

    def __init__(self, data_dir: Path):
        self.pattern = str(data_dir / "store" / "metadata" / "assets" / "batch=*" / "part-0.parquet")

    def seen(self) -> dict[str, str]:
        import duckdb

        if not glob.glob(self.pattern):
            return {}
        con = duckdb.connect()
        try:
            return dict(con.execute(f"SELECT id, batch FROM read_parquet('{self.pattern}')").fetchall())
        finally:
            con.close()


def _wait_rows(rows: Rows, ids: dict[str, float], timeout: float) -> dict[str, tuple[float, str]]:
    """Poll until every id has a row: id -> (seconds since its upload started, batch)."""
    done: dict[str, tuple[float, str]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - len(done)} of {len(ids)} upload(s) had no row after {timeout:.0f}s")
        now = time.time()
        for i, b in rows.seen().items():
            if i in ids and i not in done:
                done[i] = (now - ids[i], b)
        time.sleep(POLL)
    return done


def _upload(client, url: str, data: bytes, name: str) -> tuple[str, float]:
    t0 = time.time()
    r = client.post(f"{url}/upload", files={"file": (name, data, "image/jpeg")})
    if r.status_code != 202:
        raise RuntimeError(f"upload answered {r.status_code}: {r.text[:200]}")
    return r.json()["id"], t0


def _instance(dagster_home: Path):
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import DagsterInstance

    return DagsterInstance.get()


def _wait_idle(instance, settle: float, timeout: float = 180) -> None:
    """Until no run has been in progress for `settle` seconds (the search-index run after a batch too)."""
    from dagster import DagsterRunStatus, RunsFilter

    statuses = [DagsterRunStatus[s] for s in IN_PROGRESS]
    quiet_since = time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() - quiet_since < settle:
        if time.monotonic() > deadline:
            raise TimeoutError("runs still in progress")
        if instance.get_runs(RunsFilter(statuses=statuses), limit=1):
            quiet_since = time.monotonic()
        time.sleep(0.5)


def _breakdown(instance, batch: str, t_upload: float) -> dict:
    """Seconds from the upload's start to each point of the batch's run (its first run)."""
    from dagster import DagsterEventType, RunsFilter

    records = instance.get_run_records(RunsFilter(tags={"dam/batch": batch}), order_by="create_timestamp", ascending=True)
    if not records:
        return {}
    rec = records[0]
    first: dict[str, float] = {}
    for e in instance.all_logs(rec.dagster_run.run_id):
        if e.dagster_event is None:
            continue
        k = e.dagster_event.event_type
        name = {
            DagsterEventType.RUN_ENQUEUED: "enqueued",
            DagsterEventType.RUN_STARTING: "starting",
            DagsterEventType.RUN_START: "run_start",
            DagsterEventType.STEP_START: "first_step",
            DagsterEventType.RUN_SUCCESS: "run_success",
        }.get(k)
        if name and name not in first:
            first[name] = e.timestamp
    pts = {"run_created": rec.create_timestamp.timestamp(), **first}
    return {k: round(v - t_upload, 2) for k, v in pts.items()}


def _segments(b: dict, latency: float) -> dict:
    """Per-segment seconds: sensor wait, dequeue wait, run start, steps (until the row is readable)."""
    def d(a, z):
        return round(b[z] - b[a], 2) if a in b and z in b else None

    return {
        "sensor_wait": b.get("enqueued"),
        # No RUN_DEQUEUED event is written: RUN_STARTING is the coordinator launching the run.
        "dequeue_wait": d("enqueued", "starting"),
        "run_start": d("starting", "first_step"),
        "steps": round(latency - b["first_step"], 2) if "first_step" in b else None,
    }


def _sensor_ticks(instance, name: str = "upload_queue_sensor") -> dict:
    """Spacing of the sensor's ticks and the duration of an empty one, from the instance's tick records."""
    from dagster._core.scheduler.instigation import InstigatorType, TickStatus

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name != name:
            continue
        ticks = sorted(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=400), key=lambda t: t.timestamp)
        gaps = [b.timestamp - a.timestamp for a, b in zip(ticks, ticks[1:])]
        empty = [
            t.tick_data.end_timestamp - t.timestamp
            for t in ticks
            if t.status == TickStatus.SKIPPED and t.tick_data.end_timestamp
        ]
        return {
            "ticks": len(ticks),
            "interval_median_s": round(statistics.median(gaps), 2) if gaps else None,
            "interval_max_s": round(max(gaps), 2) if gaps else None,
            "empty_tick_median_s": round(statistics.median(empty), 3) if empty else None,
        }
    return {}


def _median_segments(rows: list[dict]) -> dict:
    keys = ("sensor_wait", "dequeue_wait", "run_start", "steps")
    return {k: round(statistics.median([r[k] for r in rows if r.get(k) is not None]), 2)
            if any(r.get(k) is not None for r in rows) else None for k in keys}


def run(quick: bool, log=print, singles: int | None = None, burst: int | None = None, dagster_yaml: str | None = None) -> dict:
    import httpx

    singles = singles or (4 if quick else 10)
    burst = burst or 32
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="dam-latency-", ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        data_dir, models = tmp / "data", tmp / "models"
        subprocess.run([str(bin_dir / "dam"), "models", "tiny", str(models)], check=True, capture_output=True)
        env = dict(os.environ, DAM_DATA_DIR=str(data_dir), DAGSTER_HOME=str(data_dir / "dagster"),
                   DAM_CAPTION_MODEL=str(models / "blip"), DAM_EMBEDDING_MODEL=str(models / "clip"),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env.pop("AMQP_URL", None)
        env.pop("R2_BUCKET", None)
        if dagster_yaml:  # a hand-placed copy: `dam dev` keeps it (to measure another instance config)
            (data_dir / "dagster").mkdir(parents=True)
            (data_dir / "dagster" / "dagster.yaml").write_bytes(Path(dagster_yaml).read_bytes())
        port, dport = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        logf = open(tmp / "dev.log", "wb")
        dev = subprocess.Popen([str(bin_dir / "dam"), "dev", "--port", str(port), "--dagster-port", str(dport)],
                               env=env, cwd=str(REPO), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        result: dict = {"machine": machine(), "singles": singles, "burst": burst,
                        "models": "tiny random (dam models tiny): real BLIP/CLIP are not downloadable here",
                        "dagster_yaml": dagster_yaml or "project dagster.yaml"}
        try:
            rows = Rows(data_dir)
            with httpx.Client(timeout=60) as client:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if client.get(f"{url}/healthz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if dev.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("dam dev did not come up:\n" + (tmp / "dev.log").read_text()[-3000:])
                    time.sleep(0.5)
                # Warm-up: the daemon, code server and sensor come up on the first upload's way.
                i, t0 = _upload(client, url, jpeg(photo_like(640, 480, 10_000)), "warmup.jpg")
                warm = _wait_rows(rows, {i: t0}, 300)
                result["warmup_s"] = round(warm[i][0], 2)
                log(f"latency: warm-up upload took {result['warmup_s']}s to its row")
                instance = _instance(data_dir / "dagster")

                single, single_rows = [], []
                for n in range(singles):
                    _wait_idle(instance, settle=7)
                    # The idle wait ends in step with the daemon's loops (the previous search-index
                    # run ends on their beat): a random pause spreads the upload over a 10 s cycle.
                    time.sleep(random.Random(n).uniform(0, 10))
                    i, t0 = _upload(client, url, jpeg(photo_like(640, 480, n)), f"single-{n}.jpg")
                    got = _wait_rows(rows, {i: t0}, 300)
                    lat, batch = got[i]
                    single.append(lat)
                    b = _breakdown(instance, batch, t0)
                    single_rows.append({"latency": round(lat, 2), **_segments(b, lat), "points": b})
                    log(f"latency: single {n + 1}/{singles}: {lat:.1f}s {_segments(b, lat)}")
                result["single"] = {**_p(single), "median_segments": _median_segments(single_rows), "samples": single_rows}

                _wait_idle(instance, settle=7)
                images = [jpeg(photo_like(640, 480, 20_000 + n)) for n in range(burst)]
                ids: dict[str, float] = {}
                lock = threading.Lock()

                def one(n):
                    with httpx.Client(timeout=60) as c:
                        i, t0 = _upload(c, url, images[n], f"burst-{n}.jpg")
                    with lock:
                        ids[i] = t0

                threads = [threading.Thread(target=one, args=(n,)) for n in range(burst)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                got = _wait_rows(rows, ids, 600)
                lats = [v[0] for v in got.values()]
                batches = sorted({v[1] for v in got.values()})
                seg = []
                for b in batches:  # from the batch's first upload to its last row
                    mine = [i for i, v in got.items() if v[1] == b]
                    t_first = min(ids[i] for i in mine)
                    seg.append(_segments(_breakdown(instance, b, t_first),
                                         max(ids[i] + got[i][0] for i in mine) - t_first))
                result["burst_result"] = {**_p(lats), "batches": len(batches), "per_batch_segments": seg}
                log(f"latency: burst of {burst}: p50 {result['burst_result']['p50']}s p99 {result['burst_result']['p99']}s "
                    f"in {len(batches)} batch(es)")
                result["sensor"] = _sensor_ticks(instance)
                log(f"latency: sensor ticks {result['sensor']}")
        finally:
            if dev.poll() is None:
                os.killpg(dev.pid, signal.SIGTERM)  # dam dev stops the API and dagster dev it started
                try:
                    dev.wait(timeout=45)
                except subprocess.TimeoutExpired:
                    os.killpg(dev.pid, signal.SIGKILL)
                    dev.wait()
            logf.close()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--singles", type=int)
    p.add_argument("--burst", type=int)
    p.add_argument("--dagster-yaml", help="instance config to use instead of the project's dagster.yaml")
    p.add_argument("--out", default=str(HERE / "out"))
    args = p.parse_args(argv)
    r = run(args.quick, log=lambda m: print(m, file=sys.stderr, flush=True), singles=args.singles,
            burst=args.burst, dagster_yaml=args.dagster_yaml)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(r, indent=1, default=str))
    print(json.dumps({k: r[k] for k in ("warmup_s", "sensor") if k in r}
                     | {"single": {k: r["single"][k] for k in ("n", "p50", "p99", "max", "median_segments")},
                        "burst": r["burst_result"]}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
