"""Upload-to-row latency, one upload at a time and a burst: on the embedded default and on workers.

`python -m bench.latency [--quick] [--workers | --both] [--singles 5] [--burst 32] [--dagster-yaml PATH] [--out bench/out]`

Embedded default (no flag): starts `dam dev` (API + `dagster dev`, the project's dagster.yaml) on
free ports with a temporary DAM_DATA_DIR.

`--workers`: the production shape on this machine: a fresh PostgreSQL database for the instance
(dagster.prod.yaml: PostgreSQL storage, DamCeleryRunLauncher, QueuedRunCoordinator), the uploads
queue and the Celery run queues on the machine's RabbitMQ under a unique prefix, `dagster-daemon
run`, `dam api` and two `dam worker --preload` (OMP_NUM_THREADS=1 each). The object store is a local
folder (every process is on this machine); the production S3 store is not part of this measurement.
Everything started is stopped (whole process groups) and the database and queues are dropped.
`--both` runs the embedded default, then the workers, and prints workers/embedded ratios.

Both use tiny random models (`dam models tiny`; the real BLIP/CLIP are not downloadable here, so
the step is shorter than with them: the waits around it are what this measures). The latency of
an image is from the start of its POST to the moment its row is readable in the table (`SELECT id,
batch FROM assets` through AssetTable.connect, polled every 0.2 s by this client). Where the
time went comes from the Dagster instance: the sensor tick that requested the run (its start), the
run's RUN_ENQUEUED, RUN_STARTING (the queue daemon dequeued and launched it), on workers the
launcher's "Run sent to Celery queue" event, RUN_START (run process / worker executing), first
STEP_START and RUN_SUCCESS events.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.fixtures import jpeg, machine, other_load, photo_like
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
    """Which ids have a row in the table, and in which batch (through AssetTable.connect)."""

    def __init__(self, settings):
        from dam_core.table import make_table

        self.table = make_table(settings)

    def seen(self) -> dict[str, str]:
        con = self.table.connect()
        try:
            return dict(con.sql("SELECT id, batch FROM assets").fetchall())
        finally:
            con.close()


def _settings_for(env: dict):
    """The Settings the started processes read from `env` (built with exactly that environment)."""
    from dam_core.settings import load_settings

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _wait_rows(rows: Rows, ids: dict[str, float], timeout: float, check=None) -> dict[str, tuple[float, str]]:
    """Poll until every id has a row: id -> (seconds since its upload started, batch).

    `check()` raises when a process the measurement depends on has died (so a crash is reported
    as such, not as a timeout)."""
    done: dict[str, tuple[float, str]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids):
        if check is not None:
            check()
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


def _wait_healthy(client, url: str, timeout: float, check) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API at {url} did not answer /healthz within {timeout:.0f}s")
        time.sleep(0.5)


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


def _ticks(instance, name: str = "upload_queue_sensor") -> list:
    """The sensor's tick records, oldest first."""
    from dagster._core.scheduler.instigation import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == name:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=400)
            return sorted(ticks, key=lambda t: t.timestamp)
    return []


def _batch_run(instance, batch: str):
    """The first run record of a batch (a retry is a later run with the same tag)."""
    from dagster import RunsFilter

    records = instance.get_run_records(
        RunsFilter(tags={"dam/batch": batch}), order_by="create_timestamp", ascending=True
    )
    return records[0] if records else None


def _wait_finished(instance, batch: str, timeout: float, check) -> None:
    """Until the batch's first run has finished (its RUN_SUCCESS comes after the row is readable)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = _batch_run(instance, batch)
        if rec is not None and rec.dagster_run.is_finished:
            return
        check()
        time.sleep(0.2)


def _breakdown(instance, batch: str, t_upload: float) -> dict:
    """Seconds from the upload's start to each point of the batch's run (its first run)."""
    from dagster import DagsterEventType

    rec = _batch_run(instance, batch)
    if rec is None:
        return {}
    run_id = rec.dagster_run.run_id
    first: dict[str, float] = {}
    names = {
        DagsterEventType.RUN_ENQUEUED: "enqueued",
        DagsterEventType.RUN_STARTING: "starting",
        DagsterEventType.RUN_START: "run_start",
        DagsterEventType.STEP_START: "first_step",
        DagsterEventType.RUN_SUCCESS: "run_success",
    }
    for e in instance.all_logs(run_id):
        if e.dagster_event is None:
            continue
        k = e.dagster_event.event_type
        name = names.get(k)
        if k == DagsterEventType.ENGINE_EVENT and "Run sent to Celery queue" in (e.dagster_event.message or ""):
            name = "sent"  # DamCeleryRunLauncher: the task is in RabbitMQ (publisher-confirmed)
        if name and name not in first:
            first[name] = e.timestamp
    pts: dict[str, float] = {}
    tick = next((t for t in _ticks(instance) if run_id in (t.run_ids or ())), None)
    if tick is not None:
        pts["tick_start"] = tick.timestamp
        if tick.end_timestamp:
            pts["tick_end"] = tick.end_timestamp
    pts.update({"run_created": rec.create_timestamp.timestamp(), **first})
    return {k: round(v - t_upload, 2) for k, v in pts.items()}


SEGMENTS = (
    "tick_wait",
    "tick_eval",
    "submit",
    "sensor_wait",
    "dequeue_wait",
    "launch",
    "publish",
    "run_init",
    "run_start",
    "steps",
    "success_after_row",
)


def _segments(b: dict, latency: float) -> dict:
    """Per-segment seconds of one upload (or one batch, from its first upload), from _breakdown's points.

    tick_wait: upload -> start of the sensor tick that requested the run (slightly negative when a
    tick that had already started drained the message); tick_eval: that tick's start -> the run's
    creation (the sensor's evaluation in the code server: drain, manifest, partitions); submit: the
    run's creation -> RUN_ENQUEUED (the daemon submitting it to the queue); sensor_wait = the three;
    dequeue_wait: RUN_ENQUEUED -> RUN_STARTING (the coordinator's dequeue); launch: RUN_STARTING ->
    RUN_START (embedded: spawning and importing the run process; workers: the Celery task to a
    worker and its start), of which publish: RUN_STARTING -> the task confirmed in RabbitMQ
    (workers only); run_init: RUN_START -> first STEP_START; run_start = launch + run_init;
    steps: first STEP_START -> the row readable; success_after_row: the row readable -> RUN_SUCCESS.
    """

    def d(a, z):
        return round(b[z] - b[a], 2) if a in b and z in b else None

    return {
        "tick_wait": b.get("tick_start"),
        "tick_eval": d("tick_start", "run_created"),
        "submit": d("run_created", "enqueued"),
        "sensor_wait": b.get("enqueued"),
        # No RUN_DEQUEUED event is written: RUN_STARTING is the coordinator launching the run.
        "dequeue_wait": d("enqueued", "starting"),
        "launch": d("starting", "run_start"),
        "publish": d("starting", "sent"),
        "run_init": d("run_start", "first_step"),
        "run_start": d("starting", "first_step"),
        "steps": round(latency - b["first_step"], 2) if "first_step" in b else None,
        "success_after_row": round(b["run_success"] - latency, 2) if "run_success" in b else None,
    }


def _sensor_ticks(instance, name: str = "upload_queue_sensor") -> dict:
    """Spacing of the sensor's ticks and the duration of an empty one, from the instance's tick records."""
    from dagster._core.scheduler.instigation import TickStatus

    ticks = _ticks(instance, name)
    if not ticks:
        return {}
    gaps = [b.timestamp - a.timestamp for a, b in itertools.pairwise(ticks)]
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


def _median_segments(rows: list[dict]) -> dict:
    return {
        k: round(statistics.median([r[k] for r in rows if r.get(k) is not None]), 2)
        if any(r.get(k) is not None for r in rows)
        else None
        for k in SEGMENTS
    }


def _measure(
    url: str, rows: Rows, instance_fn, singles: int, burst: int, log, check, result: dict, warm_until=None
) -> None:
    """Warm-up, single uploads one at a time, then one burst; fills `result`. Shared by both modes.

    `instance_fn()` gives the Dagster instance (the embedded one exists only after the first run);
    `warm_until(instance)` is true when warm-up may stop (workers: each has run a batch)."""
    import httpx

    with httpx.Client(timeout=60) as client:
        _wait_healthy(client, url, 120, check)
        # Warm-up: the daemon, code server and sensor come up on the first upload's way (and on
        # workers, each worker's first run imports the code location).
        instance = None
        result["warmup_s"] = []
        for w in range(4):
            if instance is not None:
                _wait_idle(instance, settle=3)
            i, t0 = _upload(client, url, jpeg(photo_like(640, 480, 10_000 + w)), f"warmup-{w}.jpg")
            warm = _wait_rows(rows, {i: t0}, 300, check)
            result["warmup_s"].append(round(warm[i][0], 2))
            log(f"latency: warm-up upload {w + 1} took {result['warmup_s'][-1]}s to its row")
            if instance is None:
                instance = instance_fn()
            if warm_until is None or warm_until(instance):
                break

        single, single_rows = [], []
        for n in range(singles):
            _wait_idle(instance, settle=7)
            # The idle wait ends in step with the daemon's loops (the previous search-index
            # run ends on their beat): a random pause spreads the upload over a 10 s cycle.
            time.sleep(random.Random(n).uniform(0, 10))
            i, t0 = _upload(client, url, jpeg(photo_like(640, 480, n)), f"single-{n}.jpg")
            got = _wait_rows(rows, {i: t0}, 300, check)
            lat, batch = got[i]
            single.append(lat)
            _wait_finished(instance, batch, 120, check)
            b = _breakdown(instance, batch, t0)
            row = {"latency": round(lat, 2), **_segments(b, lat), "points": b}
            rec = _batch_run(instance, batch)
            if rec is not None and WORKER_TAG in rec.dagster_run.tags:
                row["worker"] = rec.dagster_run.tags[WORKER_TAG].split("-")[0]
            single_rows.append(row)
            seg = {k: v for k, v in row.items() if k in SEGMENTS and k not in ("sensor_wait", "run_start")}
            log(
                f"latency: single {n + 1}/{singles}: {lat:.1f}s {seg}"
                + (f" on {row['worker']}" if "worker" in row else "")
            )
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
        if len(ids) < burst:
            raise RuntimeError(f"only {len(ids)} of {burst} burst uploads were accepted")
        got = _wait_rows(rows, ids, 600, check)
        lats = [v[0] for v in got.values()]
        batches = sorted({v[1] for v in got.values()})
        seg = []
        for b in batches:  # from the batch's first upload to its last row
            _wait_finished(instance, b, 120, check)
            mine = [i for i, v in got.items() if v[1] == b]
            t_first = min(ids[i] for i in mine)
            seg.append(_segments(_breakdown(instance, b, t_first), max(ids[i] + got[i][0] for i in mine) - t_first))
        result["burst_result"] = {**_p(lats), "batches": len(batches), "per_batch_segments": seg}
        log(
            f"latency: burst of {burst}: p50 {result['burst_result']['p50']}s p99 {result['burst_result']['p99']}s "
            f"in {len(batches)} batch(es)"
        )
        result["sensor"] = _sensor_ticks(instance)
        log(f"latency: sensor ticks {result['sensor']}")


WORKER_TAG = "dam/celery_worker"  # dam_assets.celery_launcher.WORKER_TAG, without importing Celery here


def _counts(singles: int | None, burst: int | None, quick: bool) -> tuple[int, int]:
    return singles or (4 if quick else 10), burst or 32


def run(
    quick: bool,
    log=print,
    singles: int | None = None,
    burst: int | None = None,
    dagster_yaml: str | None = None,
    model_server: bool = True,
) -> dict:
    """The embedded default: `dam dev` (API + `dagster dev`, SQLite instance, a run process per run).

    `model_server` False: DAM_MODEL_SERVER=off, every run loads its own models (the design before the
    model server; `--compare-model-server` measures both in one run)."""
    singles, burst = _counts(singles, burst, quick)
    bin_dir = Path(sys.executable).parent
    saved_env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="dam-latency-", ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        data_dir, models = tmp / "data", tmp / "models"
        subprocess.run([str(bin_dir / "dam"), "models", "tiny", str(models)], check=True, capture_output=True)
        env = dict(
            os.environ,
            DAM_DATA_DIR=str(data_dir),
            DAGSTER_HOME=str(data_dir / "dagster"),
            DAM_CAPTION_MODEL=str(models / "blip"),
            DAM_EMBEDDING_MODEL=str(models / "clip"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        for var in [k for k in env if k.startswith("R2_")]:
            env.pop(var)
        env.pop("AMQP_URL", None)
        env["DAM_MODEL_SERVER"] = "" if model_server else "off"
        if dagster_yaml:  # a hand-placed copy: `dam dev` keeps it (to measure another instance config)
            (data_dir / "dagster").mkdir(parents=True)
            (data_dir / "dagster" / "dagster.yaml").write_bytes(Path(dagster_yaml).read_bytes())
        busy = other_load(2.0)  # cores other processes use before ours start: the machine is shared
        port, dport = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        dev_log = tmp / "dev.log"
        logf = open(dev_log, "wb")
        dev = subprocess.Popen(
            [str(bin_dir / "dam"), "dev", "--port", str(port), "--dagster-port", str(dport)],
            env=env,
            cwd=str(REPO),
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        result: dict = {
            "mode": "embedded",
            "machine": machine(),
            "background_load_cores_at_start": busy,
            "singles": singles,
            "burst": burst,
            "models": "tiny random (dam models tiny): real BLIP/CLIP are not downloadable here",
            "dagster_yaml": dagster_yaml or "project dagster.yaml",
            "model_server": model_server,
        }
        instance = None

        def check():
            if dev.poll() is not None:
                raise RuntimeError(
                    f"dam dev exited ({dev.returncode}):\n" + dev_log.read_text(errors="replace")[-3000:]
                )

        def get_instance():
            nonlocal instance
            instance = _instance(data_dir / "dagster")
            return instance

        try:
            _measure(url, Rows(_settings_for(env)), get_instance, singles, burst, log, check, result)
        finally:
            if dev.poll() is None:
                os.killpg(dev.pid, signal.SIGTERM)  # dam dev stops the API and dagster dev it started
                try:
                    dev.wait(timeout=45)
                except subprocess.TimeoutExpired:
                    os.killpg(dev.pid, signal.SIGKILL)
                    dev.wait()
            logf.close()
            if instance is not None:
                instance.dispose()
            os.environ.clear()
            os.environ.update(saved_env)
    return result


def run_workers(quick: bool, log=print, singles: int | None = None, burst: int | None = None, workers: int = 2) -> dict:
    """The production shape on this machine: PostgreSQL instance, Celery run launcher, `dam worker`s."""
    import psycopg2
    import yaml

    from bench.scaleout import AMQP, PG, _drop, _kill, _spawn, _tail, _wait_workers

    singles, burst = _counts(singles, burst, quick)
    bin_dir = Path(sys.executable).parent
    tmp = Path(tempfile.mkdtemp(prefix="dam-latency-workers-"))
    db = f"dam_bench_{uuid.uuid4().hex[:8]}"
    prefix = f"l{uuid.uuid4().hex[:8]}-"
    saved_env = dict(os.environ)
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: tmp / f"{name}.log" for name in ("daemon", "api", *(f"w{k + 1}" for k in range(workers)))}
    instance = None
    con = psycopg2.connect(PG + "/postgres")
    con.autocommit = True
    con.cursor().execute(f'CREATE DATABASE "{db}"')
    try:
        models, data_dir, home = tmp / "models", tmp / "data", tmp / "dagster_home"
        subprocess.run([str(bin_dir / "dam"), "models", "tiny", str(models)], check=True, capture_output=True)
        home.mkdir()
        prod = yaml.safe_load((REPO / "dagster.prod.yaml").read_text())
        prod["run_launcher"]["config"]["queue_prefix"] = prefix
        (home / "dagster.yaml").write_text(yaml.safe_dump(prod))
        # This process (the instance it reads) and every started process share this environment.
        for var in [k for k in os.environ if k.startswith(("R2_", "DAM_")) or k in ("AMQP_URL", "DAGSTER_HOME")]:
            os.environ.pop(var)
        os.environ.update(
            {
                "DAM_DATA_DIR": str(data_dir),
                "DAM_CAPTION_MODEL": str(models / "blip"),
                "DAM_EMBEDDING_MODEL": str(models / "clip"),
                "DAM_DEVICE": "cpu",
                "AMQP_URL": AMQP,
                "DAM_QUEUE": f"{prefix}uploads",
                "DAGSTER_HOME": str(home),
                "DAGSTER_PG_URL": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        env = dict(os.environ)
        settings = _settings_for(env)

        from dagster import DagsterInstance

        instance = DagsterInstance.get()  # creates the schema once, before the daemon and workers race to
        assert type(instance.run_launcher).__name__ == "DamCeleryRunLauncher", type(instance.run_launcher)

        def check():
            for name, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited ({p.returncode})\n"
                        + "\n".join(f"--- {n}\n{_tail(path)}" for n, path in logs.items())
                    )

        busy = other_load(2.0)  # cores other processes use before ours start: the machine is shared
        worker_env = dict(env, OMP_NUM_THREADS="1")
        for k in range(workers):
            name = f"w{k + 1}"
            procs[name] = _spawn([str(bin_dir / "dam"), "worker", "--name", name, "--preload"], worker_env, logs[name])
        _wait_workers(env, workers, list(procs.values()), list(logs.values()))
        log(f"latency: {workers} worker(s) answer")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs["daemon"] = _spawn(
            [str(bin_dir / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")], env, logs["daemon"]
        )
        procs["api"] = _spawn([str(bin_dir / "dam"), "api", "--port", str(port)], env, logs["api"])

        def every_worker_ran(inst) -> bool:
            from dagster import RunsFilter

            used = {
                r.tags[WORKER_TAG].split("-")[0]
                for r in inst.get_runs(RunsFilter(job_name="enrich_batch"))
                if WORKER_TAG in r.tags
            }
            return len(used) >= workers

        result: dict = {
            "mode": "workers",
            "machine": machine(),
            "background_load_cores_at_start": busy,
            "singles": singles,
            "burst": burst,
            "workers": workers,
            "models": "tiny random (dam models tiny): real BLIP/CLIP are not downloadable here",
            "instance": "dagster.prod.yaml (PostgreSQL, DamCeleryRunLauncher, QueuedRunCoordinator)",
            "store": "local folder",
            "queue": "RabbitMQ",
            "database": db,
            "queue_prefix": prefix,
            "worker_flags": "dam worker --preload, --concurrency 1, OMP_NUM_THREADS=1",
        }
        _measure(url, Rows(settings), lambda: instance, singles, burst, log, check, result, warm_until=every_worker_ran)
        return result
    finally:
        for name in ("api", "daemon", *(n for n in procs if n.startswith("w"))):
            if name in procs:
                _kill(procs[name])
        if instance is not None:
            instance.dispose()
        os.environ.clear()
        os.environ.update(saved_env)
        try:
            _drop(con, db, prefix)
            _drop_upload_queues(AMQP, prefix)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _drop_upload_queues(amqp: str, prefix: str) -> None:
    """The uploads queue's dead-letter queue (scaleout._drop removes the rest)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(amqp))
    try:
        conn.channel().queue_delete(f"{prefix}uploads.dead")
    finally:
        conn.close()


def ratios(embedded: dict, workers: dict) -> dict:
    """workers / embedded for the single and burst percentiles (below 1: the workers are faster)."""

    def r(a, z):
        return round(z / a, 2) if a and z is not None else None

    s, w = embedded["single"], workers["single"]
    bs, bw = embedded["burst_result"], workers["burst_result"]
    return {
        "single_p50": r(s["p50"], w["p50"]),
        "single_p99": r(s["p99"], w["p99"]),
        "burst_p50": r(bs["p50"], bw["p50"]),
        "burst_p99": r(bs["p99"], bw["p99"]),
    }


def _fmt_segments(m: dict) -> str:
    def f(k):
        return "-" if m.get(k) is None else f"{m[k]:.2f}"

    return (
        f"tick wait {f('tick_wait')} -> tick eval {f('tick_eval')} -> submit {f('submit')} -> "
        f"dequeue wait {f('dequeue_wait')} -> launch {f('launch')}"
        + (f" (publish {f('publish')})" if m.get("publish") is not None else "")
        + f" -> run init {f('run_init')} -> steps to row {f('steps')} s (RUN_SUCCESS {f('success_after_row')} s after the row)"
    )


def lines(r: dict) -> list[str]:
    """The numbers as printed: one result (embedded or workers), or {"embedded", "workers", "ratios"} from --both."""
    if "embedded" in r and "workers" in r:
        out = lines(r["embedded"]) + lines(r["workers"])
        q = r["ratios"]
        out.append(
            f"latency ratio workers/embedded: single p50 {q['single_p50']}x, p99 {q['single_p99']}x; "
            f"burst p50 {q['burst_p50']}x, p99 {q['burst_p99']}x (below 1: workers faster)"
        )
        return out
    if r.get("mode") == "workers":
        name = "workers"
        what = (
            f"{r['workers']} x `dam worker --preload` (OMP_NUM_THREADS=1), dagster-daemon, dam api; "
            f"dagster.prod.yaml on PostgreSQL, RabbitMQ, local store"
        )
    else:
        name = "embedded"
        what = f"dam dev ({r.get('dagster_yaml', 'project dagster.yaml')})"
    s, b = r["single"], r["burst_result"]
    out = [
        f"latency {name}: {what}; models {r['models'].split(':')[0]}; warm-up upload(s) {r['warmup_s']} s; "
        f"other processes busy {r.get('background_load_cores_at_start')} cores at start",
        f"latency {name}: single upload (n={s['n']}) p50 {s['p50']} s, p99 {s['p99']} s, max {s['max']} s",
        f"latency {name}: single medians: {_fmt_segments(s['median_segments'])}",
        f"latency {name}: burst of {r['burst']} p50 {b['p50']} s, p99 {b['p99']} s, max {b['max']} s in {b['batches']} batch(es)",
    ]
    for k, seg in enumerate(b.get("per_batch_segments", [])):
        out.append(f"latency {name}: burst batch {k + 1} (from its first upload): {_fmt_segments(seg)}")
    t = r.get("sensor") or {}
    if t:
        out.append(
            f"latency {name}: sensor ticks {t.get('interval_median_s')} s apart (median, max {t.get('interval_max_s')}), "
            f"empty tick {t.get('empty_tick_median_s')} s"
        )
    workers = [x["worker"] for x in s.get("samples", []) if "worker" in x]
    if workers:
        out.append(
            f"latency {name}: single uploads ran on "
            + ", ".join(f"{w} x{workers.count(w)}" for w in sorted(set(workers)))
        )
    return out


def render_model_server(both: dict, quick: bool) -> str:
    own, served = both["own_models_per_run"], both["model_server"]
    return (
        "\n".join(
            [
                f"## Warm models under `dam dev` (issue 23): `python -m bench.latency --compare-model-server"
                f"{' --quick' if quick else ''}`, {time.strftime('%Y-%m-%d')}\n",
                "Tiny random models; upload to row on `dam dev`, first with every run loading its own models "
                "(`DAM_MODEL_SERVER=off`), then with the model server; one run.\n",
                f"| | single upload p50 s | its run's steps, median s | burst of {own['burst']} p50 s |",
                "|---|---|---|---|",
                f"| every run loads its own models | {own['single']['p50']} | {own['single']['median_segments'].get('steps')} | "
                f"{own['burst_result']['p50']} |",
                f"| model server | {served['single']['p50']} | {served['single']['median_segments'].get('steps')} | "
                f"{served['burst_result']['p50']} |",
                "",
                f"Ratio own/served: single {both['single_p50_ratio_own_over_served']}x, burst {both['burst_p50_ratio_own_over_served']}x.",
            ]
        )
        + "\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 single uploads (default 10) and the burst")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--workers", action="store_true", help="the production shape: daemon, dam api, two dam workers")
    mode.add_argument("--both", action="store_true", help="the embedded default, then the workers; prints ratios")
    p.add_argument("--singles", type=int)
    p.add_argument("--burst", type=int)
    p.add_argument("--dagster-yaml", help="embedded only: instance config to use instead of the project's dagster.yaml")
    mode.add_argument(
        "--compare-model-server",
        action="store_true",
        help="the embedded default with DAM_MODEL_SERVER=off, then with the model server: p50 ratios",
    )
    p.add_argument("--out", default=str(HERE / "out"))
    args = p.parse_args(argv)
    if args.workers and args.dagster_yaml:
        p.error("--dagster-yaml applies to the embedded default only (the workers use dagster.prod.yaml)")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shown: dict = {}
    if args.compare_model_server:
        off = run(args.quick, log=log, singles=args.singles, burst=args.burst, model_server=False)
        on = run(args.quick, log=log, singles=args.singles, burst=args.burst, model_server=True)
        both = {
            "own_models_per_run": off,
            "model_server": on,
            "single_p50_s": {"own": off["single"]["p50"], "served": on["single"]["p50"]},
            "burst_p50_s": {"own": off["burst_result"]["p50"], "served": on["burst_result"]["p50"]},
        }
        both["single_p50_ratio_own_over_served"] = round(off["single"]["p50"] / on["single"]["p50"], 2)
        both["burst_p50_ratio_own_over_served"] = round(off["burst_result"]["p50"] / on["burst_result"]["p50"], 2)
        (out / "latency-model-server.json").write_text(json.dumps(both, indent=1, default=str))
        from bench.report import write_section

        write_section(
            "latency.model-server",
            render_model_server(both, args.quick),
            command="python -m bench.latency --compare-model-server" + (" --quick" if args.quick else ""),
        )
        print(json.dumps({k: v for k, v in both.items() if k not in ("own_models_per_run", "model_server")}, indent=1))
        return 0
    if not args.workers:
        r = run(args.quick, log=log, singles=args.singles, burst=args.burst, dagster_yaml=args.dagster_yaml)
        (out / "latency.json").write_text(json.dumps(r, indent=1, default=str))
        shown = r
    if args.workers or args.both:
        w = run_workers(args.quick, log=log, singles=args.singles, burst=args.burst)
        (out / "latency-workers.json").write_text(json.dumps(w, indent=1, default=str))
        shown = w
        if args.both:
            shown = {"embedded": r, "workers": w, "ratios": ratios(r, w)}
            (out / "latency-both.json").write_text(json.dumps(shown, indent=1, default=str))
    for line in lines(shown):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
