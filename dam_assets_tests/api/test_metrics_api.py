"""GET /metrics of a real `dam api` (one process, and two workers summed through PROMETHEUS_MULTIPROC_DIR):
uploads accepted and refused by reason, requests by route template and status, the index gauges, the
API key on the scrape; and DAM_METRICS=0 turning it all off."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

import dam_assets.metrics
import dam_ingest_api.metrics
from dam_assets_tests.conftest import free_port, jpeg_bytes
from dam_assets_tests.processes import start_dam_api, stop
from dam_core.images import ImageRejected
from dam_core.index.manifest import publish
from dam_core.store import LocalStore
from dam_ingest_api import metrics
from dam_ingest_api.main import create_app
from dam_ingest_api.metrics import REJECT_REASONS, image_reason
from dam_ingest_api.request_metrics import RequestMetrics

KEY = "metrics-test-key"
MAX_UPLOAD = 300_000


def scrape(url: str, **headers) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    r = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def api(tmp_path):
    """`dam api` with an API key and a small upload limit, on the embedded store and queue; yields a starter."""
    procs = []

    def start(*args: str, **extra) -> tuple[str, Path]:
        data_dir = tmp_path / "data"
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_", "PROMETHEUS_")) and k != "AMQP_URL"
        }
        env.update(DAM_DATA_DIR=str(data_dir), DAM_API_KEY=KEY, DAM_MAX_UPLOAD_BYTES=str(MAX_UPLOAD), **extra)
        proc, url, log = start_dam_api(env, tmp_path, tmp_path / "api.log", *args, port=free_port())
        procs.append((proc, log))
        return url, data_dir

    yield start
    for proc, log in procs:
        stop(proc)
        log.close()


def publish_empty_index(data_dir: Path) -> float:
    """A first index version (no rows) in the API's store, as the pipeline would publish; its time."""
    manifest = publish(LocalStore(data_dir / "store"), lambda m: m)
    return manifest.built_at.timestamp()


def post(url: str, files: list[tuple[str, bytes]], key: str | None = KEY) -> int:
    # A new connection per request: with several workers the kernel spreads them over the workers.
    parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
    headers = {"X-API-Key": key} if key else {}
    with httpx.Client(timeout=30) as client:
        return client.post(f"{url}/upload", files=parts, headers=headers).status_code


@pytest.mark.system
@pytest.mark.parametrize("workers", [1, 2])
def test_upload_counts_and_requests_by_route(api, tmp_path, workers):
    extra = {}
    if workers > 1:  # a folder of our own, to see that both workers wrote to it and that a stale file is cleared
        mp_dir = tmp_path / "prom"
        mp_dir.mkdir()
        (mp_dir / "counter_1.db").write_bytes(b"left by an earlier server")
        extra["PROMETHEUS_MULTIPROC_DIR"] = str(mp_dir)
    data_dir = tmp_path / "data"
    built = publish_empty_index(data_dir)
    url, _ = api(*(["--workers", str(workers)] if workers > 1 else []), **extra)

    good = [jpeg_bytes(64, 48, seed=i) for i in range(6)]
    statuses = [post(url, [(f"g{i}.jpg", data)]) for i, data in enumerate(good)]
    assert statuses == [202] * 6
    assert post(url, [("again.jpg", good[0])]) == 200  # a duplicate
    assert post(url, [("notes.txt", b"not an image at all")]) == 415
    assert post(url, [("notes2.txt", b"still not an image")]) == 415
    assert post(url, [("empty.jpg", b"")]) == 400
    assert post(url, [("cut.jpg", good[1][: len(good[1]) // 2])]) == 422  # truncated
    assert post(url, [("big.jpg", b"\xff\xd8" + b"0" * (MAX_UPLOAD + 10))]) == 413
    assert post(url, [("g.jpg", jpeg_bytes(64, 48, seed=99))], key=None) == 401
    # One request, three files: two stored, one refused; each file counts once.
    mixed = [("m1.jpg", jpeg_bytes(64, 48, seed=101)), ("m2.jpg", jpeg_bytes(64, 48, seed=102)), ("m.txt", b"text")]
    assert post(url, mixed) == 202
    for _ in range(3):
        assert httpx.get(f"{url}/assets/{'ab' * 16}", headers={"X-API-Key": KEY}).status_code == 404

    assert httpx.get(f"{url}/metrics").status_code == 401  # the key is needed, as on every route
    m = scrape(url, Authorization=f"Bearer {KEY}")  # what Prometheus's `authorization` setting sends

    assert value(m, "dam_uploads_accepted_total") == 8
    assert value(m, "dam_uploads_duplicate_total") == 1
    rejected = {
        r: value(m, "dam_uploads_rejected_total", reason=r)
        for r in ("not_an_image", "empty", "corrupt", "too_large", "unauthorized", "bomb", "store_unavailable")
    }
    assert rejected == {
        "not_an_image": 3,
        "empty": 1,
        "corrupt": 1,
        "too_large": 1,
        "unauthorized": 1,
        "bomb": 0,
        "store_unavailable": 0,
    }
    received = (
        sum(len(d) for d in good)
        + len(good[0])
        + len(b"not an image at all")
        + len(b"still not an image")
        + len(good[1]) // 2
        + sum(len(d) for _, d in mixed)
    )
    assert value(m, "dam_upload_bytes_total") == received  # files read to the end (not the 413 or 401)

    def requests(handler, status, method="POST"):
        return value(m, "http_requests_total", method=method, handler=handler, status=str(status)) or 0

    assert [requests("/upload", s) for s in (202, 200, 415, 400, 422, 413, 401)] == [7, 1, 2, 1, 1, 1, 1]
    assert requests("/assets/{asset_id}", 404, "GET") == 3  # the route template, never the id
    assert not any(n == "http_requests_total" and "abab" in str(labels) for n, labels in m)
    assert value(m, "http_request_duration_seconds_count", method="POST", handler="/upload") == 14
    assert value(m, "dam_store_put_duration_seconds_count") == 9  # one create per distinct image read
    assert value(m, "dam_publish_duration_seconds_count") == 8
    assert value(m, "dam_uploads_in_flight") == 0
    assert value(m, "dam_marker_backlog") is not None

    # Every worker loaded the index at start: the newest version served, and its age.
    assert value(m, "dam_search_index_version") == 1
    assert value(m, "dam_search_index_built_timestamp_seconds") == pytest.approx(built, abs=1e-3)
    assert 0 <= value(m, "dam_search_index_age_seconds") < time.time() - built + 5

    if workers > 1:
        files = sorted(mp_dir.glob("counter_*.db"))
        assert mp_dir / "counter_1.db" not in files, "the stale file was not cleared at start"
        served = {  # requests each process answered, from its own file
            f.name: sum(
                s.value
                for fam in MultiProcessCollector.merge([str(f)])
                if fam.name == "http_requests"
                for s in fam.samples
                if s.name == "http_requests_total"
            )
            for f in files
        }
        assert sum(1 for n in served.values() if n) == 2, f"both workers should have answered: {served}"


def test_metrics_off(make_settings):
    """DAM_METRICS=0: no /metrics route, no middleware, and recording calls do nothing."""
    try:
        app = create_app(make_settings(DAM_METRICS="0"))
        assert not any(m.cls is RequestMetrics for m in app.user_middleware)
        with TestClient(app) as client:
            assert client.get("/metrics").status_code == 404
            before = metrics.UPLOADS_ACCEPTED._value.get()
            assert (
                client.post("/upload", files={"file": ("a.jpg", jpeg_bytes(32, 32, seed=5), "image/jpeg")}).status_code
                == 202
            )
            assert metrics.UPLOADS_ACCEPTED._value.get() == before
    finally:
        metrics.configure(True)


def test_reasons_from_image_errors():
    cases = {
        (400, "the file is empty"): "empty",
        (415, "not a supported image: expected JPEG"): "not_an_image",
        (422, "decompression bomb: the image declares too many pixels"): "bomb",
        (422, "image is 9000x9000 pixels, over the limit of 100 pixels"): "over_limit",
        (422, "image has 5000 frames, over the limit of 1000"): "over_limit",
        (422, "truncated or corrupt image: image file is truncated"): "corrupt",
    }
    for (status, message), reason in cases.items():
        assert image_reason(ImageRejected(status, message)) == reason
        assert reason in REJECT_REASONS


def test_docs_and_dashboard_name_real_metrics():
    """docs/metrics.md lists every metric of both modules; the Grafana dashboard queries only those."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    ours = {  # counters without `_total`: the registry knows both spellings
        name.removesuffix("_total")
        for name in REGISTRY._names_to_collectors
        if name.startswith(("dam_", "http_")) and not name.endswith(("_bucket", "_count", "_sum", "_created"))
    }
    ours.add(dam_ingest_api.metrics.INDEX_AGE_NAME)  # computed at scrape time
    listed = {
        n.removesuffix("_total")
        for n in re.findall(r"^\| `((?:dam|http)_\w+)`", (docs / "metrics.md").read_text(), re.M)
    }
    assert ours - listed == set(), "metrics missing from docs/metrics.md"
    assert listed - ours == set(), "docs/metrics.md names metrics that do not exist"

    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count|total)$", "", n) for e in exprs for n in re.findall(r"\b(?:dam|http)_\w+", e)}
    assert used <= ours, used - ours
    assert dam_assets.metrics.STAGES  # imported for its metrics
