"""The gallery's upload on the S3 store: Uppy's `@uppy/aws-s3` in a real headless Chromium.

The real `dam api` process on moto's S3 server behind the strict front (SigV4 and expiry checked,
and the bucket CORS rule of docs/http-api.md answered as S3 and R2 do), the real RabbitMQ, the
vendored Uppy bundle: the bytes go from the browser to the bucket, never through the API, then the
real pipeline (tiny models, then the search index the API reads) turns them into rows that appear
on the page.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from importlib.util import find_spec

import httpx
import pytest
from fastapi.testclient import TestClient

from dam_assets_tests.conftest import free_port, jpeg_bytes, noise_png
from dam_assets_tests.faults.strict_s3 import preflight_answer, response_cors, strict_s3
from dam_assets_tests.pipeline_harness import resources, run_pending
from dam_assets_tests.processes import start_dam_api, stop
from dam_core.layout import INCOMING_PREFIX
from dam_core.queue import make_queue
from dam_core.store import make_store
from dam_ingest_api.main import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "uppy-test-key"
MiB = 1024 * 1024
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


def bucket_cors(origin: str) -> dict:
    """The R2 CORS rule docs/http-api.md gives, for the page's origin."""
    return {
        "AllowedOrigins": [origin],
        "AllowedMethods": ["PUT"],
        "AllowedHeaders": [
            "content-type",
            "x-amz-checksum-sha256",
            "if-none-match",
            "x-amz-meta-sha256",
            "x-amz-meta-size",
            "x-amz-meta-filename",
        ],
        "ExposeHeaders": ["ETag"],
        "MaxAgeSeconds": 3600,
    }


def requests_counted(metrics: str) -> dict[tuple[str, str, str], float]:
    """http_requests_total by (method, handler, status) from /metrics."""
    counted = {}
    for line in metrics.splitlines():
        m = re.match(r"http_requests_total\{(.*)\} (\S+)$", line)  # route templates have braces
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            counted[(labels["method"], labels["handler"], labels["status"])] = float(m.group(2))
    return counted


@pytest.mark.system
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.skipif(find_spec("playwright") is None, reason="the playwright package is not installed")
def test_uppy_uploads_straight_to_the_bucket_and_the_rows_appear(
    make_settings, s3_env, moto_endpoint, rabbit_url, queue_name, tiny_models, tmp_path
):
    from dagster import DagsterInstance, materialize  # the pipeline half only
    from playwright import sync_api  # a browser test's own: the fast test below needs none

    from dam_assets.search.assets import search_index

    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    small = jpeg_bytes(320, 200, seed=11)
    big = noise_png(6 * MiB)  # over 5 MiB: the page sends it in parts (two)
    (tmp_path / "small.jpg").write_bytes(small)
    (tmp_path / "big.png").write_bytes(big)
    ids = {name: hashlib.sha256(data).hexdigest()[:32] for name, data in (("small.jpg", small), ("big.png", big))}

    with strict_s3(moto_endpoint, cors=bucket_cors(origin), r2_upload_ids=True) as front:
        settings = make_settings(
            **{**s3_env, "R2_ENDPOINT": front},
            AMQP_URL=rabbit_url,
            DAM_QUEUE=queue_name,
            DAM_API_KEY=KEY,
            DAM_INDEX_POLL_SECONDS="0.5",
            **tiny_models,
        )
        proc, base, log = start_dam_api(dict(os.environ), tmp_path, tmp_path / "api.log", port=port)
        try:
            page_answer = httpx.get(f"{base}/")
            assert '<meta name="dam-upload" content="direct">' in page_answer.text
            assert f"connect-src 'self' {front};" in page_answer.headers["content-security-policy"]

            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    context = browser.new_context()
                    context.add_init_script(f"localStorage.setItem('dam.apiKey', {KEY!r})")
                    page = context.new_page()
                    errors: list[str] = []
                    sent: list[tuple[str, str]] = []
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
                    page.on("request", lambda r: sent.append((r.method, r.url)))
                    page.goto(base + "/")
                    sync_api.expect(page.locator('[data-testid="empty"]')).to_be_visible(timeout=15_000)

                    page.set_input_files(
                        '[data-testid="file-input"]', [str(tmp_path / "small.jpg"), str(tmp_path / "big.png")]
                    )
                    page.wait_for_function(
                        "() => document.querySelectorAll('[data-testid=upload-row][data-state]').length === 2",
                        timeout=60_000,
                    )
                    rows = page.locator('[data-testid="upload-row"]').all_inner_texts()
                    assert page.locator('[data-testid="upload-row"][data-state="done"]').count() == 2, rows
                    assert page.evaluate("typeof window.Uppy.Uppy") == "function"  # the vendored bundle did it

                    # The bytes went to the bucket, the API signed and completed: the small file (its
                    # type and SHA-256 declared by the page) in one PUT to its original's own key, the
                    # big one in two parts to a staging key.
                    to_bucket = [(m, u.split("?")[0]) for m, u in sent if u.startswith(front)]
                    puts = [u for m, u in to_bucket if m == "PUT"]
                    bucket = f"{front}/{s3_env['R2_BUCKET']}"
                    assert puts.count(f"{bucket}/assets/{ids['small.jpg']}.jpg") == 1, puts
                    assert len(puts) == 3 and sum(u.startswith(f"{bucket}/incoming/") for u in puts) == 2
                    assert len(to_bucket) == 3, to_bucket  # nothing else: preflights are not requests here
                    to_api = [(m, u.removeprefix(base).split("?")[0]) for m, u in sent if u.startswith(base)]
                    assert ("POST", "/upload") not in to_api
                    assert to_api.count(("GET", "/s3/params")) == 1 and to_api.count(("POST", "/s3/complete")) == 1
                    assert to_api.count(("POST", "/s3/multipart")) == 1
                    assert sum(1 for m, u in to_api if m == "POST" and u.endswith("/complete")) == 2

                    # The originals are at their content keys, staging is empty, one message per file.
                    store = make_store(settings)
                    assert store.get(f"assets/{ids['small.jpg']}.jpg") == small
                    assert hashlib.sha256(store.get(f"assets/{ids['big.png']}.png")).hexdigest()[:32] == ids["big.png"]
                    assert list(store.list(INCOMING_PREFIX)) == []
                    assert make_queue(settings).depth() == 2

                    # The API itself saw no POST /upload, and answered both completions 202.
                    counted = requests_counted(httpx.get(f"{base}/metrics", headers={"X-API-Key": KEY}).text)
                    assert not [k for k in counted if k[1] == "/upload"], counted
                    assert counted.get(("POST", "/s3/complete", "202")) == 1
                    assert counted.get(("POST", "/s3/multipart/{uploadId}/complete", "202")) == 1

                    # The cards: queued now, processed once the pipeline has run (the page polls).
                    cards = page.locator('[data-testid="gallery"] [data-testid="card"]')
                    sync_api.expect(cards).to_have_count(2, timeout=15_000)
                    with DagsterInstance.ephemeral() as instance:
                        batches, _ = run_pending(instance)
                        assert batches
                        materialize([search_index], instance=instance, resources=resources())
                    processed = page.locator('[data-testid="gallery"] [data-testid="card"][data-status="processed"]')
                    sync_api.expect(processed).to_have_count(2, timeout=30_000)
                    assert {c.get_attribute("data-id") for c in processed.all()} == set(ids.values())
                    names = page.locator('[data-testid="gallery"] .card .name').all_inner_texts()
                    assert sorted(names) == ["big.png", "small.jpg"]
                    assert not errors, errors

                    # The same small file again: the create-only PUT finds it stored (412), and the
                    # completion answers it as a duplicate; nothing more is queued.
                    (tmp_path / "again.jpg").write_bytes(small)
                    page.set_input_files('[data-testid="file-input"]', [str(tmp_path / "again.jpg")])

                    def duplicates_answered() -> float:
                        metrics = httpx.get(f"{base}/metrics", headers={"X-API-Key": KEY}).text
                        return requests_counted(metrics).get(("POST", "/s3/complete", "200"), 0)

                    deadline = time.monotonic() + 60
                    while duplicates_answered() < 1:
                        assert time.monotonic() < deadline, (errors, sent[-5:])
                        time.sleep(0.2)
                    assert [e for e in errors if "412" not in e] == [], errors
                    assert make_queue(settings).depth() == 0  # the pipeline drained the first two

                finally:
                    browser.close()
        finally:
            stop(proc)
            log.close()


def test_the_page_keeps_the_form_upload_on_the_local_store(make_settings):
    """No bucket to sign for: no Uppy, `connect-src 'self'` only; the vendored bundle is served as is."""
    client = TestClient(create_app(make_settings()))
    page = client.get("/")
    assert page.status_code == 200 and '<meta name="dam-upload" content="form">' in page.text
    assert "connect-src 'self';" in page.headers["content-security-policy"]
    bundle = client.get("/static/vendor/uppy/uppy.min.js")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    assert len(bundle.content) > 100_000 and b"globalThis.Uppy" in bundle.content
    for path in ("/static/vendor/other/uppy.min.js", "/static/vendor/uppy/LICENSE.txt", "/static/vendor/uppy/x.js"):
        assert client.get(path).status_code == 404, path


def test_the_fronts_cors_rule_answers_as_a_bucket_would():
    """The strict front's CORS (what made the browser's PUTs possible above) refuses what the rule does not name."""
    rule = bucket_cors("http://app.example")
    ask = {"Origin": "http://app.example", "Access-Control-Request-Method": "PUT"}
    allowed = preflight_answer(rule, {**ask, "Access-Control-Request-Headers": "content-type,x-amz-checksum-sha256"})
    assert allowed is not None and allowed["Access-Control-Allow-Origin"] == "http://app.example"
    assert preflight_answer(rule, {**ask, "Origin": "http://elsewhere.example"}) is None
    assert preflight_answer(rule, {**ask, "Access-Control-Request-Method": "DELETE"}) is None
    assert preflight_answer(rule, {**ask, "Access-Control-Request-Headers": "x-api-key"}) is None
    assert preflight_answer(None, ask) is None  # a bucket without a rule
    assert response_cors(rule, "PUT", {"Origin": "http://app.example"})["Access-Control-Expose-Headers"] == "ETag"
    assert response_cors(rule, "PUT", {"Origin": "http://elsewhere.example"}) == {}
