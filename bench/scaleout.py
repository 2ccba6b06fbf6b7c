"""Scale-out (issue 14): the per-batch fixed overhead of a cold run vs a warm Celery worker, and
images/s with one and two `dam worker`s, beside the model-alone ceiling, all in one run.

Every run is the real `enrich_batch` job on one partition, created from the workspace and handed
straight to an instance's run launcher (no daemon, no sensor tick, no coordinator dequeue):

* cold: the embedded default instance (DefaultRunLauncher), so each batch is a fresh
  `dagster api execute_run` process that imports the code and loads BLIP and CLIP;
* warm: the production instance (dagster.prod.yaml: PostgreSQL, DamCeleryRunLauncher on RabbitMQ),
  so each batch runs inside a `dam worker --preload` process that already holds the models.

Per-batch fixed overhead = a run's wall time (launch to SUCCESS seen) minus the ceiling's time
for the same images. The ceiling is the asset's own model calls (`caption_batch`, `embed_batch`)
on images decoded beforehand, in this process, at the same batch size. Throughput launches every
batch at once and times launch to the last SUCCESS; the second worker is added for the second
pass over the same partitions (a re-run replaces a batch's rows).

`--quick` uses the tiny random models (`dam models tiny`); the full run uses full-size
BLIP-base and CLIP ViT-B/32 architectures with random weights (bench/fixtures.build_models).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG = "postgresql://postgres@127.0.0.1:5432"
AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _config(quick: bool) -> dict:
    # Same batch size on every side; throughput uses enough batches to keep two workers busy.
    if quick:
        return {"batch": 8, "batches": 6, "latency_runs": 2, "size": (640, 480)}
    return {"batch": 32, "batches": 8, "latency_runs": 3, "size": (1600, 1200)}


def _spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _kill(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class Launcher:
    """Creates `enrich_batch` runs for partitions and hands them to one instance's run launcher."""

    def __init__(self, instance):
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        self.instance = instance
        self.ctx = WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(REPO / "workspace.yaml")]))
        self.ctx.__enter__()
        self.workspace = self.ctx.create_request_context()
        self.location = self.workspace.get_code_location("dam_assets")
        self.repo = self.location.get_repository("__repository__")
        self.job = self.repo.get_full_job("enrich_batch")

    def launch(self, partition: str) -> str:
        from dagster._cli.job import _create_run

        from dam_assets.run_queues import MODELS_QUEUE, QUEUE_TAG

        run = _create_run(
            instance=self.instance,
            code_location=self.location,
            remote_repo=self.repo,
            remote_job=self.job,
            run_config={},
            tags={"dagster/partition": partition, QUEUE_TAG: MODELS_QUEUE},
            op_selection=None,
            run_id=None,
        )
        self.instance.launch_run(run.run_id, self.workspace)
        return run.run_id

    def wait(self, run_ids: list[str], timeout: float, logs: list[Path]) -> None:
        from dagster import DagsterRunStatus

        deadline = time.monotonic() + timeout
        pending = set(run_ids)
        while pending:
            for rid in list(pending):
                run = self.instance.get_run_by_id(rid)
                if run.is_finished:
                    if run.status != DagsterRunStatus.SUCCESS:
                        raise RuntimeError(f"run {rid} ended {run.status}\n" + "\n".join(_tail(p) for p in logs))
                    pending.discard(rid)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(pending)} run(s) not done within {timeout}s\n" + "\n".join(_tail(p) for p in logs)
                )
            time.sleep(0.05)

    def timed_one(self, partition: str, timeout: float, logs: list[Path]) -> float:
        t = time.perf_counter()
        self.wait([self.launch(partition)], timeout, logs)
        return time.perf_counter() - t

    def timed_all(self, partitions: list[str], timeout: float, logs: list[Path]) -> float:
        t = time.perf_counter()
        self.wait([self.launch(p) for p in partitions], timeout, logs)
        return time.perf_counter() - t

    def close(self) -> None:
        self.ctx.__exit__(None, None, None)


def _ceiling(settings, store, uploads: list, batch: int) -> dict:
    """The asset's model calls alone on pre-decoded images: images/s and seconds per batch."""
    from dam_assets.enrichment.stages.captions import caption_batch
    from dam_assets.enrichment.stages.embeddings import embed_batch
    from dam_assets.resources import ModelsResource
    from dam_core.imaging import decode_batch

    models = ModelsResource.from_settings(settings)
    t = time.perf_counter()
    captioner, embedder = models.captioner(), models.embedder()
    load_s = time.perf_counter() - t
    labels = models.vocabulary()
    chunks = [decode_batch(store, uploads[i : i + batch]) for i in range(0, len(uploads), batch)]
    caption_batch(chunks[0], captioner)  # warm-up: first-call allocations
    embed_batch(chunks[0], embedder, labels, models.tag_threshold, models.tags_top_k)
    t = time.perf_counter()
    for decoded in chunks:
        caption_batch(decoded, captioner)
        embed_batch(decoded, embedder, labels, models.tag_threshold, models.tags_top_k)
    seconds = time.perf_counter() - t
    return {"images_per_s": len(uploads) / seconds, "batch_s": seconds / len(chunks), "model_load_s": load_s}


def _ping(env: dict, n: int) -> bool:
    r = subprocess.run(
        [str(BIN / "dam"), "worker", "--ping", "--any-host", "--timeout", "2", "--queue", "dam-models"],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return len(r.stdout.splitlines()) >= n


def _wait_workers(env: dict, n: int, procs: list[subprocess.Popen], logs: list[Path], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not _ping(env, n):
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a worker exited ({p.returncode})\n" + "\n".join(_tail(x) for x in logs))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} worker(s) did not answer within {timeout}s\n" + "\n".join(_tail(x) for x in logs))
        time.sleep(0.5)


def run(quick: bool, log=print, models_dir: str | None = None) -> dict:
    import psycopg2
    import yaml

    cfg = _config(quick)
    batch, n_batches = cfg["batch"], cfg["batches"]
    tmp = Path(tempfile.mkdtemp(prefix="dam-bench-scaleout-"))
    db = f"dam_bench_{uuid.uuid4().hex[:8]}"
    prefix = f"b{uuid.uuid4().hex[:8]}-"
    procs: list[subprocess.Popen] = []
    launchers: list[Launcher] = []
    saved_env = dict(os.environ)
    con = psycopg2.connect(PG + "/postgres")
    con.autocommit = True
    con.cursor().execute(f'CREATE DATABASE "{db}"')
    try:
        if quick:
            from dam_models.tiny import write_tiny_models

            blip, clip = write_tiny_models(tmp / "models")
        else:
            from bench.fixtures import build_models

            blip, clip = build_models(models_dir or (tmp / "models"), log=log)
        # Every process (code servers, run processes, workers) reads its settings from here.
        os.environ.update(
            {
                "DAM_DATA_DIR": str(tmp / "data"),
                "DAM_CAPTION_MODEL": str(blip),
                "DAM_EMBEDDING_MODEL": str(clip),
                "DAM_BATCH_SIZE": str(batch),
                "DAM_DEVICE": "cpu",
                "AMQP_URL": AMQP,
                "DAM_QUEUE": f"{prefix}uploads",
                "DAGSTER_PG_URL": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        for var in [k for k in os.environ if k.startswith(("R2_", "DAGSTER_HOME"))]:
            os.environ.pop(var)
        from bench.fixtures import machine, other_load, seed_store
        from dam_core.manifests import write_manifest
        from dam_core.settings import load_settings
        from dam_core.store import make_store

        busy = other_load(2.0)  # cores other processes used before start: the machine is shared
        settings = load_settings()
        store = make_store(settings)
        uploads = seed_store(store, batch * n_batches, 0, size=cfg["size"])
        partitions = [write_manifest(store, uploads[i : i + batch]).batch for i in range(0, len(uploads), batch)]
        log(f"scaleout: {len(uploads)} images in {len(partitions)} batches of {batch}")

        ceiling = _ceiling(settings, store, uploads, batch)
        log(f"scaleout: model-alone ceiling {ceiling['images_per_s']:.1f} images/s")

        from dagster import DagsterInstance

        homes = {"cold": tmp / "home-cold", "prod": tmp / "home-prod"}
        for h in homes.values():
            h.mkdir()
        (homes["cold"] / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        prod = yaml.safe_load((REPO / "dagster.prod.yaml").read_text())
        prod["run_launcher"]["config"]["queue_prefix"] = prefix
        (homes["prod"] / "dagster.yaml").write_text(yaml.safe_dump(prod))

        # ---- cold: a fresh run process per batch (the embedded default's DefaultRunLauncher)
        cold_instance = DagsterInstance.from_config(str(homes["cold"]))
        cold_instance.add_dynamic_partitions("ingest_batches", partitions)
        cold = Launcher(cold_instance)
        launchers.append(cold)
        cold_s = [cold.timed_one(partitions[i], 600, []) for i in range(cfg["latency_runs"])]
        log(f"scaleout: cold runs {[round(s, 2) for s in cold_s]} s")

        # ---- warm: runs inside `dam worker --preload`
        os.environ["DAGSTER_HOME"] = str(homes["prod"])
        prod_instance = DagsterInstance.get()
        prod_instance.add_dynamic_partitions("ingest_batches", partitions)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        logs = [tmp / "w1.log", tmp / "w2.log"]
        procs.append(_spawn([str(BIN / "dam"), "worker", "--name", "w1", "--preload"], env, logs[0]))
        _wait_workers(env, 1, procs, logs)
        warm = Launcher(prod_instance)
        launchers.append(warm)
        warm.timed_one(partitions[-1], 600, logs)  # the worker's first run: its code imports, the DB pool
        warm_s = [warm.timed_one(partitions[i], 600, logs) for i in range(cfg["latency_runs"])]
        log(f"scaleout: warm runs {[round(s, 2) for s in warm_s]} s")

        one_s = warm.timed_all(partitions, 900, logs)
        procs.append(_spawn([str(BIN / "dam"), "worker", "--name", "w2", "--preload"], env, logs[1]))
        _wait_workers(env, 2, procs, logs)
        warm.timed_one(partitions[-1], 600, logs)  # may land on either; warms w2's code path if so
        two_s = warm.timed_all(partitions, 900, logs)
        workers_used = sorted(
            {r.tags.get("dam/celery_worker", "?").split("-")[0] for r in prod_instance.get_runs(limit=n_batches)}
        )
        log(f"scaleout: {n_batches} batches in {one_s:.1f}s on one worker, {two_s:.1f}s on two ({workers_used})")

        from dam_core.table import make_table

        ((rows, distinct),) = (
            make_table(settings).connect().sql("SELECT count(*), count(DISTINCT id) FROM assets_all").fetchall()
        )

        cold_batch, warm_batch = sum(cold_s) / len(cold_s), sum(warm_s) / len(warm_s)
        cold_over, warm_over = cold_batch - ceiling["batch_s"], warm_batch - ceiling["batch_s"]
        ips1, ips2 = len(uploads) / one_s, len(uploads) / two_s
        return {
            "machine": machine(),
            "background_load_cores_at_start": busy,
            "batch_size": batch,
            "batches": n_batches,
            "images": len(uploads),
            "image_size": list(cfg["size"]),
            "models": "tiny random (dam models tiny)" if quick else "BLIP-base + CLIP ViT-B/32, random weights",
            "ceiling": {k: round(v, 3) for k, v in ceiling.items()},
            "cold_run_s": [round(s, 3) for s in cold_s],
            "warm_run_s": [round(s, 3) for s in warm_s],
            "cold_overhead_s": round(cold_over, 3),
            "warm_overhead_s": round(warm_over, 3),
            "overhead_ratio_cold_to_warm": round(cold_over / warm_over, 2) if warm_over > 0 else None,
            "one_worker_images_per_s": round(ips1, 2),
            "two_workers_images_per_s": round(ips2, 2),
            "two_to_one_ratio": round(ips2 / ips1, 2),
            "one_worker_share_of_ceiling": round(ips1 / ceiling["images_per_s"], 3),
            "two_workers_share_of_ceiling": round(ips2 / ceiling["images_per_s"], 3),
            "workers_used_in_two_worker_pass": workers_used,
            "rows": rows,
            "distinct_ids": distinct,
        }
    finally:
        for launcher in launchers:
            try:
                launcher.close()
            except Exception:
                pass
        for p in procs:
            _kill(p)
        os.environ.clear()
        os.environ.update(saved_env)
        _drop(con, db, prefix)
        shutil.rmtree(tmp, ignore_errors=True)


def _drop(con, db: str, prefix: str) -> None:
    import pika

    from dam_assets.run_queues import QUEUES

    cur = con.cursor()
    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
    cur.execute(f'DROP DATABASE IF EXISTS "{db}"')
    con.close()
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    ch = conn.channel()
    for q in [*QUEUES, "uploads"]:
        ch.queue_delete(prefix + q)
        ch.exchange_delete(prefix + q)
    conn.close()


def lines(r: dict) -> list[str]:
    """The ratios as printed, for bench/RESULTS.md."""
    c = r["ceiling"]
    return [
        f"scale-out: batch size {r['batch_size']}, {r['images']} images ({r['image_size'][0]}x{r['image_size'][1]}) "
        f"in {r['batches']} batches, models: {r['models']}",
        f"scale-out: machine {r['machine']['cpu']} ({r['machine']['cores']} cores), other processes busy "
        f"{r['background_load_cores_at_start']} cores at start; workers OMP_NUM_THREADS=1, ceiling torch default threads",
        f"scale-out: model-alone ceiling {c['images_per_s']:.1f} images/s ({c['batch_s']:.2f} s per batch; model load {c['model_load_s']:.2f} s)",
        f"scale-out: per-batch run wall: cold run process {sum(r['cold_run_s']) / len(r['cold_run_s']):.2f} s, "
        f"warm worker {sum(r['warm_run_s']) / len(r['warm_run_s']):.2f} s",
        f"scale-out: per-batch fixed overhead (wall - ceiling): cold {r['cold_overhead_s']:.2f} s vs warm {r['warm_overhead_s']:.2f} s "
        f"= {r['overhead_ratio_cold_to_warm']}x",
        f"scale-out: end to end {r['one_worker_images_per_s']:.1f} images/s on one worker "
        f"({r['one_worker_share_of_ceiling']:.0%} of ceiling), {r['two_workers_images_per_s']:.1f} on two "
        f"({r['two_workers_share_of_ceiling']:.0%}); two/one = {r['two_to_one_ratio']}x "
        f"(workers used: {', '.join(r['workers_used_in_two_worker_pass'])})",
        f"scale-out: table rows {r['rows']} for {r['distinct_ids']} distinct ids of {r['images']} images after every re-run (replaced, never appended)",
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, 6 batches of 8 (about 2 min on 2 cores)")
    p.add_argument("--models-dir", help="full run: reuse (or create) the random full-size models here")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    result = run(args.quick, log=lambda m: print(m, file=sys.stderr, flush=True), models_dir=args.models_dir)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    for line in lines(result):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
