"""Production runs on Celery workers: real PostgreSQL, RabbitMQ, moto S3, the daemon and two `dam worker`s.

One test walks the issue's whole story, because starting the daemon and two workers is most of
its cost: batches spread over both workers, each worker process loads each model once (or never
in a run, when preloaded), exactly one row per upload; then one worker is SIGKILLed (its whole
process group, as a lost machine) in the middle of a run, and every upload still becomes
exactly one row with no person involved. The victim reaches the store through a TCP proxy that
is blackholed first, so its run is certainly in flight when it dies, not already finished.
Another test launches a backfill of every partition through the webserver's GraphQL, as the UI does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pika
import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dam_assets.celery_launcher import WORKER_PID_TAG, WORKER_TAG
from dam_assets_tests.conftest import free_port, jpeg_bytes
from dam_assets_tests.faults.proxy import TcpProxy
from dam_assets_tests.processes import wait_http
from dam_core.table import make_table
from dam_ingest_api.main import create_app

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BATCH = 4
RECOVERY_DEADLINE_S = 150  # from the SIGKILL to every upload's row


def images(n: int, seed: int) -> list[bytes]:
    return [
        jpeg_bytes(64, 48, color=(seed * 37 % 256, i * 11 % 256, 255 - i * 9), seed=seed * 1000 + i + 1)
        for i in range(n)
    ]


def spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    proc = subprocess.Popen(args, env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything in its session (a Celery worker and its pool processes)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def ping(env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "dam"), "worker", "--ping", "--timeout", "2", *extra],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_until(what: str, check, timeout: float, logs: list[Path], procs: list[subprocess.Popen], every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            assert p.poll() is None, f"{p.args[:3]} exited with {p.returncode}\n" + tails(logs)
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n" + tails(logs))
        time.sleep(every)


def tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())


def row_counts(settings) -> tuple[int, int, set]:
    con = make_table(settings).connect()
    ((n, distinct),) = con.sql("SELECT count(*), count(DISTINCT id) FROM assets_all").fetchall()
    ok = {r[0] for r in con.sql("SELECT id FROM assets WHERE error IS NULL").fetchall()}
    return n, distinct, ok


@pytest.fixture
def prod_home(tmp_path, rabbit_url):
    """$DAGSTER_HOME with dagster.prod.yaml, its queues prefixed so parallel tests never share one."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.prod.yaml").read_text())
    assert config["run_launcher"]["class"] == "DamCeleryRunLauncher"
    config["run_launcher"]["config"]["queue_prefix"] = prefix
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    yield home, prefix
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    ch = conn.channel()
    for q in config["run_launcher"]["config"]["queues"]:
        ch.queue_delete(prefix + q)
        ch.exchange_delete(prefix + q)
    conn.close()


@pytest.fixture
def prod_env(prod_home, pg_url, tiny_models, make_settings, s3_env, rabbit_url, queue_name, monkeypatch):
    """Settings and process environment of the production instance: PostgreSQL, RabbitMQ, S3 (moto)."""
    monkeypatch.setenv("DAGSTER_HOME", str(prod_home[0]))
    monkeypatch.setenv("DAGSTER_PG_URL", pg_url)
    settings = make_settings(
        **tiny_models,
        **s3_env,
        AMQP_URL=rabbit_url,
        DAM_QUEUE=queue_name,
        DAM_BATCH_SIZE=str(BATCH),
        OMP_NUM_THREADS="1",
    )
    return settings, dict(os.environ, OMP_NUM_THREADS="1")


def scrape_worker(port: int) -> dict:
    """Every sample of a worker's metrics port as {(name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def upload_all(client: TestClient, datas: list[bytes], prefix: str) -> set[str]:
    """POST each image; every one must be answered 202. Returns their ids."""
    ids = set()
    for i, data in enumerate(datas):
        r = client.post("/upload", files={"file": (f"{prefix}-{i}.jpg", data, "image/jpeg")})
        assert r.status_code == 202, r.text
        ids.add(r.json()["id"])
    return ids


@pytest.mark.timeout(420)
def test_runs_spread_over_warm_workers_and_a_killed_worker_loses_nothing(tmp_path, prod_home, prod_env, s3_env):
    home, prefix = prod_home
    settings, env = prod_env
    s3 = urlparse(s3_env["R2_ENDPOINT"])
    proxy = TcpProxy(s3.hostname, s3.port)
    victim_env = dict(env, R2_ENDPOINT=f"http://127.0.0.1:{proxy.port}")
    logs = {name: tmp_path / f"{name}.log" for name in ("daemon", "warm", "victim")}
    procs: dict[str, subprocess.Popen] = {}

    assert ping(env, "--queue", "dam-models").returncode == 1  # no worker yet: the health check says so

    client = TestClient(create_app(settings))
    ids: set[str] = set()

    def upload(n: int, seed: int) -> None:
        ids.update(upload_all(client, images(n, seed), str(seed)))

    upload(8 * BATCH, seed=1)  # 8 batches at the sensor's first tick
    try:
        # "warm" preloads its models and serves every queue; "victim" loads in its first run and
        # serves only dam-models, so the index runs never hold it.
        metrics_port = free_port()
        procs["warm"] = spawn(
            [str(BIN / "dam"), "worker", "--name", "warm", "--preload", "--metrics-port", str(metrics_port)],
            env,
            logs["warm"],
        )
        procs["victim"] = spawn(
            [str(BIN / "dam"), "worker", "--name", "victim", "--queue", "dam-models"], victim_env, logs["victim"]
        )
        wait_until(
            "both workers answer `dam worker --ping`",
            lambda: len(ping(env, "--queue", "dam-models").stdout.splitlines()) == 2,
            90,
            list(logs.values()),
            list(procs.values()),
            every=0.5,
        )
        procs["daemon"] = spawn(
            [str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")], env, logs["daemon"]
        )

        with DagsterInstance.get() as instance:
            assert type(instance.run_launcher).__name__ == "DamCeleryRunLauncher"

            def batch_runs():
                return [r for r in instance.get_runs() if "dam/batch" in r.tags]

            def all_rows() -> bool:
                n, distinct, ok = row_counts(settings)
                return n == len(ids) and distinct == len(ids) and ok == ids

            started = time.monotonic()

            def phase1_done() -> bool:
                runs = batch_runs()
                return len(runs) == 8 and all(r.is_finished for r in runs) and all_rows()

            wait_until("8 batches in rows", phase1_done, 200, list(logs.values()), list(procs.values()), every=2)
            runs = batch_runs()
            phase1_s = time.monotonic() - started
            assert len(runs) == 8 and all(r.status == DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]
            nodes = {r.tags[WORKER_TAG].split("-")[0] for r in runs}
            assert nodes == {"warm", "victim"}, nodes  # both workers took runs

            # Each pool process loaded each model once at most, from the metadata the UI shows.
            by_run = {r.run_id: r for r in runs}
            loads: dict[tuple[str, str], list[float]] = {}
            for key in ("image_captions", "image_embeddings"):
                records = instance.fetch_materializations(AssetKey(key), limit=100).records
                assert len(records) == 8
                for rec in records:
                    md = rec.asset_materialization.metadata
                    run = by_run[rec.run_id]
                    assert md["worker_pid"].value == int(run.tags[WORKER_PID_TAG])  # recorded where it ran
                    assert md["worker_host"].value
                    loads.setdefault((run.tags[WORKER_TAG].split("-")[0], key), []).append(
                        md["model_load_seconds"].value
                    )
            for (node, key), seconds in loads.items():
                cold = [s for s in seconds if s > 0]
                # preloaded: every run found the model loaded; otherwise the first run alone loaded it
                assert len(cold) == (0 if node == "warm" else 1), (node, key, seconds)
            victim_runs = len([r for r in runs if r.tags[WORKER_TAG].startswith("victim")])
            print(
                f"\n8 batches in {phase1_s:.1f}s; victim took {victim_runs}; load seconds by (worker, asset): {loads}"
            )

            # ---- a worker dies mid-run
            proxy.cut("blackhole")  # the victim's next run hangs on the store, so it is in flight
            upload(3 * BATCH, seed=2)

            def victim_run():
                running = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
                return [r for r in running if r.tags.get(WORKER_TAG, "").startswith("victim")]

            (stranded,) = wait_until(
                "a run STARTED on the victim", victim_run, 120, list(logs.values()), list(procs.values()), every=0.3
            )
            time.sleep(1)
            kill_group(procs.pop("victim"))
            killed_at = time.monotonic()
            assert instance.get_run_by_id(stranded.run_id).status == DagsterRunStatus.STARTED

            def recovered() -> bool:
                runs = batch_runs()
                retries = [r for r in runs if r.parent_run_id == stranded.run_id]
                done = (
                    instance.get_run_by_id(stranded.run_id).status == DagsterRunStatus.FAILURE
                    and retries
                    and retries[-1].status == DagsterRunStatus.SUCCESS
                    and all(r.status == DagsterRunStatus.SUCCESS for r in runs if r.run_id != stranded.run_id)
                )
                return done and all_rows()

            wait_until(
                "every upload in rows after the kill",
                recovered,
                RECOVERY_DEADLINE_S,
                list(logs.values()),
                list(procs.values()),
                every=2,
            )
            recovery_s = time.monotonic() - killed_at
            failure = instance.all_logs(stranded.run_id, of_type=DagsterEventType.RUN_FAILURE)[-1].dagster_event.message
            assert "is gone" in failure, failure
            (retry,) = [r for r in batch_runs() if r.parent_run_id == stranded.run_id]
            assert retry.tags.get("dagster/retry_number") == "1" and retry.tags[WORKER_TAG].startswith("warm")
            n, distinct, _ = row_counts(settings)
            assert n == distinct == len(ids) == 11 * BATCH  # the retry replaced the batch's rows, never appended
            print(f"killed worker recovered in {recovery_s:.1f}s: {failure}")

            # The warm worker's --metrics-port: what its pool process recorded, summed from its files.
            def counted():
                runs = instance.get_runs()
                warm = [r for r in runs if r.tags.get(WORKER_TAG, "").startswith("warm")]
                if not all(r.is_finished for r in runs):
                    return None
                m = scrape_worker(metrics_port)
                ok = [r for r in warm if r.status == DagsterRunStatus.SUCCESS]
                return (warm, m) if m[("dam_runs_total", (("outcome", "success"),))] == len(ok) == len(warm) else None

            warm, m = wait_until("every warm run counted, once", counted, 60, list(logs.values()), list(procs.values()))
            warm_batches = [r for r in warm if "dam/batch" in r.tags]
            assert m[("dam_runs_total", (("outcome", "failure"),))] == 0
            for stage in ("decode", "caption", "embed", "thumbnail", "write"):
                assert m[("dam_enrichment_stage_seconds_count", (("stage", stage),))] == len(warm_batches), stage
            assert m[("dam_images_enriched_total", (("outcome", "ok"),))] == BATCH * len(warm_batches)
            assert m[("dam_upload_to_row_seconds_count", ())] == BATCH * len(warm_batches)
            for model in ("caption", "embedding"):  # preloaded once, never again in a run
                assert m[("dam_model_load_seconds_count", (("model", model),))] == 1, model
    finally:
        for p in procs.values():
            kill_group(p)
        proxy.close()


@pytest.mark.timeout(300)
def test_run_of_a_dead_worker_nobody_else_serves_is_failed_by_the_health_check(tmp_path, prod_home, prod_env, s3_env):
    """With no other worker to take the redelivered task, run monitoring alone must fail the run."""
    home, _ = prod_home
    settings, env = prod_env
    s3 = urlparse(s3_env["R2_ENDPOINT"])
    proxy = TcpProxy(s3.hostname, s3.port)
    proxy.cut("blackhole")
    logs = {name: tmp_path / f"{name}.log" for name in ("daemon", "lone", "next")}
    procs: dict[str, subprocess.Popen] = {}
    client = TestClient(create_app(settings))
    ids = upload_all(client, images(BATCH, seed=7), "7")
    try:
        lone_env = dict(env, R2_ENDPOINT=f"http://127.0.0.1:{proxy.port}")
        procs["lone"] = spawn([str(BIN / "dam"), "worker", "--name", "lone"], lone_env, logs["lone"])
        procs["daemon"] = spawn(
            [str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")], env, logs["daemon"]
        )
        with DagsterInstance.get() as instance:

            def started():
                return instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))

            (stranded,) = wait_until(
                "the batch run STARTED", started, 150, list(logs.values()), list(procs.values()), every=0.3
            )
            kill_group(procs.pop("lone"))
            killed_at = time.monotonic()

            def failed():
                return instance.get_run_by_id(stranded.run_id).status == DagsterRunStatus.FAILURE

            # run_monitoring polls every 15 s; the health check then asks the dead node and hears nothing.
            wait_until("the dead worker's run FAILED", failed, 60, list(logs.values()), list(procs.values()))
            failed_s = time.monotonic() - killed_at
            failure = instance.all_logs(stranded.run_id, of_type=DagsterEventType.RUN_FAILURE)[-1].dagster_event.message
            assert "does not answer" in failure, failure

            # A new worker takes the stale message (the run is over: nothing happens) and the retry.
            procs["next"] = spawn([str(BIN / "dam"), "worker", "--name", "next"], env, logs["next"])

            def retried() -> bool:
                retries = [r for r in instance.get_runs() if r.parent_run_id == stranded.run_id]
                n, distinct, ok = row_counts(settings)
                return bool(retries) and retries[0].is_finished and n == distinct == len(ids) and ok == ids

            wait_until("the retry's rows", retried, 150, list(logs.values()), list(procs.values()), every=2)
            (retry,) = [r for r in instance.get_runs() if r.parent_run_id == stranded.run_id]
            assert retry.status == DagsterRunStatus.SUCCESS and retry.tags[WORKER_TAG].startswith("next")
            assert (
                instance.get_run_by_id(stranded.run_id).status == DagsterRunStatus.FAILURE
            )  # the stale task changed nothing
            print(f"\nhealth check failed the dead worker's run {failed_s:.1f}s after the kill: {failure}")
    finally:
        for p in procs.values():
            kill_group(p)
        proxy.close()


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
  }
}
"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions partitionNames }
    ... on PythonError { message }
  }
}
"""


def graphql(port: int, query: str, variables: dict) -> dict:
    body = httpx.post(
        f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables}, timeout=60
    ).json()
    assert "errors" not in body, body
    return body["data"]


@pytest.mark.timeout(300)
def test_graphql_backfill_of_every_partition_runs_on_the_workers(tmp_path, prod_home, prod_env, s3_env):
    """The UI's backfill of every batch (a model change made them all stale) re-runs them on warm workers."""
    home, _ = prod_home
    settings, env = prod_env
    port = free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("webserver", "daemon", "w1", "w2")}
    procs: dict[str, subprocess.Popen] = {}
    client = TestClient(create_app(settings))
    ids = upload_all(client, images(3 * BATCH, seed=5), "5")
    try:
        procs["webserver"] = spawn(
            [str(BIN / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            env,
            logs["webserver"],
        )
        # Both preloaded: a backfill run on a warm worker loads nothing.
        for name in ("w1", "w2"):
            procs[name] = spawn([str(BIN / "dam"), "worker", "--name", name, "--preload"], env, logs[name])
        procs["daemon"] = spawn(
            [str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")], env, logs["daemon"]
        )
        every = (list(logs.values()), list(procs.values()))

        with DagsterInstance.get() as instance:

            def batches_done() -> bool:
                runs = [r for r in instance.get_runs() if "dam/batch" in r.tags]
                n, distinct, ok = row_counts(settings)
                return len(runs) == 3 and all(r.is_finished for r in runs) and n == distinct == len(ids) and ok == ids

            wait_until("3 batches in rows", batches_done, 150, *every, every=1)
            partitions = instance.get_dynamic_partitions("ingest_batches")
            assert len(partitions) == 3
            wait_http(f"http://127.0.0.1:{port}/server_info", 60, procs["webserver"])

            started = time.monotonic()
            launched = graphql(
                port,
                LAUNCH_BACKFILL,
                {
                    "params": {
                        "selector": {
                            "partitionSetName": "enrich_batch_partition_set",
                            "repositorySelector": {
                                "repositoryLocationName": "dam_assets",
                                "repositoryName": "__repository__",
                            },
                        },
                        "allPartitions": True,
                    }
                },
            )["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            backfill_id = launched["backfillId"]

            def backfill_runs():
                return instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))

            # BackfillPolicy.multi_run: up to DAM_BACKFILL_BATCHES_PER_RUN batches in each run.
            per_run = settings.dam_backfill_batches_per_run
            expected_runs = -(-len(partitions) // per_run)

            def covered(run) -> list[str]:
                if "dagster/partition" in run.tags:
                    return [run.tags["dagster/partition"]]
                first = partitions.index(run.tags["dagster/asset_partition_range_start"])
                return partitions[first : partitions.index(run.tags["dagster/asset_partition_range_end"]) + 1]

            def backfill_done():
                state = graphql(port, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
                runs = backfill_runs()
                finished = state["status"] in (
                    "COMPLETED",
                    "COMPLETED_SUCCESS",
                    "COMPLETED_FAILED",
                    "FAILED",
                    "CANCELED",
                )
                return state if finished and len(runs) == expected_runs and all(r.is_finished for r in runs) else None

            state = wait_until("the backfill's runs finished", backfill_done, 120, *every, every=1)
            backfill_s = time.monotonic() - started
            runs = backfill_runs()
            assert state["status"] == "COMPLETED_SUCCESS", state
            assert sorted(state["partitionNames"]) == sorted(partitions)  # every partition, not a subset
            assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS] * expected_runs
            assert sorted(k for r in runs for k in covered(r)) == sorted(partitions)

            # Each run executed inside a worker: the launcher tagged it, the assets recorded where.
            workers = {r.tags[WORKER_TAG].split("-")[0] for r in runs}
            assert workers <= {"w1", "w2"}, workers
            by_run = {r.run_id: r for r in runs}
            for key in ("image_captions", "image_embeddings"):
                records = [
                    rec
                    for rec in instance.fetch_materializations(AssetKey(key), limit=100).records
                    if rec.run_id in by_run
                ]
                assert sorted(rec.partition_key for rec in records) == sorted(partitions)  # one per batch
                for rec in records:
                    md = rec.asset_materialization.metadata
                    assert md["worker_pid"].value == int(by_run[rec.run_id].tags[WORKER_PID_TAG])
                    assert md["worker_host"].value
                    assert md["model_load_seconds"].value == 0  # warm: preloaded, nothing loaded in the run

            n, distinct, ok = row_counts(settings)
            assert n == distinct == len(ids) == 3 * BATCH and ok == ids  # re-runs replaced rows, never appended
            print(f"\nbackfill of {len(partitions)} partitions on workers {sorted(workers)} in {backfill_s:.1f}s")
    finally:
        for p in procs.values():
            kill_group(p)
