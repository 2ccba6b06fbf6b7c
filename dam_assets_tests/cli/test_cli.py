"""The `dam` command as a newcomer meets it: one data folder from any directory, clear "no data"
messages, quiet pipes, LF CSV, honest upload counts, a dagster.yaml that follows the project."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from dam_assets_tests.conftest import free_port, jpeg_bytes, png_bytes
from dam_assets_tests.pipeline_harness import run_pending
from dam_assets_tests.processes import stop
from dam_cli.dev import prepare_dagster_home
from dam_core.images import FORMATS, file_suffixes
from dam_core.index.write import build_index, write_index
from dam_core.settings import load_settings
from dam_core.store import LocalStore, make_store
from dam_core.table import make_table
from dam_ingest_api.main import create_app
from dam_models.tagging import load_vocabulary
from dam_models.tiny import CLIP_PROJECTION_DIM

REPO = Path(__file__).resolve().parents[2]
DAM = str(Path(sys.executable).parent / "dam")


def user_env(tmp_path: Path, **extra) -> dict:
    """The environment of a user who never set DAM_DATA_DIR; the per-user folder lives in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAM_")) and k != "AMQP_URL"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env.update(extra)
    return env


def dam(args: list[str], env: dict, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([DAM, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180, **kw)


# ----------------------------------------------------------------------------- the data folder


def test_default_data_folder_is_per_user_not_per_directory(make_settings, monkeypatch, tmp_path):
    make_settings()
    monkeypatch.delenv("DAM_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)

    monkeypatch.chdir(tmp_path)
    assert load_settings().data_dir == tmp_path / "home" / ".local" / "share" / "dam"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings().data_dir == tmp_path / "xdg" / "dam"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/xdg")  # the XDG spec says: ignore it
    assert load_settings().data_dir == tmp_path / "home" / ".local" / "share" / "dam"
    monkeypatch.setenv("DAM_DATA_DIR", "here")  # an explicit relative folder still means the current one
    assert load_settings().data_dir == tmp_path / "here"


@pytest.mark.system
@pytest.mark.timeout(600)
def test_dam_sql_and_search_read_the_same_data_from_any_folder(make_settings, tiny_models, instance, tmp_path):
    # The pipeline writes where a user's `dam dev` would: the per-user folder under XDG_DATA_HOME.
    settings = make_settings(**tiny_models, DAM_DATA_DIR=str(tmp_path / "xdg" / "dam"))
    with TestClient(create_app(settings)) as client:
        ids = sorted(
            client.post("/upload", files={"file": (f"p{i}.jpg", jpeg_bytes(160, 120, seed=i), "image/jpeg")}).json()[
                "id"
            ]
            for i in range(3)
        )
    (batch,), _ = run_pending(instance)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_index(make_store(settings), make_table(settings).connect(), exact_max=settings.dam_exact_search_max)
    # DuckDB's "Arrow output on a DB-API result makes an extra copy" warning, once per index build.
    assert not [w for w in caught if "extra copy" in str(w.message)]

    env = user_env(tmp_path, **tiny_models, HF_HUB_OFFLINE="1")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    answers = {}
    for cwd in (REPO, elsewhere):
        proc = dam(["sql", "SELECT id, batch FROM assets ORDER BY id", "--format", "json"], env, cwd)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""  # data found: no "no assets table" line
        answers[cwd] = json.loads(proc.stdout)
    assert answers[REPO] == answers[elsewhere] == [{"id": i, "batch": batch} for i in ids]

    proc = dam(["search", "a photo", "--k", "3", "--format", "json"], env, elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["id"] for r in json.loads(proc.stdout)) == ids
    assert not (elsewhere / ".dam").exists()
    assert "Loading weights" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr  # no library chatter


@pytest.mark.system
def test_no_data_says_which_folder_was_read(tmp_path):
    env = user_env(tmp_path)
    cwd = tmp_path / "project"
    cwd.mkdir()
    default = tmp_path / "xdg" / "dam"

    proc = dam(["sql", "SELECT count(*) AS n FROM assets", "--format", "json"], env, cwd)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"n": 0}]
    assert f"no assets table yet in {default / 'store'}" in proc.stderr
    assert "DAM_DATA_DIR" in proc.stderr and "Traceback" not in proc.stderr

    proc = dam(["search", "a dog"], env, cwd)
    assert proc.returncode == 1
    assert f"no search index yet in {default / 'store'}" in proc.stderr

    # Set explicitly, the message names that folder; looking creates nothing there.
    proc = dam(["sql", "SELECT 1"], {**env, "DAM_DATA_DIR": str(tmp_path / "mine")}, cwd)
    assert f"in {tmp_path / 'mine' / 'store'}" in proc.stderr and f"DAM_DATA_DIR={tmp_path / 'mine'}" in proc.stderr
    assert not default.exists() and not (tmp_path / "mine").exists()

    # A ./.dam left by an older version (its default) is pointed out, not silently ignored.
    (cwd / ".dam" / "store").mkdir(parents=True)
    proc = dam(["sql", "SELECT 1"], env, cwd)
    assert f"DAM_DATA_DIR={cwd / '.dam'} reads it" in proc.stderr


# ----------------------------------------------------------------------------- output


def _closed_early(command: str, env: dict, cwd: Path) -> tuple[str, int]:
    """Run `command | head -1` in bash without pipefail; return stderr and the status of `command`."""
    proc = subprocess.run(
        ["bash", "-c", f"set +o pipefail; {command} | head -1 >/dev/null; exit ${{PIPESTATUS[0]}}"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return proc.stderr, proc.returncode


@pytest.mark.system
def test_sql_piped_into_head_exits_quietly(tmp_path):
    env = user_env(tmp_path, DAM_DATA_DIR=str(tmp_path / "data"))
    # ~1.4 MB of output: far beyond a pipe's buffer, so writing after head left must fail.
    for fmt in ("csv", "table", "json"):
        err, rc = _closed_early(f"{DAM} sql 'SELECT range AS n FROM range(200000)' --format {fmt}", env, tmp_path)
        assert "Traceback" not in err and "BrokenPipe" not in err, err
        assert rc == 141, (fmt, rc, err)  # what a coreutils tool killed by SIGPIPE reports


@pytest.mark.system
def test_search_piped_into_head_exits_quietly(tmp_path, tiny_models):
    n = 1500
    now = datetime.now(UTC)
    items = pa.table(
        {
            "id": [f"{i:032x}" for i in range(n)],
            "filename": [f"photo-{i}.jpg" for i in range(n)],
            "caption": ["a long enough caption to make every result line a few hundred bytes"] * n,
            "tags": pa.array([["dog", "beach"]] * n, type=pa.list_(pa.string())),
            "mime_type": ["image/jpeg"] * n,
            "width": pa.array([640] * n, type=pa.int32()),
            "height": pa.array([480] * n, type=pa.int32()),
            "error": pa.nulls(n, type=pa.string()),
            "uploaded_at": pa.array([now] * n, type=pa.timestamp("us", tz="UTC")),
            "processed_at": pa.array([now] * n, type=pa.timestamp("us", tz="UTC")),
            "batch": ["20260101T000000Z-000000"] * n,
            "embedding_model": [tiny_models["DAM_EMBEDDING_MODEL"]] * n,
        }
    )  # no EXIF columns, as an index written before them: they load as nulls
    vectors = np.random.default_rng(0).standard_normal((n, CLIP_PROJECTION_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = LocalStore(tmp_path / "data" / "store")
    write_index(store, items, vectors, np.ones(n, bool), exact_max=10**9, model=tiny_models["DAM_EMBEDDING_MODEL"])

    env = user_env(tmp_path, DAM_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1", **tiny_models)
    for fmt in ("table", "json"):
        err, rc = _closed_early(f"{DAM} search 'a dog' --k 1000 --format {fmt}", env, tmp_path)
        assert "Traceback" not in err and "BrokenPipe" not in err, err
        assert rc == 141, (fmt, rc, err)


@pytest.mark.system
def test_csv_lines_end_in_lf(tmp_path):
    proc = subprocess.run(
        [DAM, "sql", "SELECT 1 AS a, 'x,y' AS b UNION ALL SELECT 2, 'z' ORDER BY a", "--format", "csv"],
        env=user_env(tmp_path, DAM_DATA_DIR=str(tmp_path / "data")),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b'a,b\n1,"x,y"\n2,z\n'


# ----------------------------------------------------------------------------- upload


@pytest.fixture
def api(tmp_path):
    """`dam api` on a fresh data folder, stopped by pid afterwards."""
    port = free_port()
    log = open(tmp_path / "api.log", "w+b")
    proc = subprocess.Popen(
        [DAM, "api", "--port", str(port), "--log-level", "warning"],
        env=user_env(tmp_path, DAM_DATA_DIR=str(tmp_path / "data")),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (log.seek(0), log.read())
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dam api did not answer /healthz within 60 s"
            time.sleep(0.1)
        yield url
    finally:
        stop(proc)
        log.close()


@pytest.mark.system
def test_upload_counts_exact_duplicates_as_already_present(api, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    # Every name the image formats go by is picked up from a folder, not only the canonical ones.
    (folder / "a.jpe").write_bytes(jpeg_bytes(80, 60, seed=1))
    (folder / "b.jfif").write_bytes(jpeg_bytes(80, 60, seed=2))
    (folder / "c.PNG").write_bytes(png_bytes(20, 20))
    (folder / "notes.txt").write_text("never sent")
    env = user_env(tmp_path)

    proc = dam(["upload", str(folder), "--url", api, "--quiet"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "uploaded 3 of 3 file(s), already present 0" in proc.stdout

    (folder / "d.jpg").write_bytes(jpeg_bytes(80, 60, seed=4))
    proc = dam(["upload", str(folder), "--url", api, "--quiet"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "uploaded 1 of 4 file(s), already present 3" in proc.stdout

    (folder / "e.jpg").write_bytes(jpeg_bytes(80, 60, seed=5))
    proc = dam(["upload", str(folder), "--url", api, "--quiet", "--json"], env, tmp_path)
    out = json.loads(proc.stdout)
    assert [Path(u["path"]).name for u in out["uploaded"]] == ["e.jpg"]
    assert out["uploaded"][0]["status"] == "queued" and "duplicate" not in out["uploaded"][0]
    assert sorted(Path(u["path"]).name for u in out["already_present"]) == ["a.jpe", "b.jfif", "c.PNG", "d.jpg"]
    assert all(u["duplicate"] is True for u in out["already_present"])
    assert out["failed"] == []


def test_upload_suffixes_come_from_the_supported_formats():
    assert {ext for _, ext in FORMATS.values()} <= file_suffixes()
    assert {".jpeg", ".jpe", ".tif"} <= file_suffixes()
    assert not re.search(r"\{\s*\"\.jpg\"", "".join(p.read_text() for p in (REPO / "dam_cli").glob("*.py")))


# ----------------------------------------------------------------------------- dam dev's dagster.yaml


def test_dam_dev_refreshes_the_dagster_yaml_it_wrote_and_keeps_a_hand_edited_one(
    make_settings, monkeypatch, tmp_path, capsys
):
    settings = make_settings(DAM_DATA_DIR=str(tmp_path / "data"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    project = (REPO / "dagster.yaml").read_text()
    header = project.split("\n", 1)[0]
    home = tmp_path / "data" / "dagster"
    target = home / "dagster.yaml"

    # A copy written by an older `dam dev`: the project's header, the launcher of that time.
    home.mkdir(parents=True)
    target.write_text(header + "\nrun_launcher:\n  module: dagster\n  class: DefaultRunLauncher\n")
    assert prepare_dagster_home(settings) == home
    assert target.read_text() == project
    assert "updated" in capsys.readouterr().err

    # Once the project's file changes again, the copy follows it.
    newer = tmp_path / "dagster.yaml"
    newer.write_text(project + "\n# a later project version\n")
    prepare_dagster_home(settings, template=newer)
    assert target.read_text() == newer.read_text()
    assert "updated" in capsys.readouterr().err

    # Edited by hand after dam wrote it (header kept): left alone, one warning line.
    edited = newer.read_text().replace("max_concurrent_runs: 1", "max_concurrent_runs: 4")
    target.write_text(edited)
    prepare_dagster_home(settings)
    assert target.read_text() == edited
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "keeping" in err and str(target) in err

    # Written by a person from scratch (no mark, no header): also left alone.
    (home / ".dagster.yaml.written-by-dam").unlink()
    target.write_text("telemetry:\n  enabled: false\n")
    prepare_dagster_home(settings)
    assert target.read_text() == "telemetry:\n  enabled: false\n"
    assert "keeping" in capsys.readouterr().err

    # None there: the project's file.
    target.unlink()
    prepare_dagster_home(settings)
    assert target.read_text() == project


# ----------------------------------------------------------------------------- docs


def test_docs_state_the_tag_vocabulary_size_the_code_loads():
    counts = re.findall(r"vocabulary of (\d+) everyday subjects", (REPO / "docs" / "http-api.md").read_text())
    assert counts == [str(len(load_vocabulary()))]
