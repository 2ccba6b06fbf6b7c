"""Uploads that no batch holds yet (no Dagster running) stay listed as `queued`: across a restart of
`dam api`, and in every worker of `dam api --workers 2`. Real processes, the embedded default."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime

import httpx
import pytest

from dam_assets_tests.conftest import free_port, jpeg_bytes
from dam_assets_tests.processes import start_dam_api, stop
from dam_core.layout import MARKERS_PREFIX
from dam_core.markers import write_marker
from dam_core.messages import UploadMessage
from dam_core.store import LocalStore
from dam_ingest_api.catalog.deleted import DeletedAssets
from dam_ingest_api.catalog.pending import PendingUploads

POLL_SECONDS = 2  # DAM_INDEX_POLL_SECONDS here: the shortest wait between two marker scans
# The README's bound, on a store this small: the first marker scan starts with the API (a few ms
# here), a worker's next one within DAM_INDEX_POLL_SECONDS. Slack for a loaded 2-core machine.
RESTART_BOUND_SECONDS = 10
WORKERS_BOUND_SECONDS = POLL_SECONDS + 10


@pytest.fixture
def dam_api(tmp_path):
    """Start `dam api` the way a user does, on one data folder; yields start(*args) -> (proc, url)."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_")) and k != "AMQP_URL"}
    env.update(DAM_DATA_DIR=str(data_dir), DAM_INDEX_POLL_SECONDS=str(POLL_SECONDS))
    procs = []

    def start(*args: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
        proc, url, log = start_dam_api(
            env, tmp_path, tmp_path / f"api-{len(procs)}.log", *args, port=port or free_port()
        )
        procs.append((proc, log))
        return proc, url

    yield start
    for proc, log in procs:
        stop(proc)
        log.close()


def upload_three(url: str) -> list[str]:
    ids = []
    for seed in (1, 2, 3):
        data = jpeg_bytes(96, 64, ((seed * 67) % 256, (seed * 131) % 256, 40), seed=seed)
        r = httpx.post(f"{url}/upload", files={"file": (f"q{seed}.jpg", data, "image/jpeg")}, timeout=30)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def listed(url: str) -> dict[str, str]:
    """Status by id of GET /assets, on a new connection each time (so any worker may answer)."""
    body = httpx.get(f"{url}/assets", params={"limit": 100}, timeout=10).json()
    return {i["id"]: i["status"] for i in body["items"]}


def wait_listed(url: str, expected: dict[str, str], bound: float, times: int = 1) -> float:
    """Poll until `times` listings in a row are `expected`; the seconds it took, or fail after `bound`."""
    start = time.monotonic()
    in_a_row, last = 0, None
    while time.monotonic() - start < bound:
        last = listed(url)
        in_a_row = in_a_row + 1 if last == expected else 0
        if in_a_row >= times:
            return time.monotonic() - start
        time.sleep(0.05 if in_a_row else 0.25)
    pytest.fail(f"GET /assets was {last}, not {expected}, within {bound} s")


def test_queued_uploads_are_listed_again_after_a_restart(dam_api, tmp_path):
    proc, url = dam_api()
    ids = upload_three(url)
    queued = dict.fromkeys(ids, "queued")
    assert listed(url) == queued
    stop(proc)  # SIGTERM
    # uvicorn shuts down gracefully, then re-raises the signal: -SIGTERM, not a kill.
    assert proc.returncode in (0, -signal.SIGTERM), (tmp_path / "api-0.log").read_text()
    data = tmp_path / "data" / "store"
    assert all((data / f"uploads/{i}.json").is_file() for i in ids)  # the durable record is there

    port = int(url.rsplit(":", 1)[1])
    _, url = dam_api(port=port)  # the same command again
    wait_listed(url, queued, RESTART_BOUND_SECONDS)
    for asset_id in ids:
        r = httpx.get(f"{url}/assets/{asset_id}", timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    # Newest first, like every listing.
    body = httpx.get(f"{url}/assets", params={"limit": 100}, timeout=10).json()
    assert [i["id"] for i in body["items"]] == ids[::-1]


def test_every_worker_lists_what_another_accepted(dam_api):
    _, url = dam_api("--workers", "2")
    ids = upload_three(url)  # each on a new connection: spread over the two workers
    # Twenty listings in a row, each on its own connection, all agree: whichever worker answers.
    wait_listed(url, dict.fromkeys(ids, "queued"), WORKERS_BOUND_SECONDS, times=20)


def test_the_scan_reads_only_markers_the_index_lacks(tmp_path):
    """A marker scan lists `uploads/` once and reads only the markers of ids not indexed (here
    none is): a restart with a million processed uploads does not read a million markers."""

    class CountingStore(LocalStore):
        gets: list[str] = []
        lists: list[str] = []

        def get(self, key):
            self.gets.append(key)
            return super().get(key)

        def list(self, prefix, start_after=None):
            self.lists.append(prefix)
            return super().list(prefix, start_after)

    store = CountingStore(tmp_path)

    def message(n: int) -> UploadMessage:
        asset_id = f"{n:032x}"
        return UploadMessage(
            id=asset_id,
            filename=f"{n}.jpg",
            r2_key=f"assets/{asset_id}.jpg",
            mime_type="image/jpeg",
            bytes=1,
            sha256="0" * 64,
            width=1,
            height=1,
            uploaded_at=datetime.now(UTC),
        )

    indexed = {f"{n:032x}" for n in range(50)}

    class FakeSnapshot:
        version, low_watermark, by_id = "v1", None, indexed

    class FakeIndex:
        snapshot = FakeSnapshot()

    for n in range(53):
        write_marker(store, message(n))
    deleted = DeletedAssets(store, FakeIndex(), 60)
    pending = PendingUploads(store, FakeIndex(), deleted, scan_seconds=60)
    store.gets.clear()
    assert pending.scan()
    assert store.lists.count(MARKERS_PREFIX) == 1
    assert sorted(k for k in store.gets if k.startswith(MARKERS_PREFIX)) == [
        f"{MARKERS_PREFIX}{n:032x}.json" for n in (50, 51, 52)
    ]
    # A second scan lists again but reads nothing it read before.
    store.gets.clear()
    assert pending.scan()
    assert [k for k in store.gets if k.startswith(MARKERS_PREFIX)] == []
    assert [u.id for u in pending.list()] and {u.id for u in pending.list()} == {f"{n:032x}" for n in (50, 51, 52)}
    # A marker of an upload this process accepted is never read: the process holds its message.
    write_marker(store, message(53))
    pending.note(message(53))
    store.gets.clear()
    assert pending.scan()
    assert [k for k in store.gets if k.startswith(MARKERS_PREFIX)] == []
    assert f"{53:032x}" in {u.id for u in pending.list()}
