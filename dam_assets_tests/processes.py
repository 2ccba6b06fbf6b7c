"""Starting and stopping the real processes the tests drive (`dam api`, `dam dev`, daemons)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

DAM = str(Path(sys.executable).parent / "dam")


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    """Wait until `url` answers below 500; fail at once if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited early with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: what a user's Ctrl-C then kill would do."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def start_dam_api(
    env: dict, cwd: Path, log_path: Path, *args: str, port: int, timeout: float = 60
) -> tuple[subprocess.Popen, str, IO[bytes]]:
    """`dam api` as a user starts it, on `port`, its output in `log_path`; (process, base URL, log file) once it answers."""
    log = open(log_path, "w+b")
    proc = subprocess.Popen(
        [DAM, "api", "--port", str(port), "--log-level", "warning", *args],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", timeout, proc)
    except AssertionError:
        stop(proc)
        log.close()
        raise
    return proc, url, log
