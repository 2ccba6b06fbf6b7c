"""Faults on the way from a 202 to a row: every upload answered 202 ends as exactly one row.

Real RabbitMQ (behind a TCP proxy the tests cut), moto's S3 server over HTTP, a persistent
Dagster instance in a temp DAGSTER_HOME, and processes that SIGKILL themselves at chosen
steps (dam_assets_tests/faults/crash.py). After every fault the pipeline is restarted the
normal way (sensor ticks, then the requested runs) with no manual step, and each test ends
by comparing the uploads answered 202 with the rows in `assets`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import persistqueue
import pika
import pytest
import torch
from dagster import DagsterInstance, materialize
from fastapi.testclient import TestClient
from persistqueue.serializers import json as json_serializer

import dam_core.table
from dam_assets.ingest.partitions import batches_partitions_def
from dam_assets.resources import DamResource
from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.faults.proxy import TcpProxy
from dam_assets_tests.faults.server import serve
from dam_assets_tests.pipeline_harness import (
    BATCH_ASSETS,
    dam_sql,
    materialize_batch,
    resources,
    tick,
)
from dam_core.layout import upload_marker_key
from dam_core.messages import UploadMessage
from dam_core.queue import EmbeddedQueue, RabbitQueue, make_queue
from dam_core.settings import load_settings
from dam_core.store import LocalStore, StoreError, make_store
from dam_core.table import make_table
from dam_ingest_api.main import create_app

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine torch's
    thread barriers wait for time slices on every op (runs 5-20x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_env(request, make_settings, tiny_models, kind: str, **extra):
    env = dict(tiny_models, DAM_BATCH_SIZE="8", DAM_SENSOR_BUDGET_SECONDS="10")
    env.update(extra)
    if kind == "rabbitmq+s3":
        env.update(request.getfixturevalue("s3_env"))
        env.setdefault("AMQP_URL", request.getfixturevalue("rabbit_url"))
        env["DAM_QUEUE"] = request.getfixturevalue("queue_name")
    return make_settings(**env)


@pytest.fixture
def settings(backend):
    """Both backends (conftest's `backend`): the embedded default, and RabbitMQ + S3 (moto)."""
    return backend(DAM_BATCH_SIZE="8", DAM_SENSOR_BUDGET_SECONDS="10")


@pytest.fixture
def instance(tmp_path):
    """A persistent instance in a temp DAGSTER_HOME, shared with the crashing subprocesses."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    inst = DagsterInstance.local_temp(tempdir=str(home))
    inst.home_dir = str(home)  # for the subprocesses
    yield inst
    inst.dispose()


# ----------------------------------------------------------------------------- helpers


def crash(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a crash script with the test's environment; it must die by its own SIGKILL."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "dam_assets_tests.faults.crash", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert "KILL " in proc.stdout, proc.stdout
    return proc


def upload_all(client, images: list[bytes], prefix: str = "img") -> list[dict]:
    out = []
    for i, data in enumerate(images):
        r = client.post("/upload", files={"file": (f"{prefix}-{i}.jpg", data, "image/jpeg")})
        assert r.status_code == 202, r.text
        out.append(r.json())
    return out


def images(n: int, seed: int) -> list[bytes]:
    return [
        jpeg_bytes(48, 40, color=((seed * 7 + i * 31) % 256, i * 13 % 256, seed % 256), seed=seed * 100 + i + 1)
        for i in range(n)
    ]


def wait_until_released(settings, timeout: float = 15) -> None:
    """RabbitMQ requeues a dead consumer's messages once it noticed the closed socket."""
    if not settings.uses_rabbitmq:
        return

    deadline = time.monotonic() + timeout
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url.get_secret_value()))
    try:
        ch = conn.channel()
        while time.monotonic() < deadline:
            if ch.queue_declare(settings.dam_queue, passive=True).method.consumer_count == 0:
                return
            time.sleep(0.05)
    finally:
        conn.close()
    raise AssertionError("the dead consumer was never released by RabbitMQ")


class Pipeline:
    """The daemon's part, in-process: tick, store partitions, launch each run_key once."""

    def __init__(self, instance: DagsterInstance, cursor: str | None = None):
        self.instance = instance
        self.cursor = cursor
        self.launched: set[str] = set()

    def drain(self, max_ticks: int = 10) -> list[str]:
        ran = []
        for _ in range(max_ticks):
            result = tick(self.instance, self.cursor)
            if result.cursor is not None:
                self.cursor = result.cursor
            new = [r.run_key for r in result.run_requests or [] if r.run_key not in self.launched]
            for key in new:
                materialize_batch(self.instance, key)
                self.launched.add(key)
                ran.append(key)
            if not new:
                break
        return ran


def count_line(label: str, settings, answered_202: set[str]) -> str:
    """Uploads answered 202 against rows in `assets`; asserts they are the same ids, once each."""
    con = make_table(settings).connect()
    rows = con.execute("SELECT id, error FROM assets").fetchall()
    total = con.execute("SELECT count(*) FROM assets_all").fetchone()[0]
    line = (
        f"[{label}] uploads answered 202: {len(answered_202)}, rows in assets: {len(rows)} "
        f"(assets_all: {total}, with error: {sum(1 for r in rows if r[1])})"
    )
    print(line)
    assert len(rows) == len({r[0] for r in rows})
    assert {r[0] for r in rows} == answered_202, line
    assert len(rows) == len(answered_202), line
    return line


def assert_every_manifest_has_a_partition(settings, instance) -> None:
    store = make_store(settings)
    for key in store.list("batches/"):
        batch = key[len("batches/") : -len(".json")]
        assert instance.has_dynamic_partition(batches_partitions_def.name, batch), batch


# ----------------------------------------------------------------------------- 1. broker cut


def _peek_persistent(settings, broker_url: str) -> dict[str, int]:
    """Every message in the queue, by upload id -> delivery mode; left in the queue."""
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    out: dict[str, int] = {}
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(settings.dam_queue, auto_ack=False)
            if method is None:
                break
            out[UploadMessage.from_json(body).id] = props.delivery_mode
    finally:
        conn.close()  # unacked: all of them go back
    return out


def _content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _burst(url: str, blobs: list[bytes], spacing: float) -> list[tuple[int, dict, float]]:
    def send(i):
        time.sleep(i * spacing)
        t = time.monotonic()
        with httpx.Client(timeout=60) as c:
            r = c.post(f"{url}/upload", files={"file": (f"burst-{i}.jpg", blobs[i], "image/jpeg")})
        return r.status_code, r.json(), time.monotonic() - t

    with ThreadPoolExecutor(len(blobs)) as pool:
        return list(pool.map(send, range(len(blobs))))


@pytest.mark.parametrize("mode", ["reset", "blackhole"])
def test_broker_unreachable_during_a_burst(request, make_settings, tiny_models, rabbit_url, instance, mode):
    """Cut RabbitMQ (behind a proxy) during ~60 concurrent uploads over HTTP, then restore it."""
    n = 60 if mode == "reset" else 16
    with TcpProxy("127.0.0.1", 5672) as proxy:
        proxied = rabbit_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
        settings = build_env(request, make_settings, tiny_models, "rabbitmq+s3", AMQP_URL=proxied, DAM_BATCH_SIZE="64")
        store = make_store(settings)
        publish_timeout = 10.0 if mode == "reset" else 2.0
        queue = RabbitQueue(proxied, settings.dam_queue, settings.dead_letter_queue, publish_timeout=publish_timeout)
        app = create_app(settings, store=store, queue=queue)
        blobs = images(n, seed=1 if mode == "reset" else 2)
        ids = [_content_id(b) for b in blobs]

        def cutter():
            time.sleep(0.8)
            proxy.cut(mode)
            time.sleep(1.2 if mode == "reset" else 4.0)
            proxy.restore()

        with serve(app) as url:
            th = threading.Thread(target=cutter)
            th.start()
            results = _burst(url, blobs, spacing=0.045 if mode == "reset" else 0.3)
            th.join()
            time.sleep(0.5)  # let the proxy flush what it held, as a healed network would
            statuses = Counter(s for s, _, _ in results)
            print(f"[broker {mode}] first answers: {dict(statuses)}, slowest {max(t for _, _, t in results):.2f} s")
            assert set(statuses) <= {202, 503}, statuses
            assert statuses[503] > 0 and statuses[202] > 0, statuses  # the cut was exercised
            # Bounded: no request hangs on a broker that stopped answering.
            assert max(t for _, _, t in results) < 2 * publish_timeout + 5
            accepted = {ids[i] for i, (s, _, _) in enumerate(results) if s == 202}
            refused = [i for i, (s, _, _) in enumerate(results) if s == 503]
            for i, (s, body, _) in enumerate(results):
                if s == 202:
                    assert body["id"] == ids[i] and body["status"] == "queued"
                else:
                    assert "unavailable" in body["detail"] and "Traceback" not in json.dumps(body)
            # For every 503 no upload marker (its original stays until the orphan sweep).
            for i in refused:
                assert not store.exists(upload_marker_key(ids[i]))
            # No 202 without a confirmed persistent message: each is in the durable queue, mode 2.
            queued = _peek_persistent(settings, rabbit_url)
            assert accepted <= set(queued), accepted - set(queued)
            assert all(mode_ == 2 for mode_ in queued.values())

            # Before clients retry: every 202 is a good row. A message whose confirm was lost with
            # the connection can still reach the broker (at-least-once): for an upload answered 503
            # its original was kept, so it becomes a good row too.
            pipeline = Pipeline(instance)
            pipeline.drain()
            rows = dict(make_table(settings).connect().execute("SELECT id, error FROM assets").fetchall())
            assert accepted <= {i for i, e in rows.items() if e is None}
            phantoms = set(rows) - accepted
            assert phantoms <= {ids[i] for i in refused}
            assert all(rows[i] is None for i in phantoms)
            print(
                f"[broker {mode}, before retries] uploads answered 202: {len(accepted)}, rows in assets without "
                f"error: {len(rows) - len(phantoms)}, rows for 503 answers whose confirm was lost: {len(phantoms)}"
            )

            # Clients retry their 503s (Retry-After) once the broker is back: now all 202.
            retried = _burst(url, [blobs[i] for i in refused], spacing=0.0)
            assert [s for s, _, _ in retried] == [202] * len(refused)
            accepted |= {ids[i] for i in refused}

        pipeline.drain()
        assert make_queue(settings).depth() == 0
        assert_every_manifest_has_a_partition(settings, instance)
    count_line(f"broker {mode}: {statuses[202]} first-try 202 + {len(refused)} retried 503", settings, accepted)


# ----------------------------------------------------------------------------- 2. sensor killed


@pytest.mark.parametrize("step", ["before_manifest", "before_ack", "before_partition"])
def test_sensor_killed_mid_drain_loses_and_duplicates_nothing(settings, instance, step):
    client = TestClient(create_app(settings))
    first = upload_all(client, images(2, seed=10), "first")
    pipeline = Pipeline(instance)
    assert len(pipeline.drain()) == 1
    cursor = pipeline.cursor

    second = upload_all(client, images(4, seed=11), "second")
    proc = crash("tick", instance.home_dir, step, cursor or "")
    print(proc.stdout.strip().splitlines()[-1])
    wait_until_released(settings)

    # "Restart": the daemon ticks again from the cursor it had stored, no manual step.
    store = make_store(settings)
    manifests_before = set(store.list("batches/"))
    pipeline.drain()
    assert make_queue(settings).depth() == 0
    assert_every_manifest_has_a_partition(settings, instance)
    answered = {b["id"] for b in first + second}
    rows = make_table(settings).connect().execute("SELECT count(*) FROM assets WHERE error IS NULL").fetchone()[0]
    assert rows == len(answered)
    if step == "before_manifest":
        assert len(manifests_before) == 1  # the killed tick wrote nothing
    count_line(f"sensor killed {step}, {settings.uses_rabbitmq and 'rabbitmq+s3' or 'embedded'}", settings, answered)


# ----------------------------------------------------------------------------- 3. run killed


def test_run_killed_mid_batch_is_reexecuted_without_appending(request, make_settings, tiny_models, instance):
    settings = build_env(request, make_settings, tiny_models, "rabbitmq+s3", DAM_BATCH_SIZE="8")
    client = TestClient(create_app(settings))
    sent = upload_all(client, images(5, seed=20))
    result = tick(instance)
    (batch,) = [r.partition_key for r in result.run_requests]

    # Killed right after the captions were written: no table yet, the run never finished.
    crash("run", instance.home_dir, batch, "stages/captions/", "1")
    store = make_store(settings)
    assert not list(store.list("metadata/"))
    (killed,) = [r for r in instance.get_runs() if r.tags.get("dagster/partition") == batch]
    assert not killed.is_finished  # as a crashed run is left until the daemon's run monitoring marks it
    materialize_batch(instance, batch)  # re-executed
    materialize_batch(instance, batch)  # and once more, as a backfill or retry would

    con = make_table(settings).connect()
    assert con.execute("SELECT count(*) FROM assets_all").fetchone()[0] == len(sent)  # overwritten, not appended
    # One live data file, and the log shows the two runs replacing the batch rather than adding to it.
    assert len(make_table(settings).open().file_uris()) == 1
    writes = [h for h in make_table(settings).history() if h["operation"] == "WRITE"]
    assert len(writes) == 2 and all(f"batch = '{batch}'" in h["operationParameters"]["predicate"] for h in writes)
    table = {r[0]: r[1] for r in con.execute("SELECT id, embedding FROM assets").fetchall()}
    for s in sent:
        vec = json.loads(store.get(s["vector_key"]))
        assert vec["id"] == s["id"]
        assert np.allclose(np.asarray(vec["embedding"], np.float32), np.asarray(table[s["id"]], np.float32), atol=1e-6)
    count_line("run killed after captions, re-executed twice", settings, {s["id"] for s in sent})


# ----------------------------------------------------------------------------- 4. store faults


FAULT = {"prefix": None, "nth": 1, "seen": 0, "times": 0, "failed": 0, "how": "midway"}


class _BreaksMidway(io.RawIOBase):
    """Hands out the first half of the bytes, then the connection 'resets'."""

    def __init__(self, data: bytes):
        self.data, self.pos = bytes(data), 0

    def readable(self):
        return True

    def read(self, n=-1):
        half = len(self.data) // 2
        if self.pos >= half:
            raise ConnectionResetError("injected fault: connection reset mid-write")
        n = half - self.pos if n is None or n < 0 else min(n, half - self.pos)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


class FlakyStore:
    """The real store, except that writes under FAULT['prefix'] fail (from the nth on, `times` times)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data, content_type=None):
        if FAULT["prefix"] and key.startswith(FAULT["prefix"]):
            FAULT["seen"] += 1
            if FAULT["seen"] >= FAULT["nth"] and FAULT["failed"] < FAULT["times"]:
                FAULT["failed"] += 1
                if FAULT["how"] == "midway":
                    return self.inner.put(key, _BreaksMidway(data), content_type)  # raises part-way
                raise StoreError(f"injected fault: PUT {key} refused")
        return self.inner.put(key, data, content_type)


class FlakyDamResource(DamResource):
    @property
    def store(self):
        return FlakyStore(super().store)


def _arm(prefix: str, nth: int, times: int, how: str) -> None:
    FAULT.update(prefix=prefix, nth=nth, seen=0, times=times, failed=0, how=how)


def _flaky_table_write(real):
    """delta-rs's write_deltalake, except that it fails while FAULT is armed for the table: the
    Delta table is written by delta-rs straight to the store, not through FlakyStore."""

    def write(table_or_uri, data, **kwargs):
        if FAULT["prefix"] and FAULT["prefix"].startswith("metadata/"):
            FAULT["seen"] += 1
            if FAULT["seen"] >= FAULT["nth"] and FAULT["failed"] < FAULT["times"]:
                FAULT["failed"] += 1
                raise OSError("injected fault: connection reset while writing the table")
        return real(table_or_uri, data, **kwargs)

    return write


def _materialize_flaky(instance, batch):
    return materialize(
        BATCH_ASSETS,
        partition_key=batch,
        instance=instance,
        resources={**resources(), "dam": FlakyDamResource.from_settings(load_settings())},
        raise_on_error=False,
    )


def _failure_text(result) -> str:
    parts = []
    for ev in result.get_step_failure_events():
        err = ev.event_specific_data.error
        while err is not None:
            parts.append(err.message)
            err = err.cause
    return "\n".join(parts)


@pytest.mark.parametrize(
    "prefix,nth,how",
    [("metadata/assets/", 1, "midway"), ("vectors/", 2, "refused")],
    ids=["table-write-breaks-midway", "second-vector-put-refused"],
)
def test_store_write_fault_fails_the_run_and_a_retry_succeeds(settings, instance, prefix, nth, how, monkeypatch):
    monkeypatch.setattr(dam_core.table, "write_deltalake", _flaky_table_write(dam_core.table.write_deltalake))
    client = TestClient(create_app(settings))
    sent = upload_all(client, images(3, seed=30 + nth))
    (batch,) = [r.partition_key for r in tick(instance).run_requests]
    store = make_store(settings)

    _arm(prefix, nth, times=1, how=how)
    try:
        failed = _materialize_flaky(instance, batch)
    finally:
        FAULT["prefix"] = None
    assert not failed.success  # loudly
    assert FAULT["failed"] == 1 and "injected fault" in _failure_text(failed)
    # Nothing half-written is visible: no table version, `dam sql` sees no rows, no stray temp files.
    assert make_table(settings).open() is None
    assert make_table(settings).connect().execute("SELECT count(*) FROM assets_all").fetchone()[0] == 0
    if prefix.startswith("metadata/"):  # as a user sees it, right after the table write broke
        proc = dam_sql("SELECT count(*) AS n FROM assets", dict(os.environ))
        assert proc.returncode == 0 and json.loads(proc.stdout) == [{"n": 0}], proc.stderr
    if isinstance(store, LocalStore):
        assert not any(store._tmp.iterdir()), list(store._tmp.iterdir())

    retry = _materialize_flaky(instance, batch)  # the fault is gone: the retry succeeds
    assert retry.success
    count_line(
        f"store fault {prefix}#{nth} ({how}), {settings.uses_s3 and 's3' or 'local'}, retried",
        settings,
        {s["id"] for s in sent},
    )


# ----------------------------------------------------------------------------- 5. bad messages


def _huge_message() -> bytes:
    good = json.loads(
        UploadMessage(
            id="f" * 32,
            filename="x.jpg",
            r2_key=f"assets/{'f' * 32}.jpg",
            mime_type="image/jpeg",
            bytes=1,
            sha256="0" * 64,
            width=1,
            height=1,
            uploaded_at="2026-01-01T00:00:00Z",
        ).to_json()
    )
    good["filename"] = "y" * (4 << 20)  # 4 MiB: over the model's 1024-character limit
    return json.dumps(good).encode()


BAD_MESSAGES = {
    "non-utf8": b"\xff\xfe\x00garbage\x80\x81",
    "json-array": b'[{"id": "0123"}]',
    "json-null": b"null",
    "json-number": b"42",
    "json-string": b'"hello"',
    "empty": b"",
    "deeply-nested": b"[" * 20000 + b"]" * 20000,
    "wrong-types": json.dumps({"id": "a" * 32, "filename": 5, "r2_key": "assets/x.jpg", "width": "wide"}).encode(),
    "naive-timestamp": json.dumps(
        {
            "id": "b" * 32,
            "filename": "n.jpg",
            "r2_key": f"assets/{'b' * 32}.jpg",
            "mime_type": "image/jpeg",
            "bytes": 3,
            "sha256": "0" * 64,
            "width": 1,
            "height": 1,
            "uploaded_at": "2026-01-01T00:00:00",
        }
    ).encode(),
    "huge": _huge_message(),
}


def _inject_raw_embedded(settings, rows: list) -> None:
    """Rows written into the embedded queue's SQLite by something other than publish()."""
    q = persistqueue.SQLiteAckQueue(
        str(settings.data_dir / "queue"),
        db_file_name=f"{settings.dam_queue}.sqlite",
        auto_resume=False,
        multithreading=True,
        serializer=json_serializer,
    )
    for row in rows:
        q.put(row)
    q.close()
    # And a row whose stored blob is not JSON at all (a damaged or foreign row).
    with sqlite3.connect(settings.data_dir / "queue" / f"{settings.dam_queue}.sqlite") as con:
        con.execute(
            "INSERT INTO ack_queue_default (data, timestamp, status) VALUES (?, ?, 0)",
            (b"\x80\x04 not json \xff", time.time()),
        )


def test_bad_messages_are_dead_lettered_and_gone_objects_become_error_rows(settings, instance):
    client = TestClient(create_app(settings))
    queue, store = make_queue(settings), make_store(settings)
    before = upload_all(client, images(2, seed=40), "before")
    gone = upload_all(client, images(1, seed=41), "gone")[0]
    store.delete(gone["r2_key"])  # the original disappears after the 202

    bad = dict(BAD_MESSAGES)
    if settings.uses_rabbitmq:
        for body in bad.values():
            queue.publish(body)
    else:
        # publish() only writes UTF-8 JSON bodies; foreign rows go straight into SQLite.
        raw = bad.pop("non-utf8")
        for body in bad.values():
            queue.publish(body)
        foreign = [
            {"body": raw.decode("latin-1"), "headers": {}},
            {"body": 5, "headers": {}},
            {"body": "{}", "headers": "not a dict"},
            ["not", "a", "dict"],
        ]
        _inject_raw_embedded(settings, foreign)
        bad.update({f"foreign-{i}": None for i in range(len(foreign) + 1)})
    after = upload_all(client, images(2, seed=42), "after")

    pipeline = Pipeline(instance)
    pipeline.drain(max_ticks=20)
    assert queue.depth() == 0
    dead = queue.dead_letters()
    assert len(dead) == len(bad), [d.headers.get("x-dam-reason") for d in dead]
    for d in dead:
        assert d.headers["x-dam-reason"].startswith("unparseable upload message"), d.headers
        assert len(d.headers["x-dam-reason"]) <= 1000
    if settings.uses_rabbitmq:
        assert {d.body for d in dead} == set(bad.values())  # kept byte for byte

    rows = dict(make_table(settings).connect().execute("SELECT id, error FROM assets").fetchall())
    assert "not found" in rows[gone["id"]]
    assert all(rows[b["id"]] is None for b in before + after)
    count_line(
        f"bad messages ({len(bad)} dead-lettered), {settings.uses_rabbitmq and 'rabbitmq+s3' or 'embedded'}",
        settings,
        {b["id"] for b in before + after + [gone]},
    )


# ----------------------------------------------------------------------------- 6. embedded crash


@pytest.mark.parametrize("mode", ["put-new", "put-over-existing", "create"])
def test_local_store_crash_mid_write_leaves_no_partial_object(tmp_path, mode):
    root = tmp_path / "store"
    store = LocalStore(root)
    key = "assets/" + "e" * 32 + ".jpg"
    old = b"the complete old object" * 1000
    if mode == "put-over-existing":
        store.put(key, old)
    crash("put", str(root), key, "96", "24", "create" if mode == "create" else "put", timeout=60)

    store = LocalStore(root)  # as a restarted process sees it
    if mode == "put-over-existing":
        assert store.get(key) == old  # the old bytes, whole
    else:
        assert not store.exists(key)
        assert list(store.list("assets/")) == [] and list(store.list("")) == []
    leftovers = list((root / ".tmp").iterdir())
    assert leftovers and leftovers[0].stat().st_size >= 24 << 20  # the partial write existed, invisibly
    store.clear_temp()
    assert not any((root / ".tmp").iterdir())
    if mode == "create":
        assert store.create(key, b"fresh")  # the key is still free
    print(f"[local store killed mid-{mode}] uploads answered 202: 0, partial objects visible: 0")


def test_embedded_queue_crash_mid_publish_burst_keeps_every_confirmed_message(tmp_path):
    directory, name = tmp_path / "queue", "burst"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dam_assets_tests.faults.crash", "publish", str(directory), name, "100000"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed: list[str] = []
    target = random.Random(7).randint(200, 600)
    try:
        for line in proc.stdout:
            printed.append(line)
            if len(printed) >= target:
                time.sleep(random.Random(8).random() * 0.02)
                break
        os.kill(proc.pid, signal.SIGKILL)  # mid-burst
        printed += proc.stdout.read().splitlines()  # confirmations still in the pipe
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL and "DONE" not in "".join(printed)
    confirmed = [int(x) for x in printed if x.strip().isdigit()]
    assert len(confirmed) >= target

    db = directory / f"{name}.sqlite"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    queue = EmbeddedQueue(directory, name)
    with queue.consumer() as c:
        got = c.take(200_000, 0.5)
        c.ack(got)
    ids = [UploadMessage.from_json(d.body).id for d in got]  # every message parses
    assert len(ids) == len(set(ids))
    numbers = {int(i, 16) for i in ids}
    assert set(confirmed) <= numbers  # nothing publish() returned for is lost
    assert len(numbers) <= len(confirmed) + 1  # plus at most the one in flight when killed
    print(
        f"[embedded queue killed mid-burst] publishes returned: {len(confirmed)}, "
        f"messages in the queue: {len(numbers)}, lost: {len(set(confirmed) - numbers)}"
    )
