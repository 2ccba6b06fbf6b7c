"""docker-compose.yml is valid Compose (checked by the tool itself, when it is installed), refuses
to start without its secrets, and publishes only the API port."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
REQUIRED = {
    "DAM_API_KEY": "compose-test-api-key",
    "MINIO_ROOT_PASSWORD": "compose-test-minio-pw",
    "RABBITMQ_PASSWORD": "compose-test-rabbit-pw",
    "POSTGRES_PASSWORD": "compose-test-pg-pw",
}


def _tool() -> str:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not on PATH")
    if not COMPOSE_FILE.is_file():
        pytest.skip(f"{COMPOSE_FILE.name} does not exist yet")
    return tool


def _config(tool: str, env_extra: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("R2_", "DAM_")) and k != "AMQP_URL" and k not in REQUIRED
    }
    env.update(env_extra)
    # --project-directory elsewhere: a developer's .env beside the file must not fill the gaps.
    return subprocess.run(
        [tool, "-f", str(COMPOSE_FILE), "--project-directory", str(tmp_path), "config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_config_is_valid(tmp_path):
    proc = _config(_tool(), REQUIRED, tmp_path)
    assert proc.returncode == 0, proc.stderr or proc.stdout
    config = yaml.safe_load(proc.stdout)
    published = {name: svc.get("ports") for name, svc in config["services"].items() if svc.get("ports")}
    # Only the API is reachable from outside; Dagster, RabbitMQ management and MinIO are not.
    assert list(published) == ["api"], published
    assert config["services"]["api"]["environment"]["DAM_API_KEY"] == REQUIRED["DAM_API_KEY"]
    assert "change-me" not in proc.stdout


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_docker_compose_refuses_to_run_without_a_secret(tmp_path, missing):
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    proc = _config(_tool(), env, tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert missing in proc.stderr, proc.stderr
