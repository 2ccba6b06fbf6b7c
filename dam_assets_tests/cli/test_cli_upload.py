"""`dam upload` against `dam api`, both real processes talking HTTP on the embedded default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import APIRouter

from dam_assets_tests.conftest import free_port, jpeg_bytes, png_bytes
from dam_assets_tests.faults.server import serve
from dam_assets_tests.processes import stop
from dam_core.queue import EmbeddedQueue
from dam_core.store import LocalStore
from dam_ingest_api import main

REPO_ROOT = Path(__file__).resolve().parents[2]
DAM = str(Path(sys.executable).parent / "dam")


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_")) and k != "AMQP_URL"}
    env.update(extra)
    return env


@pytest.fixture
def api(tmp_path):
    """`dam api --port P` as a subprocess on a fresh data folder; stopped by pid afterwards."""
    port = free_port()
    data_dir = tmp_path / "data"
    log = open(tmp_path / "api.log", "w+b")
    proc = subprocess.Popen(
        [DAM, "api", "--port", str(port), "--log-level", "warning"],
        env=_clean_env(DAM_DATA_DIR=str(data_dir)),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"dam api exited with {proc.returncode}: {log.read().decode(errors='replace')}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("dam api did not answer /healthz within 60 s")
            time.sleep(0.1)
        yield url, data_dir
    finally:
        stop(proc)
        log.close()


@pytest.mark.system
def test_dam_upload_a_folder(api, tmp_path):
    url, data_dir = api
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    images = {
        "a.jpg": jpeg_bytes(120, 90, seed=1),
        "b.jpg": jpeg_bytes(120, 90, seed=2),
        "c.png": png_bytes(30, 30),
        "nested/d.jpeg": jpeg_bytes(60, 90, seed=4),
        "nested/e.JPG": jpeg_bytes(90, 60, seed=5),
    }
    for name, data in images.items():
        (folder / name).write_bytes(data)
    (folder / "fake.jpg").write_text("this is a text file wearing a .jpg name\n" * 5)
    (folder / "readme.txt").write_text("not an image suffix: never sent")

    proc = subprocess.run(
        [DAM, "upload", str(folder), "--url", url, "--quiet", "--json"],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    out = json.loads(proc.stdout)
    assert len(out["uploaded"]) == 5
    assert sorted(Path(u["path"]).relative_to(folder).as_posix() for u in out["uploaded"]) == sorted(images)
    assert all(u["status"] == "queued" for u in out["uploaded"])
    assert len(out["failed"]) == 1
    failure = out["failed"][0]
    assert Path(failure["path"]).name == "fake.jpg"
    assert failure["error"].startswith("415")

    # The API kept exactly the five originals, byte for byte, and queued five messages.
    store = LocalStore(data_dir / "store")
    for u in out["uploaded"]:
        rel = Path(u["path"]).relative_to(folder).as_posix()
        assert store.get(u["r2_key"]) == images[rel]
    assert len(list(store.list("assets/"))) == 5
    assert EmbeddedQueue(data_dir / "queue", "uploads").depth() == 5


@pytest.mark.system
def test_dam_upload_only_good_files_exits_0(api, tmp_path):
    url, _ = api
    f = tmp_path / "one.jpg"
    f.write_bytes(jpeg_bytes(50, 50, seed=8))
    proc = subprocess.run(
        [DAM, "upload", str(f), "--url", url, "--quiet"], env=_clean_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "uploaded 1 of 1" in proc.stdout


@pytest.mark.system
def test_dam_upload_nothing_to_upload(tmp_path):
    proc = subprocess.run(
        [DAM, "upload", str(tmp_path / "missing"), "--url", "http://127.0.0.1:9", "--quiet"],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "nothing to upload" in proc.stderr


def _requests(url: str, handler: str) -> float:
    """POST requests the API answered on this route so far, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("http_requests_total{") and f'handler="{handler}"' in line and 'method="POST"' in line
    )


def _dam_upload(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DAM, "upload", *args, "--url", url, "--quiet"], env=_clean_env(), capture_output=True, text=True, timeout=120
    )


@pytest.mark.system
def test_a_second_upload_of_a_folder_sends_nothing_and_counts_what_is_present(api, tmp_path):
    url, _ = api
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(80, 60, seed=20 + i))

    first = _dam_upload(url, str(folder), "--json")
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert len(out["uploaded"]) == 3 and out["already_present"] == [] and out["failed"] == []
    sent = _requests(url, "/upload")
    assert sent == 3
    # A copy made after the upload: the same bytes under another name are present already.
    (folder / "copy.jpg").write_bytes((folder / "0.jpg").read_bytes())

    second = _dam_upload(url, str(folder))
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "uploaded 0 of 4 file(s), already present 4"
    assert _requests(url, "/upload") == sent  # not one file sent
    assert _requests(url, "/assets/check") == 2  # one batch of digests per run

    again = json.loads(_dam_upload(url, str(folder), "--json").stdout)
    assert again["uploaded"] == [] and again["failed"] == []
    assert sorted(Path(p["path"]).name for p in again["already_present"]) == ["0.jpg", "1.jpg", "2.jpg", "copy.jpg"]
    assert {p["status"] for p in again["already_present"]} == {"queued"}

    # A deleted asset is sent again: uploading it after the delete makes it anew.
    deleted = next(p for p in again["already_present"] if Path(p["path"]).name == "1.jpg")
    assert httpx.delete(f"{url}/assets/{deleted['id']}", timeout=10).status_code == 200
    third = _dam_upload(url, str(folder))
    assert third.returncode == 0, third.stderr
    assert third.stdout.strip() == "uploaded 1 of 4 file(s), already present 3"
    assert _requests(url, "/upload") == sent + 1


@pytest.mark.system
def test_an_api_without_the_check_route_is_sent_every_file(make_settings, tmp_path, monkeypatch):
    # The API as it was before POST /assets/check: the same app, that route's router left empty.
    monkeypatch.setattr(main, "check", SimpleNamespace(router=APIRouter()))
    app = main.create_app(make_settings())
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(80, 60, seed=30 + i))
    with serve(app) as url:
        assert httpx.post(f"{url}/assets/check", json={"sha256": []}).status_code == 405
        first = _dam_upload(url, str(folder))
        assert first.stdout.strip() == "uploaded 2 of 2 file(s), already present 0", first.stderr
        second = _dam_upload(url, str(folder))
        assert second.returncode == 0, second.stderr
        # Sent again, and answered as duplicates by the upload route itself.
        assert second.stdout.strip() == "uploaded 0 of 2 file(s), already present 2"
        assert "could not ask" not in second.stderr  # an older API is no error
