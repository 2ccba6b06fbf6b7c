"""Shared fixtures: real RabbitMQ, moto's S3 server over HTTP, tiny models, image bytes.

Tiers: a test marked `system` needs services (RabbitMQ, PostgreSQL, moto) or starts processes or
servers; everything under system/ is, and so is any test that uses a service fixture, directly or
through a parameter such as `backend`'s "rabbitmq+s3". `pytest -m "not system"` is the fast tier.
A service fixture set up for an unmarked test fails it, so the fast tier never needs a service.
"""

from __future__ import annotations

import fcntl
import io
import os
import socket
import subprocess
import sys
import uuid

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The project's own modules only after the defaults above: whatever they import may read them once, at import.
from dam_core.settings import load_settings

RABBIT_URL = os.environ.get("DAM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
S3_REGION = "us-east-1"  # moto rejects R2's "auto"


SERVICE_FIXTURES = {"rabbit_url", "queue_name", "moto_endpoint", "s3_env", "pg_url"}
SERVICE_PARAMS = {"rabbitmq", "s3", "rabbitmq+s3", "rabbitmq-s3"}  # fixture params that fetch a service fixture


def _needs_services(item: pytest.Item) -> bool:
    if item.path.parent.name == "system" or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(isinstance(v, str) and v in SERVICE_PARAMS for v in callspec.params.values())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_services(item):
            item.add_marker(pytest.mark.system)
    # The longest tests (those given a timeout of their own: `dam dev` restarts, recoveries) first,
    # longest first: started last, one of them would run alone on one worker at the end of the run.
    items.sort(key=_own_timeout, reverse=True)


def _own_timeout(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    return float(marker.args[0]) if marker is not None and marker.args else 0.0


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    item = getattr(request, "_pyfuncitem", None)
    if fixturedef.argname in SERVICE_FIXTURES and item is not None and item.get_closest_marker("system") is None:
        pytest.fail(f"{item.nodeid} uses {fixturedef.argname}: mark it @pytest.mark.system", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg_bytes(width=320, height=240, color=(200, 40, 40), quality=90, seed=None) -> bytes:
    """A real JPEG with some texture so it compresses like a photo."""
    img = Image.new("RGB", (width, height), color)
    d = ImageDraw.Draw(img)
    s = seed if seed is not None else (hash(color) & 0xFFFF)
    for i in range(12):
        x, y = (s * (i + 3) * 37) % width, (s * (i + 7) * 53) % height
        d.ellipse([x, y, x + width // 5, y + height // 5], fill=((s + 60 * i) % 256, (90 * i) % 256, (s * i) % 256))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(width=64, height=64, mode="RGBA") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), (10, 200, 30, 128) if mode == "RGBA" else 128).save(buf, "PNG")
    return buf.getvalue()


def noise_png(min_bytes: int) -> bytes:
    """A PNG of random pixels (it does not compress): at least `min_bytes` long."""
    side = int((min_bytes / 3) ** 0.5) + 16
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG", compress_level=1)
    assert len(buf.getvalue()) >= min_bytes
    return buf.getvalue()


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    """The machine's RabbitMQ; the suite fails (not skips) when it is missing."""
    # Service clients (pika, boto3, psycopg2) are imported by the service fixtures only: the fast tier needs none.
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(RABBIT_URL)).close()
    except Exception as err:  # pragma: no cover - environment problem
        pytest.fail(f"RabbitMQ is not reachable at {RABBIT_URL}: {err}")
    return RABBIT_URL


@pytest.fixture
def queue_name(rabbit_url):
    """A unique RabbitMQ queue name for one test, deleted (with its dead-letter queue) afterwards."""
    import pika  # a service client: see rabbit_url

    name = f"test-uploads-{uuid.uuid4().hex[:10]}"
    yield name
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    ch = conn.channel()
    for q in (name, f"{name}.dead"):
        ch.queue_delete(q)
    conn.close()


_MOTO = """
import sys, threading
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer

# moto checks If-None-Match / If-Match and then stores, unlocked: two racing conditional PUTs can
# both succeed. S3 and R2 decide atomically (the store's create() and delta-rs's commits rely on it),
# so the stand-in takes one lock around a conditional PUT's check and store.
_conditional = threading.Lock()
_put_object = S3Response.put_object


def put_object(self):
    if self.headers.get("If-None-Match") or self.headers.get("If-Match"):
        with _conditional:
            return _put_object(self)
    return _put_object(self)


S3Response.put_object = put_object
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()  # until the test session closes our stdin (or dies)
server.stop()
"""


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's S3 server (ThreadedMotoServer) on a free port in its own process, spoken to over real HTTP.

    Its own process, as R2 is: delta-rs holds the GIL in some blocking calls (a log listing), which
    would deadlock against a server answering from threads of the same interpreter.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready", "moto did not start"
    yield f"http://127.0.0.1:{port}"
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def s3_env(moto_endpoint) -> dict:
    """Environment for the S3 store: a fresh bucket on the moto server."""
    import boto3  # a service client: see rabbit_url

    bucket = f"dam-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name=S3_REGION, aws_access_key_id="test", aws_secret_access_key="test"
    ).create_bucket(Bucket=bucket)
    return {
        "R2_ENDPOINT": moto_endpoint,
        "R2_ACCESS_KEY_ID": "test",
        "R2_SECRET_ACCESS_KEY": "test",
        "R2_BUCKET": bucket,
        "R2_REGION": S3_REGION,
    }


@pytest.fixture
def make_settings(tmp_path, monkeypatch):
    """Build Settings from a clean environment plus the given variables."""
    for var in list(os.environ):
        if var.startswith(("R2_", "DAM_")) or var == "AMQP_URL":
            monkeypatch.delenv(var, raising=False)

    def build(**env):
        env.setdefault("DAM_DATA_DIR", str(tmp_path / "data"))
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))
        return load_settings()

    return build


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random BLIP and CLIP models written once per session through `dam models tiny`."""
    # torch and transformers (about a second) only for the tests that use the models: every run loads this file.
    from dam_models.tiny import write_tiny_models

    # One set of models and one conversion cache for the whole run, xdist workers included (their
    # temp folders share a parent): a worker waits on the lock instead of building and converting
    # the same models again (build_once locks the conversions the same way).
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, cache = shared / "tiny-models", shared / "converted-models"
    with open(shared / "tiny-models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "done").exists():
            write_tiny_models(folder)
            (folder / "done").touch()
    cache.mkdir(exist_ok=True)
    blip, clip = folder / "blip", folder / "clip"
    return {"DAM_CAPTION_MODEL": str(blip), "DAM_EMBEDDING_MODEL": str(clip), "DAM_MODEL_CACHE_DIR": str(cache)}


@pytest.fixture(params=["embedded", "rabbitmq+s3"])
def backend(request, make_settings, tiny_models):
    """Settings builder for one backend: the embedded default, or RabbitMQ + the S3 API (moto)."""

    def build(**extra):
        env = dict(tiny_models, **extra)
        if request.param == "rabbitmq+s3":
            env.update(request.getfixturevalue("s3_env"))
            env["AMQP_URL"] = request.getfixturevalue("rabbit_url")
            env["DAM_QUEUE"] = request.getfixturevalue("queue_name")
        return make_settings(**env)

    return build


PG = "postgresql://postgres@127.0.0.1:5432"
PG_DAGSTER = "postgresql+psycopg2://postgres@127.0.0.1:5432"  # SQLAlchemy 2.1 defaults to psycopg 3


@pytest.fixture
def pg_url():
    """A fresh database on the machine's PostgreSQL (dropped afterwards), as a Dagster storage URL."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"dam_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(f"{PG}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as err:
        pytest.fail(f"PostgreSQL is not reachable at {PG}: {err}")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_DAGSTER}/{name}"
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def instance():
    """A real, ephemeral Dagster instance."""
    # dagster only for the tests that use it: every run, of any test, loads this file.
    from dagster import DagsterInstance

    with DagsterInstance.ephemeral() as inst:
        yield inst
