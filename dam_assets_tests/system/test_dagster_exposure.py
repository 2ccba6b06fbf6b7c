"""The Dagster UI has no authentication: `dam dev` keeps it on loopback whatever `--host` says,
refuses to expose it without an explicit acknowledgement, answers only loopback `Host` headers
(DNS rebinding), and never greets a user with the community/newsletter dialog (nux off)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster_webserver.cli as webserver_cli
import httpx
import psutil
import pytest
import yaml
from dagster import DagsterInstance
from dagster._config import Shape, validate_config
from dagster._core.instance.config import dagster_instance_config_schema
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from dam_assets_tests.conftest import free_port
from dam_assets_tests.processes import wait_http
from dam_cli.dagster_ui import ALLOWED_HOSTS_ENV, HostCheck, _hooks_fit, allowed_hosts
from dam_cli.dev import dagster_env

REPO = Path(__file__).resolve().parents[2]
DAM = str(Path(sys.executable).parent / "dam")


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_", "DAGSTER_")) and k != "AMQP_URL"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _listening(port: int) -> set[str]:
    """The local addresses with a socket listening on this TCP port."""
    return {
        c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def _graphql(url: str, query: str, host: str | None = None) -> httpx.Response:
    headers = {"Host": host} if host else {}
    return httpx.post(f"{url}/graphql", json={"query": query}, headers=headers, timeout=30)


# ----------------------------------------------------------------------------- the real thing


@pytest.mark.timeout(360)
def test_dam_dev_on_every_interface_keeps_the_dagster_ui_on_loopback(tmp_path):
    api_port, ui_port = free_port(), free_port()
    log_path = tmp_path / "dam-dev.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [DAM, "dev", "--host", "0.0.0.0", "--port", str(api_port), "--dagster-port", str(ui_port)],
            env=_clean_env(DAM_API_KEY="exposure-test-key", DAM_DATA_DIR=tmp_path / "data", HF_HUB_OFFLINE=1),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ui = f"http://127.0.0.1:{ui_port}"
        wait_http(f"http://127.0.0.1:{api_port}/healthz", 60, proc)
        wait_http(f"{ui}/server_info", 240, proc)

        # The API where --host said; the UI on 127.0.0.1 only.
        assert _listening(api_port) == {"0.0.0.0"}
        assert _listening(ui_port) == {"127.0.0.1"}
        said = log_path.read_text()
        assert f"API on http://0.0.0.0:{api_port} (every interface)" in said, said
        assert f"Dagster UI on http://127.0.0.1:{ui_port} (this machine only" in said, said

        # DNS rebinding: a page whose name now resolves to 127.0.0.1 sends its own name as Host.
        for host in (f"rebound.example:{ui_port}", "127.0.0.1.rebound.example", "attacker.test"):
            r = httpx.get(f"{ui}/server_info", headers={"Host": host}, timeout=10)
            assert r.status_code == 400 and "DNS rebinding" in r.text, (host, r.status_code, r.text)
            assert _graphql(ui, "{ version }", host=host).status_code == 400
        for host in (f"localhost:{ui_port}", f"127.0.0.1:{ui_port}", "localhost"):
            assert httpx.get(f"{ui}/server_info", headers={"Host": host}, timeout=10).status_code == 200, host

        # The UI reads shouldShowNux before it opens the community/newsletter dialog: off (dagster.yaml).
        r = _graphql(ui, "{ shouldShowNux }")
        assert r.status_code == 200 and r.json()["data"] == {"shouldShowNux": False}, r.text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: dam dev stops both children
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert "Traceback" not in log_path.read_text()


@pytest.mark.parametrize("dagster_host", ["0.0.0.0", "::", "dagster.example"])
def test_a_dagster_host_beyond_loopback_is_refused_without_an_acknowledgement(tmp_path, dagster_host):
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [DAM, "dev", "--dagster-host", dagster_host, "--port", str(free_port()), "--dagster-port", str(free_port())],
        env=_clean_env(DAM_DATA_DIR=data),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # it started serving: stop it and its children
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"dam dev served the Dagster UI on {dagster_host}: {err[-2000:]}")
    assert proc.returncode == 2, err
    assert f"refusing to serve the Dagster UI on {dagster_host}" in err
    assert "--dagster-behind-auth-proxy" in err and "--dagster-read-only" in err and "Traceback" not in err
    assert not (data / "dagster").exists()  # refused before anything was started or written


# ----------------------------------------------------------------------------- the pieces


def _app_behind_host_check(allowed) -> TestClient:
    async def ok(request):
        return PlainTextResponse("ok")

    async def ws(socket):
        await socket.accept()
        await socket.send_text("hello")
        await socket.close()

    return TestClient(HostCheck(Starlette(routes=[Route("/", ok), WebSocketRoute("/ws", ws)]), allowed))


def test_the_host_check_lets_loopback_names_through_and_nothing_else():
    client = _app_behind_host_check(["127.0.0.1", "localhost", "::1"])
    for host in ("localhost:3000", "LOCALHOST", "localhost.", "127.0.0.1", "127.0.0.1:3000", "[::1]:3000", "[::1]"):
        r = client.get("/", headers={"Host": host})
        assert r.status_code == 200 and r.text == "ok", host
    for host in (
        "evil.example",
        "evil.example:3000",
        "localhost.evil.example",
        "127.0.0.1.nip.io:3000",
        "[::2]:3000",
        "",
    ):
        r = client.get("/", headers={"Host": host})
        assert r.status_code == 400 and "not served here" in r.text, host

    with client.websocket_connect("/ws", headers={"Host": "localhost:3000"}) as socket:
        assert socket.receive_text() == "hello"
    with pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect("/ws", headers={"Host": "evil.example:3000"}) as socket:
            socket.receive_text()
    assert closed.value.code == 1008


def test_the_environment_of_dagster_dev(monkeypatch):
    base = {"PATH": "/bin", ALLOWED_HOSTS_ENV: "stale", "DAGSTER_WEBSERVER_READ_ONLY": "true"}
    on_loopback = dagster_env(base, "127.0.0.1", read_only=False)
    assert allowed_hosts(on_loopback) == ["127.0.0.1", "localhost", "::1"]
    assert "DAGSTER_WEBSERVER_READ_ONLY" not in on_loopback
    assert allowed_hosts(dagster_env(base, "localhost", read_only=False)) == ["127.0.0.1", "localhost", "::1"]
    assert allowed_hosts(dagster_env(base, "127.0.0.2", read_only=False))[-1] == "127.0.0.2"
    exposed = dagster_env(base, "0.0.0.0", read_only=True)
    assert allowed_hosts(exposed) is None  # exposed on purpose: the proxy in front checks Host
    assert exposed["DAGSTER_WEBSERVER_READ_ONLY"] == "true"

    # dagster-webserver (started by `dagster dev` with our environment) turns it into --read-only.
    def read_only() -> bool:
        ctx = webserver_cli.dagster_webserver.make_context(
            "dagster-webserver", ["-w", str(REPO / "workspace.yaml")], auto_envvar_prefix="DAGSTER_WEBSERVER"
        )
        return ctx.params["read_only"]

    monkeypatch.delenv("DAGSTER_WEBSERVER_READ_ONLY", raising=False)
    assert read_only() is False
    monkeypatch.setenv("DAGSTER_WEBSERVER_READ_ONLY", exposed["DAGSTER_WEBSERVER_READ_ONLY"])
    assert read_only() is True


def test_the_installed_dagster_takes_the_webserver_hooks():
    # dam dev refuses to start the UI unguarded when a Dagster upgrade moves either hook.
    assert _hooks_fit() is None


# ----------------------------------------------------------------------------- no community dialog


@pytest.mark.parametrize("name", ["dagster.yaml", "dagster.prod.yaml"])
def test_the_community_dialog_is_off_in_both_instance_configs(name):
    config = yaml.safe_load((REPO / name).read_text())
    assert config["nux"] == {"enabled": False}
    schema = dagster_instance_config_schema()
    assert validate_config(Shape({"nux": schema["nux"]}), {"nux": config["nux"]}).success


def test_the_local_instance_has_nux_disabled(tmp_path, monkeypatch):
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:
        assert instance.nux_enabled is False
