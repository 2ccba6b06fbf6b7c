"""Delete, everywhere: `DELETE /assets/{id}` over a real socket (`dam api` on moto's S3 and RabbitMQ)
and `dam delete` on the embedded default remove the original, thumbnail, vector, upload marker,
the id's row claims (nothing left under owners/{id}/), table rows and index entry; the id is gone
from every read route and from SQL at once, and the same bytes uploaded again make the asset anew."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from dagster import materialize
from fastapi.testclient import TestClient

from dam_assets.search.assets import search_segment
from dam_assets_tests.conftest import free_port, jpeg_bytes
from dam_assets_tests.pipeline_harness import BATCH_ASSETS, resources, tick
from dam_assets_tests.processes import stop
from dam_core import layout
from dam_core.store import LocalStore, make_store
from dam_core.table import make_table
from dam_core.tombstones import is_deleted, list_tombstones, read_tombstone, write_tombstone
from dam_ingest_api.main import create_app

DAM = str(Path(sys.executable).parent / "dam")
API_KEY = "delete-test-key-5d1f"
RED = jpeg_bytes(96, 64, (220, 30, 30), seed=1)
BLUE = jpeg_bytes(96, 64, (30, 40, 220), seed=2)
GREEN = jpeg_bytes(96, 64, (30, 200, 40), seed=3)
HOSTILE_IDS = [
    "NOT-AN-ID",
    "0" * 31,
    "0" * 33,
    "A" * 32,
    "g" * 32,
    "..",
    "%2e%2e",
    "..%2f..%2fetc%2fpasswd",
    "0" * 32 + "%00",
    "0" * 32 + ".json",
    "%20" + "0" * 32,
    "assets%2f" + "0" * 32,
]


def run_batches(instance, cursor: str | None = None) -> str | None:
    """One sensor tick, then every requested batch as its run does it: enrich, tabulate, index."""
    result = tick(instance, cursor)
    for request in result.run_requests or []:
        materialize(
            [*BATCH_ASSETS, search_segment],
            partition_key=request.partition_key,
            instance=instance,
            resources=resources(),
        )
    return result.cursor if result.cursor is not None else cursor


def objects_of(store, asset_id: str) -> list[str]:
    """Every object left under the id's keys (originals with any extension)."""
    keys = [layout.thumbnail_key(asset_id), layout.vector_key(asset_id), layout.upload_marker_key(asset_id)]
    return [k for k in keys if store.exists(k)] + list(store.list(f"{layout.ORIGINALS_PREFIX}{asset_id}"))


def owners_left(store, asset_id: str) -> list[str]:
    """Anything under owners/{id}/: its claims, and on the local store the folder itself."""
    left = list(store.list(layout.owner_prefix(asset_id)))
    if not left and hasattr(store, "root"):  # LocalStore: an empty folder may be left over
        folder = store.root / layout.owner_prefix(asset_id).rstrip("/")
        left += [f"{folder} (empty folder)"] if folder.exists() else []
    return left


def table_rows(settings, asset_id: str) -> int:
    """Rows of the id in every batch of the table's current version, as SQL sees them."""
    ids = [i for (i,) in make_table(settings).connect().execute("SELECT id FROM assets_all").fetchall()]
    return ids.count(asset_id)


def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.2)


# ----------------------------------------------------------------------------- the rule


def test_a_tombstone_hides_uploads_up_to_its_time_only(tmp_path):
    store = LocalStore(tmp_path / "store")
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    asset = "ab" * 16
    write_tombstone(store, asset, when)
    assert json.loads(store.get(layout.tombstone_key(asset))) == {"id": asset, "deleted_at": when.isoformat()}
    tombs = list_tombstones(store)
    assert tombs == {asset: when} and read_tombstone(store, asset) == when
    assert is_deleted(tombs, asset, when - timedelta(seconds=1))
    assert is_deleted(tombs, asset, when)  # the same instant: deleted
    assert is_deleted(tombs, asset, when.timestamp())
    assert is_deleted(tombs, asset, None)
    assert not is_deleted(tombs, asset, when + timedelta(microseconds=1))  # uploaded again after
    assert not is_deleted(tombs, "cd" * 16, when - timedelta(days=1))
    store.put(layout.TOMBSTONES_PREFIX + "junk.json", b"{}")  # a stray object is not a tombstone
    assert list_tombstones(store) == {asset: when}


# ----------------------------------------------------------------------------- over HTTP


@pytest.fixture
def prod_api(make_settings, tiny_models, s3_env, rabbit_url, queue_name, tmp_path):
    """`dam api` as a subprocess on moto's S3 and RabbitMQ behind an API key; the pipeline runs in
    this process on the same settings. Yields (http client with the key, settings)."""
    env = {
        **tiny_models,
        **s3_env,
        "AMQP_URL": rabbit_url,
        "DAM_QUEUE": queue_name,
        "DAM_API_KEY": API_KEY,
        "DAM_BATCH_SIZE": "16",
        "DAM_INDEX_POLL_SECONDS": "0.5",
        "DAM_DATA_DIR": str(tmp_path / "data"),
    }
    settings = make_settings(**env)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_")) and k != "AMQP_URL"}
    port = free_port()
    log = open(tmp_path / "api.log", "w+b")
    proc = subprocess.Popen(
        [DAM, "api", "--port", str(port), "--log-level", "warning"],
        env={**clean, **env},
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (log.seek(0), log.read())
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "dam api did not answer /healthz within 60 s"
            time.sleep(0.1)
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=60) as client:
            yield client, settings
    finally:
        stop(proc)
        log.seek(0)
        assert b"Traceback" not in log.read(), "the API logged an unhandled error"
        log.close()


def upload(client, name: str, data: bytes) -> httpx.Response:
    return client.post("/upload", files={"file": (name, data, "application/octet-stream")})


def listed(client) -> dict[str, str]:
    body = client.get("/assets", params={"limit": 100}).json()
    return {i["id"]: i["status"] for i in body["items"]}


def searched(client, q: str = "a photo") -> list[str]:
    r = client.get("/search", params={"q": q, "k": 10})
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def similar(client, asset_id: str) -> list[str]:
    r = client.get(f"/assets/{asset_id}/similar", params={"k": 10})
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


@pytest.mark.system
def test_delete_over_http_removes_everything_and_the_same_bytes_come_back(prod_api, instance):
    client, settings = prod_api
    store = make_store(settings)
    red, blue, green = (
        upload(client, f"{n}.jpg", d).json()["id"] for n, d in (("red", RED), ("blue", BLUE), ("green", GREEN))
    )
    cursor = run_batches(instance)
    wait_for(lambda: listed(client) == dict.fromkeys([red, blue, green], "processed"), what="all three served")
    assert red in searched(client) and red in similar(client, blue)
    assert table_rows(settings, red) == 1 and len(objects_of(store, red)) == 4
    assert len(owners_left(store, red)) == 1  # the batch's claim on the id's row

    # Only with the key; malformed ids are 4xx; an id never seen is 404; nothing was touched.
    anonymous = httpx.delete(f"{client.base_url}/assets/{red}")
    assert anonymous.status_code == 401, anonymous.text
    assert httpx.delete(f"{client.base_url}/assets/{red}", headers={"X-API-Key": "wrong"}).status_code == 401
    for bad in HOSTILE_IDS:
        r = client.delete(f"/assets/{bad}")
        assert 400 <= r.status_code < 500, (bad, r.status_code, r.text)
    assert client.delete("/assets/" + "0" * 32).status_code == 404
    assert list(store.list(layout.TOMBSTONES_PREFIX)) == []
    assert len(objects_of(store, red)) == 4 and listed(client)[red] == "processed"

    r = client.delete(f"/assets/{red}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {
        "id": red,
        "deleted_at": body["deleted_at"],
        "original": True,
        "thumbnail": True,
        "vector": True,
        "marker": True,
        "table_rows": 1,
        "index": True,
    }
    assert datetime.fromisoformat(body["deleted_at"]) <= datetime.now(UTC)

    # Gone at once, from every read route (the index version that drops it may come later).
    assert client.get(f"/assets/{red}").status_code == 404
    for part in ("original", "thumbnail", "similar", "duplicates"):
        assert client.get(f"/assets/{red}/{part}").status_code == 404, part
    assert listed(client) == dict.fromkeys([blue, green], "processed")
    assert red not in searched(client) and red not in similar(client, blue)
    assert objects_of(store, red) == []
    assert owners_left(store, red) == []
    assert table_rows(settings, red) == 0
    assert make_table(settings).connect().execute("SELECT count(*) FROM assets").fetchone()[0] == 2
    assert read_tombstone(store, red) == datetime.fromisoformat(body["deleted_at"])
    # Deleting again finishes nothing new, and says so.
    again = client.delete(f"/assets/{red}")
    assert again.status_code == 200, again.text
    assert {k: v for k, v in again.json().items() if k not in ("id", "deleted_at")} == {
        "original": False,
        "thumbnail": False,
        "vector": False,
        "marker": False,
        "table_rows": 0,
        "index": False,
    }

    # The same bytes again: a new upload (202, not a duplicate), queued at once.
    r = upload(client, "red again.jpg", RED)
    assert r.status_code == 202, r.text
    assert r.json()["id"] == red and "duplicate" not in r.json()
    assert client.get(f"/assets/{red}").json()["status"] == "queued"
    assert listed(client)[red] == "queued"

    # Processed again, it is served again everywhere: the tombstone is older than this upload.
    run_batches(instance, cursor)
    assert table_rows(settings, red) == 1 and len(objects_of(store, red)) == 4
    wait_for(lambda: listed(client).get(red) == "processed", what="the re-upload served as processed")
    assert client.get(f"/assets/{red}").json()["filename"] == "red again.jpg"
    assert red in searched(client) and red in similar(client, blue)


@pytest.mark.system
def test_a_delete_while_queued_is_not_undone_by_the_batch(prod_api, instance):
    client, settings = prod_api
    store = make_store(settings)
    red = upload(client, "red.jpg", RED).json()["id"]
    blue = upload(client, "blue.jpg", BLUE).json()["id"]
    result = tick(instance)  # the manifest holds both; the run has not happened yet
    [request] = result.run_requests
    assert listed(client) == dict.fromkeys([red, blue], "queued")

    r = client.delete(f"/assets/{red}")
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in ("original", "marker", "table_rows")} == {
        "original": True,
        "marker": True,
        "table_rows": 0,
    }
    assert client.get(f"/assets/{red}").status_code == 404
    assert listed(client) == {blue: "queued"}  # the manifest still names it: hidden all the same

    materialize(
        [*BATCH_ASSETS, search_segment], partition_key=request.partition_key, instance=instance, resources=resources()
    )
    wait_for(lambda: listed(client) == {blue: "processed"}, what="only blue served")
    assert client.get(f"/assets/{red}").status_code == 404
    assert red not in searched(client)
    assert table_rows(settings, red) == 0
    assert [k for k in objects_of(store, red) if not k.startswith(layout.ORIGINALS_PREFIX)] == []


# ----------------------------------------------------------------------------- dam delete


def dam(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([DAM, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


@pytest.mark.system
def test_dam_delete_removes_everything_and_a_running_api_stops_serving_it(
    make_settings, tiny_models, instance, tmp_path
):
    settings = make_settings(**tiny_models, DAM_BATCH_SIZE="16", DAM_INDEX_POLL_SECONDS="0.5")
    store = make_store(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_")) and k != "AMQP_URL"}
    env["DAM_DATA_DIR"] = str(settings.data_dir)
    with TestClient(create_app(settings)) as client:
        red, blue = (upload(client, f"{n}.jpg", d).json()["id"] for n, d in (("red", RED), ("blue", BLUE)))
        cursor = run_batches(instance)
        client.app.state.catalog.index.refresh()
        assert listed(client) == dict.fromkeys([red, blue], "processed")

        bad = dam(["delete", red, "../etc/passwd"], env, tmp_path)
        assert bad.returncode == 2 and "not an asset id" in bad.stderr and "Traceback" not in bad.stderr
        assert len(objects_of(store, red)) == 4  # nothing deleted when any id is malformed
        assert len(owners_left(store, red)) == 1  # the batch's claim on the id's row

        proc = dam(["delete", red, "0" * 32, "--json"], env, tmp_path)
        assert proc.returncode == 1, proc.stderr  # one id was not found
        reports = json.loads(proc.stdout)
        assert [r["id"] for r in reports] == [red, "0" * 32]
        assert {
            k: reports[0][k] for k in ("found", "original", "thumbnail", "vector", "marker", "table_rows", "index")
        } == {
            "found": True,
            "original": True,
            "thumbnail": True,
            "vector": True,
            "marker": True,
            "table_rows": 1,
            "index": True,
        }
        assert reports[1]["found"] is False and reports[1]["deleted_at"] is None
        assert objects_of(store, red) == [] and table_rows(settings, red) == 0
        assert owners_left(store, red) == []  # no claim, and on this local store no empty owners/{id}/
        assert read_tombstone(store, "0" * 32) is None  # an unknown id leaves no tombstone

        # The API process learns of it from the store within its poll interval.
        wait_for(lambda: client.get(f"/assets/{red}").status_code == 404, timeout=10, what="the API hides it")
        assert listed(client) == {blue: "processed"}
        assert red not in similar(client, blue)

        proc = dam(["delete", red], env, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "nothing left to remove" in proc.stdout

        r = upload(client, "red.jpg", RED)
        assert r.status_code == 202 and "duplicate" not in r.json(), r.text
        assert listed(client)[red] == "queued"
        run_batches(instance, cursor)
        assert table_rows(settings, red) == 1 and len(objects_of(store, red)) == 4
        client.app.state.catalog.index.refresh()
        assert listed(client) == dict.fromkeys([red, blue], "processed")

    out = dam(["sql", f"SELECT count(*) AS n FROM assets WHERE id = '{red}'", "--format", "json"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"n": 1}]
