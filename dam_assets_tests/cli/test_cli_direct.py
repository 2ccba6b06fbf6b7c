"""`dam upload` over the direct path: real `dam upload` and `dam api` processes, moto's S3 behind the
strict front (SigV4 and expiry checked as S3 and R2 do: faults/strict_s3.py), the real RabbitMQ.

The front's gate counts the bytes each run PUTs to the bucket, and kills a run mid-upload.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from dam_assets_tests.cli.test_cli_upload import DAM, _clean_env, _requests
from dam_assets_tests.conftest import free_port, jpeg_bytes, noise_png
from dam_assets_tests.faults.strict_s3 import strict_s3
from dam_assets_tests.processes import start_dam_api, stop
from dam_core.queue import make_queue
from dam_core.store import make_store

MiB = 1024 * 1024


class Bucket:
    """What clients PUT through presigned URLs. Once `parts_before_signal` parts are stored, the next
    part to arrive sends `signal` to `victim`: SIGKILL drops that part and all after it (lost with the
    process), SIGINT (Ctrl-C) lets the ones in flight through."""

    def __init__(self):
        self.lock = threading.Lock()
        self.puts: list[tuple[str, int]] = []  # (path, bytes) of each presigned PUT forwarded
        self.parts_before_signal: int | None = None
        self.signal = signal.SIGKILL
        self.victim: subprocess.Popen | None = None

    def gate(self, method: str, path: str, body: bytes) -> bool:
        with self.lock:
            if method != "PUT":
                return True
            if self.parts_before_signal is not None and "partNumber=" in path:
                if sum("partNumber=" in p for p, _ in self.puts) >= self.parts_before_signal:
                    if self.victim is not None and self.victim.poll() is None:
                        os.kill(self.victim.pid, self.signal)
                        self.victim = None  # once
                    if self.signal == signal.SIGKILL:
                        return False
            self.puts.append((path, len(body)))
            return True

    def start(self, *argv: str, parts_before_signal: int, sig: signal.Signals) -> subprocess.Popen:
        """A `dam upload` process that gets `sig` once that many parts are stored."""
        with self.lock:
            self.parts_before_signal, self.signal = parts_before_signal, sig
            self.victim = subprocess.Popen([DAM, "upload", *argv], env=_clean_env(), stdout=subprocess.DEVNULL)
            return self.victim

    def sent(self) -> int:
        with self.lock:
            return sum(n for _, n in self.puts)

    def reset(self) -> None:
        with self.lock:
            self.puts.clear()
            self.parts_before_signal = None
            self.victim = None


@pytest.fixture
def bucket():
    return Bucket()


@pytest.fixture
def s3_api(tmp_path, moto_endpoint, s3_env, rabbit_url, queue_name, bucket, make_settings):
    """`dam api` on the S3 store (through the strict front) and RabbitMQ; (url, settings to read what it wrote)."""
    env = {**s3_env, "AMQP_URL": rabbit_url, "DAM_QUEUE": queue_name, "DAM_MAX_UPLOAD_BYTES": str(64 * MiB)}
    with strict_s3(moto_endpoint, gate=bucket.gate, r2_upload_ids=True) as front:
        proc, url, log = start_dam_api(
            _clean_env(**{**env, "R2_ENDPOINT": front}, DAM_DATA_DIR=str(tmp_path / "data")),
            tmp_path,
            tmp_path / "api.log",
            port=free_port(),
        )
        try:
            yield url, make_settings(**env)
        finally:
            stop(proc)
            log.close()


def stored_parts(url: str, state: dict, expected: int) -> list[dict]:
    """The parts the store lists, once the `expected` forwarded before the kill have landed."""
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(
            f"{url}/s3/multipart/{quote(state['upload_id'], safe='')}", params={"key": state["key"]}, timeout=10
        )
        assert r.status_code == 200, r.text
        if len(r.json()) >= expected or time.monotonic() > deadline:
            return r.json()
        time.sleep(0.1)


def dam_upload(url: str, state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DAM, "upload", *args, "--url", url, "--quiet", "--state-dir", str(state_dir)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.system
def test_a_folder_goes_straight_to_the_bucket(s3_api, bucket, tmp_path):
    url, settings = s3_api
    folder = tmp_path / "photos"
    folder.mkdir()
    images = {f"{i}.jpg": jpeg_bytes(120, 90, seed=40 + i) for i in range(3)}
    images["large.png"] = noise_png(9 * MiB)  # over 8 MiB: two parts
    for name, data in images.items():
        (folder / name).write_bytes(data)
    state_dir = tmp_path / "state"

    first = dam_upload(url, state_dir, str(folder), "--json")
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["already_present"] == [] and out["failed"] == []
    assert sorted(Path(u["path"]).name for u in out["uploaded"]) == sorted(images)
    assert {u["status"] for u in out["uploaded"]} == {"queued"}
    # Every byte went to the bucket, none through the API; one message per file.
    assert _requests(url, "/upload") == 0
    assert _requests(url, "/s3/complete") == 3 and _requests(url, "/s3/multipart/{uploadId}/complete") == 1
    assert bucket.sent() == sum(len(d) for d in images.values())
    assert sum("partNumber=" in p for p, _ in bucket.puts) == 2
    store = make_store(settings)
    for u in out["uploaded"]:
        assert store.get(u["r2_key"]) == images[Path(u["path"]).name]
    assert make_queue(settings).depth() == 4
    assert list(state_dir.glob("*")) == []  # nothing left to resume

    again = dam_upload(url, state_dir, str(folder))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "uploaded 0 of 4 file(s), already present 4"

    # --no-direct: through POST /upload, as with the local-folder store.
    (folder / "new.jpg").write_bytes(jpeg_bytes(80, 80, seed=50))
    forced = dam_upload(url, state_dir, str(folder / "new.jpg"), "--no-direct")
    assert forced.stdout.strip() == "uploaded 1 of 1 file(s), already present 0", forced.stderr
    assert _requests(url, "/upload") == 1 and make_queue(settings).depth() == 5


def _huge_image(tmp_path):
    """A 36 MiB noise PNG on disk (8 parts of 5 MiB), and a state folder for `dam upload`."""
    data = noise_png(36 * MiB)
    image = tmp_path / "huge.png"
    image.write_bytes(data)
    return data, image, -(-len(data) // (5 * MiB)), tmp_path / "state"


@pytest.mark.system
def test_an_upload_killed_midway_sends_only_the_missing_parts_when_run_again(s3_api, bucket, tmp_path):
    url, settings = s3_api
    data, image, parts, state_dir = _huge_image(tmp_path)

    # Three parts reach the store; the fourth to arrive kills the run (those in flight are lost with it).
    run = bucket.start(
        str(image), "--url", url, "--quiet", "--state-dir", str(state_dir), parts_before_signal=3, sig=signal.SIGKILL
    )
    run.wait(timeout=120)
    assert run.returncode == -signal.SIGKILL
    (saved,) = state_dir.glob("*.json")
    state = json.loads(saved.read_text())
    listed = stored_parts(url, state, expected=3)
    stored = sum(p["Size"] for p in listed)
    assert bucket.sent() == stored and make_queue(settings).depth() == 0

    bucket.reset()
    second = dam_upload(url, state_dir, str(image), "--json")
    assert second.returncode == 0, second.stderr
    (answer,) = json.loads(second.stdout)["uploaded"]
    assert answer["status"] == "queued" and answer["bytes"] == len(data)
    # Only what was missing went the second time: the stored parts were listed, not sent again.
    assert bucket.sent() == len(data) - stored
    assert len(bucket.puts) == parts - 3
    assert make_store(settings).get(answer["r2_key"]) == data
    assert make_queue(settings).depth() == 1
    assert list(state_dir.glob("*")) == []


@pytest.mark.system
def test_ctrl_c_stops_beginning_parts_and_the_next_run_resumes(s3_api, bucket, tmp_path):
    url, settings = s3_api
    data, image, parts, state_dir = _huge_image(tmp_path)
    run = bucket.start(
        str(image), "--url", url, "--quiet", "--state-dir", str(state_dir), parts_before_signal=2, sig=signal.SIGINT
    )
    run.wait(timeout=120)
    assert run.returncode == 130  # after the PUTs in flight ended: no part after them was begun
    (saved,) = state_dir.glob("*.json")
    state = json.loads(saved.read_text())
    listed = stored_parts(url, state, expected=0)
    assert 2 < len(listed) < parts and bucket.sent() == sum(p["Size"] for p in listed)

    stored = bucket.sent()
    bucket.reset()
    again = dam_upload(url, state_dir, str(image))
    assert again.stdout.strip() == "uploaded 1 of 1 file(s), already present 0", again.stderr
    assert bucket.sent() == len(data) - stored
    assert make_queue(settings).depth() == 1 and list(state_dir.glob("*")) == []


@pytest.mark.system
def test_a_state_whose_upload_is_gone_starts_over(s3_api, bucket, tmp_path):
    url, settings = s3_api
    data = noise_png(11 * MiB)
    image = tmp_path / "big.png"
    image.write_bytes(data)
    state_dir = tmp_path / "state"
    run = bucket.start(
        str(image), "--url", url, "--quiet", "--state-dir", str(state_dir), parts_before_signal=1, sig=signal.SIGKILL
    )
    run.wait(timeout=120)
    (saved,) = state_dir.glob("*.json")
    state = json.loads(saved.read_text())
    # Aborted meanwhile (by the sweep, or another client): the next run cannot resume it.
    assert (
        httpx.delete(
            f"{url}/s3/multipart/{quote(state['upload_id'], safe='')}", params={"key": state["key"]}
        ).status_code
        == 200
    )

    bucket.reset()
    again = dam_upload(url, state_dir, str(image))
    assert again.stdout.strip() == "uploaded 1 of 1 file(s), already present 0", again.stderr
    assert bucket.sent() == len(data)  # all of it, in a new upload
    assert make_queue(settings).depth() == 1 and list(state_dir.glob("*")) == []


@pytest.mark.system
def test_a_bucket_this_machine_cannot_reach_falls_back_to_post_upload(s3_api, bucket, tmp_path):
    # As with compose's `http://minio:9000` seen from the host: the API reaches the bucket, the client
    # does not (here every request but the API's goes to a proxy that refuses connections).
    url, settings = s3_api
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "small.jpg").write_bytes(jpeg_bytes(80, 60, seed=70))
    (folder / "large.png").write_bytes(noise_png(9 * MiB))
    env = _clean_env(HTTP_PROXY=f"http://127.0.0.1:{free_port()}", NO_PROXY=url)
    done = subprocess.run(
        [DAM, "upload", str(folder), "--url", url, "--quiet", "--state-dir", str(tmp_path / "state")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.strip() == "uploaded 2 of 2 file(s), already present 0", done.stderr
    assert done.stderr.count("cannot be reached from here; sending through POST /upload") == 1
    assert bucket.sent() == 0 and _requests(url, "/upload") == 2
    assert make_queue(settings).depth() == 2
    # The multipart upload begun was aborted; the single PUT, signed for the original's own key, left
    # nothing (nothing is written for it before its bytes).
    assert list(make_store(settings).list("incoming/")) == []
    assert list((tmp_path / "state").glob("*")) == []


@pytest.mark.system
def test_the_local_store_falls_back_to_post_upload(tmp_path):
    env = _clean_env(DAM_DATA_DIR=str(tmp_path / "data"))
    proc, url, log = start_dam_api(env, tmp_path, tmp_path / "api.log", port=free_port())
    try:
        folder = tmp_path / "photos"
        folder.mkdir()
        for i in range(2):
            (folder / f"{i}.jpg").write_bytes(jpeg_bytes(80, 60, seed=60 + i))
        (folder / "big.png").write_bytes(noise_png(9 * MiB))
        done = dam_upload(url, tmp_path / "state", str(folder))
        assert done.stdout.strip() == "uploaded 3 of 3 file(s), already present 0", done.stderr
        assert _requests(url, "/upload") == 3
        assert not (tmp_path / "state").exists()
    finally:
        stop(proc)
        log.close()
