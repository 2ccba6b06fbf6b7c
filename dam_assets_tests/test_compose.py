"""docker-compose.yml is valid Compose (checked by the tool itself, when it is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


def test_docker_compose_config_is_valid():
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not on PATH")
    if not COMPOSE_FILE.is_file():
        pytest.skip(f"{COMPOSE_FILE.name} does not exist yet")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_")) and k != "AMQP_URL"}
    proc = subprocess.run(
        [tool, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr or proc.stdout
