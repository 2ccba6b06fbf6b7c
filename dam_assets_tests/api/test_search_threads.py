"""torch's thread count belongs to the process: the API decides it once at start-up (one intra-op
thread for its few-token queries) without importing torch, and a text search itself never
changes it (the Catalog also serves `dam search` and runs in processes that embed images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from dagster import materialize
from fastapi.testclient import TestClient

from dam_assets.search.assets import search_index
from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.pipeline_harness import resources, run_pending
from dam_core.store import make_store
from dam_ingest_api.catalog import Catalog
from dam_ingest_api.main import create_app

# The API in a fresh process: torch must not be loaded by start-up, and once the first search
# loads it, it runs on the one thread decided at start-up (OMP_NUM_THREADS=3 makes the default 3).
API_PROCESS = """
import json, sys
from fastapi.testclient import TestClient
from dam_ingest_api.main import create_app

with TestClient(create_app()) as client:
    assert client.get("/assets").status_code == 200 and client.get("/readyz").status_code == 200
    torch_at_start = "torch" in sys.modules
    hits = client.get("/search", params={"q": "a red photo"}).json()["items"]
    import torch

    print(json.dumps({"torch_at_start": torch_at_start, "hits": len(hits), "threads": torch.get_num_threads()}))
"""


def threads_of_a_new_thread() -> int:
    """torch's intra-op count as a thread that has not used torch yet (a request thread) gets it."""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


@pytest.mark.system
def test_search_leaves_torch_threads_alone_and_the_api_sets_one_at_start_up(make_settings, tiny_models, instance):
    env = make_settings(**tiny_models)
    client = TestClient(create_app(env))
    for seed in (1, 2):
        data = jpeg_bytes(64, 48, (40 * seed, 90, 200 - 40 * seed), seed=seed)
        assert client.post("/upload", files={"file": (f"{seed}.jpg", data, "image/jpeg")}).status_code == 202
    run_pending(instance)
    materialize([search_index], instance=instance, resources=resources())

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        # Not the API: a search loads the text encoder and leaves the count as the process set it.
        assert len(Catalog(env, make_store(env)).search_text("a red photo", 2)) == 2
        assert torch.get_num_threads() == 3 == threads_of_a_new_thread()
        # The API: decided at start-up, before any request (its requests run on other threads).
        with TestClient(create_app(env)) as api:
            assert threads_of_a_new_thread() == 1
            assert len(api.get("/search", params={"q": "a red photo"}).json()["items"]) == 2
            assert threads_of_a_new_thread() == 1
    finally:
        torch.set_num_threads(before)

    proc = subprocess.run(
        [sys.executable, "-c", API_PROCESS],
        env={**os.environ, "OMP_NUM_THREADS": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"torch_at_start": False, "hits": 2, "threads": 1}
