"""Settings: defaults, the seed's variables, and errors that name the variable at fault."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dam_core.settings import MiB, SettingsError, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.system
def test_defaults(make_settings, monkeypatch, tmp_path):
    make_settings()  # cleans every R2_*, DAM_* and AMQP_URL variable first
    os.environ.pop("DAM_DATA_DIR", None)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    s = load_settings()
    assert s.r2_endpoint is None and s.r2_bucket is None
    assert s.r2_access_key_id is None and s.r2_secret_access_key is None
    assert s.amqp_url is None
    assert not s.uses_s3 and not s.uses_rabbitmq
    assert s.dam_queue == "uploads" and s.dead_letter_queue == "uploads.dead"
    assert s.dam_data_dir == s.data_dir == tmp_path / ".local" / "share" / "dam"  # per user, not per cwd
    assert s.dam_max_upload_bytes == 25 * MiB
    assert s.dam_max_files_per_request == 32
    assert s.dam_api_key is None
    assert s.dam_batch_size == 64
    assert s.dam_caption_model == "Salesforce/blip-image-captioning-base"
    assert s.dam_embedding_model == "openai/clip-vit-base-patch32"


def test_seed_variables_are_picked_up(make_settings):
    s = make_settings(
        R2_ENDPOINT="https://acct.r2.cloudflarestorage.com",
        R2_ACCESS_KEY_ID="AKIDSEED",
        R2_SECRET_ACCESS_KEY="seed-secret-value",
        R2_BUCKET="seed-bucket",
        AMQP_URL="amqp://user:amqp-pass-value@rabbit:5672/%2F",
        DAM_QUEUE="seed-uploads",
        DAM_MAX_UPLOAD_BYTES="12345",
    )
    assert s.uses_s3 and s.uses_rabbitmq
    assert s.r2_endpoint == "https://acct.r2.cloudflarestorage.com"
    assert s.r2_bucket == "seed-bucket"
    assert s.r2_access_key_id.get_secret_value() == "AKIDSEED"
    assert s.r2_secret_access_key.get_secret_value() == "seed-secret-value"
    assert s.amqp_url.get_secret_value() == "amqp://user:amqp-pass-value@rabbit:5672/%2F"
    assert s.dam_queue == "seed-uploads" and s.dead_letter_queue == "seed-uploads.dead"
    assert s.dam_max_upload_bytes == 12345
    # Secrets never show up when the settings are printed or logged.
    for text in (repr(s), str(s)):
        assert "seed-secret-value" not in text and "amqp-pass-value" not in text


def test_variable_names_are_case_insensitive_and_empty_means_unset(make_settings):
    s = make_settings(r2_bucket="lower-bucket", R2_ENDPOINT="", AMQP_URL="")
    assert s.r2_bucket == "lower-bucket" and s.r2_endpoint is None and s.amqp_url is None


@pytest.mark.parametrize(
    "env, names",
    [
        ({"R2_ENDPOINT": "https://acct.r2.cloudflarestorage.com"}, ["R2_BUCKET"]),
        ({"R2_ACCESS_KEY_ID": "AKID", "R2_SECRET_ACCESS_KEY": "x-secret"}, ["R2_BUCKET"]),
        ({"R2_ACCESS_KEY_ID": "AKID", "R2_BUCKET": "b"}, ["R2_SECRET_ACCESS_KEY"]),
        ({"R2_SECRET_ACCESS_KEY": "x-secret", "R2_BUCKET": "b"}, ["R2_ACCESS_KEY_ID"]),
        ({"R2_ENDPOINT": "not a url", "R2_BUCKET": "b"}, ["R2_ENDPOINT"]),
        ({"R2_ENDPOINT": "ftp://host/bucket", "R2_BUCKET": "b"}, ["R2_ENDPOINT"]),
        ({"AMQP_URL": "http://guest:pw-in-url@127.0.0.1:5672/"}, ["AMQP_URL"]),
        ({"AMQP_URL": "rabbit-host:5672"}, ["AMQP_URL"]),
        ({"DAM_MAX_UPLOAD_BYTES": "0"}, ["DAM_MAX_UPLOAD_BYTES"]),
        ({"DAM_MAX_UPLOAD_BYTES": "lots"}, ["DAM_MAX_UPLOAD_BYTES"]),
        ({"DAM_MAX_FILES_PER_REQUEST": "0"}, ["DAM_MAX_FILES_PER_REQUEST"]),
        ({"DAM_BATCH_SIZE": "-1"}, ["DAM_BATCH_SIZE"]),
        ({"DAM_DEVICE": "tpu"}, ["DAM_DEVICE"]),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_bad_configuration_names_the_variable(make_settings, env, names):
    with pytest.raises(SettingsError) as info:
        make_settings(**env)
    message = str(info.value)
    for name in names:
        assert name in message, message
    # The message never echoes a secret value.
    assert "x-secret" not in message and "pw-in-url" not in message


def test_partial_r2_settings_never_fall_back_to_local(make_settings):
    """A half-configured store is an error, not a silent local folder."""
    with pytest.raises(SettingsError, match="R2_BUCKET"):
        make_settings(
            R2_ENDPOINT="https://acct.r2.cloudflarestorage.com", R2_ACCESS_KEY_ID="a", R2_SECRET_ACCESS_KEY="b"
        )


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_")) and k != "AMQP_URL"}
    env.update(extra)
    return env


@pytest.mark.system
@pytest.mark.parametrize(
    "env, name",
    [
        ({"AMQP_URL": "http://guest:cli-secret-pw@127.0.0.1/"}, "AMQP_URL"),
        ({"R2_ENDPOINT": "https://acct.r2.cloudflarestorage.com"}, "R2_BUCKET"),
        ({"DAM_MAX_UPLOAD_BYTES": "0"}, "DAM_MAX_UPLOAD_BYTES"),
    ],
    ids=["amqp", "r2-partial", "max-bytes"],
)
def test_dam_api_exits_2_naming_the_variable(tmp_path, env, name):
    proc = subprocess.run(
        [sys.executable, "-m", "dam_cli.main", "api", "--port", "1"],
        env=_clean_env(DAM_DATA_DIR=str(tmp_path), **env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert name in proc.stderr
    assert "cli-secret-pw" not in proc.stderr and "Traceback" not in proc.stderr
