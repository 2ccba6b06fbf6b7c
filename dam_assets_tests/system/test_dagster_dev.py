"""`dam dev` as a user runs it: API + `dagster dev`, the daemon's sensor and runs, then Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dagster import AssetKey, DagsterInstance

from dam_assets_tests.conftest import free_port, jpeg_bytes
from dam_assets_tests.pipeline_harness import dam_sql
from dam_assets_tests.processes import wait_http

REPO = Path(__file__).resolve().parents[2]

GRAPHQL = """
{
  assetNodes { assetKey { path } }
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes { name sensors { name sensorState { status } } }
    }
  }
}
"""


QUIET = (
    "superseded",  # Dagster's notice about `dg dev`
    "Found a dagster instance configuration",  # the repo's dagster.yaml seen from the working folder
    "Checking for new runs for sensor",  # two lines per sensor per tick
    "returned an empty result",
    "No run requests returned",
    "Loading weights",  # transformers' progress bar
    "TracerWarning",  # tracing notes while a model is converted
)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.timeout(420)
def test_dam_dev_runs_the_pipeline_and_stops_on_ctrl_c(tmp_path, tiny_models, make_settings):
    make_settings(**tiny_models, DAM_DATA_DIR=str(tmp_path / "data"))
    env = dict(os.environ)
    api_port, ui_port = free_port(), free_port()
    log = open(tmp_path / "dam-dev.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dam"), "dev", "--port", str(api_port), "--dagster-port", str(ui_port)],
        env=env,
        cwd=str(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{api_port}/healthz", 60, proc)
        wait_http(f"http://127.0.0.1:{ui_port}/server_info", 180, proc)

        # The UI's GraphQL endpoint lists the four assets and the running sensor.
        deadline = time.monotonic() + 120
        while True:
            data = httpx.post(f"http://127.0.0.1:{ui_port}/graphql", json={"query": GRAPHQL}, timeout=30).json()["data"]
            if data["assetNodes"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        keys = {"/".join(n["assetKey"]["path"]) for n in data["assetNodes"]}
        assert {"upload_batch", "image_captions", "image_embeddings", "asset_metadata"} <= keys
        sensors = {
            s["name"]: s["sensorState"]["status"] for r in data["repositoriesOrError"]["nodes"] for s in r["sensors"]
        }
        assert sensors.get("upload_queue_sensor") == "RUNNING"

        # The model server is up once its socket is (it loads and warms the models first; a run that
        # starts before that loads its own, which the metadata check below would catch).
        socket_path = make_settings(**tiny_models, DAM_DATA_DIR=str(tmp_path / "data")).model_server_socket
        deadline = time.monotonic() + 120
        while not socket_path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "dam-dev.log").read_text()[-3000:]
            time.sleep(0.5)

        # Upload over HTTP; the daemon's sensor and a real run turn it into a row.
        r = httpx.post(
            f"http://127.0.0.1:{api_port}/upload", files={"file": ("cat.jpg", jpeg_bytes(400, 300), "image/jpeg")}
        )
        assert r.status_code == 202, r.text
        asset_id = r.json()["id"]
        deadline = time.monotonic() + 240
        found = []
        while time.monotonic() < deadline and not found:
            time.sleep(3)
            proc_sql = dam_sql("SELECT id, caption, error FROM assets", env)
            assert proc_sql.returncode == 0, proc_sql.stderr
            found = json.loads(proc_sql.stdout)
        assert [row["id"] for row in found] == [asset_id], (tmp_path / "dam-dev.log").read_text()[-3000:]
        assert found[0]["error"] is None and found[0]["caption"]

        # The run used the warm models of the model server `dam dev` started, not models of its own.
        with DagsterInstance.from_config(str(tmp_path / "data" / "dagster")) as instance:
            event = instance.get_latest_materialization_event(AssetKey("image_captions"))
        metadata = event.asset_materialization.metadata
        assert "model server" in metadata["runtime"].value, metadata
        assert metadata["model_load_seconds"].value == 0

        # Ctrl-C stops both children and `dam dev` itself.
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0

        # Quiet: no library notices, no per-tick sensor lines, no progress bars; what happened is there.
        out = (tmp_path / "dam-dev.log").read_text()
        for noise in QUIET:
            assert noise not in out, (noise, out[-3000:])
        assert "drained 1 message(s) into 1 batch(es)" in out
        for port in (api_port, ui_port):
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    finally:
        _stop(proc)
        log.close()
