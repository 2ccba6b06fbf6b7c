"""The `assets` Delta table on the local store and on moto over HTTP: replace-not-append, concurrent
commits from separate processes, delete, time travel, compaction through a real Dagster
materialization, and the commit log through `dam table history` and `dam sql --as-of`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from dagster import DagsterInstance, build_sensor_context, materialize
from fastapi.testclient import TestClient

from dam_assets.definitions import build_resources
from dam_assets.maintenance.compaction import compact_assets, compact_assets_sensor
from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.pipeline_harness import materialize_batch, tick
from dam_core.dam import Dam, open_dam
from dam_core.deletion import delete_assets
from dam_core.table import COLUMNS, AssetTable
from dam_ingest_api.main import create_app

DIM = 4


@pytest.fixture(params=["local", "s3"])
def dam(request, make_settings) -> Dam:
    if request.param == "s3":
        return open_dam(make_settings(**request.getfixturevalue("s3_env")))
    return open_dam(make_settings())


def batch_key(day: int, n: int = 0) -> str:
    return f"202611{day:02d}T101500Z-{n:05x}0"


def rows(batch: str, ids: list[str], error: str | None = None, at: datetime | None = None) -> list[dict]:
    at = at or datetime.now(UTC)
    return [
        {
            "id": i,
            "filename": f"{i}.jpg",
            "r2_key": f"assets/{i}.jpg",
            "vector_key": f"vectors/{i}.json",
            "mime_type": "image/jpeg",
            "caption": None if error else f"a photo of {i}",
            "embedding": None if error else [1.0, 0.0, 0.0, float(k)],
            "width": 64,
            "height": 48,
            "bytes": 100,
            "sha256": "0" * 64,
            "uploaded_at": at,
            "processed_at": at,
            "caption_model": "blip",
            "embedding_model": "clip",
            "batch": batch,
            "error": error,
            "tags": ["cat"],
            "taken_at": None,
            "camera_make": "Canon",
            "camera_model": None,
            "lens": None,
            "gps_lat": 48.85,
            "gps_lon": 2.35,
            "orientation": 1,
        }
        for k, i in enumerate(ids)
    ]


def write_batch(dam: Dam, batch: str, rows_: list[dict], dim: int) -> int:
    """A batch's commit as a run makes it: into the Dam's table, its claims in the Dam's store."""
    return dam.table.write_batch(batch, rows_, dim, dam.store)


def ids_in(dam: Dam, view: str = "assets", as_of=None) -> list[str]:
    return sorted(r[0] for r in dam.table.connect(as_of=as_of).execute(f"SELECT id FROM {view}").fetchall())


def test_a_batch_rewrite_replaces_its_rows_and_other_batches_stay(dam):
    a, b = batch_key(24), batch_key(25)
    write_batch(dam, a, rows(a, ["a1", "a2"]), DIM)
    write_batch(dam, b, rows(b, ["b1"]), DIM)
    write_batch(dam, a, rows(a, ["a1", "a2", "a3"]), DIM)  # a re-run or a backfill
    write_batch(dam, a, rows(a, ["a1", "a2", "a3"]), DIM)
    assert ids_in(dam, "assets_all") == ["a1", "a2", "a3", "b1"]
    con = dam.table.connect()
    # The same columns as before the table was a Delta table; the partition column stays hidden.
    assert con.sql("SELECT * FROM assets").columns == COLUMNS
    row = con.execute("SELECT embedding, gps_lat, camera_make, orientation FROM assets WHERE id = 'a2'").fetchone()
    assert list(row[0]) == [1.0, 0.0, 0.0, 1.0] and row[1:] == (48.85, "Canon", 1)
    # A batch month of its own: a batch written in another month is another partition.
    c = "20261201T000000Z-000010"
    write_batch(dam, c, rows(c, ["c1"]), DIM)
    assert ids_in(dam) == ["a1", "a2", "a3", "b1", "c1"]
    assert sorted(dam.table.open().metadata().partition_columns) == ["batch_month"]


def test_one_row_per_id_across_batches_success_beats_error_then_newest(dam):
    a, b, c = batch_key(24), batch_key(25), batch_key(26)
    old = datetime.now(UTC) - timedelta(hours=1)
    write_batch(dam, a, rows(a, ["x", "y"], at=old), DIM)
    write_batch(dam, b, rows(b, ["x"], error="decode failed"), DIM)  # a redelivery that failed
    write_batch(dam, c, rows(c, ["y"]), DIM)  # a redelivery that succeeded later
    con = dam.table.connect()
    got = dict(con.execute("SELECT id, batch FROM assets").fetchall())
    assert got == {"x": a, "y": c}
    # Kept by the writes: c's commit deleted a's row of y, and b left out its error row of x.
    assert con.execute("SELECT count(*) FROM assets_all").fetchone()[0] == 2
    # A re-run of the earlier batch (a backfill) does not take the id back from the later one.
    write_batch(dam, a, rows(a, ["x", "y"], at=old), DIM)
    assert dict(dam.table.connect().execute("SELECT id, batch FROM assets_all").fetchall()) == {"x": a, "y": c}


def test_a_later_batch_that_commits_first_still_owns_the_id(dam):
    """Two batches with the same id racing: the later one claims and commits while the earlier one
    is between its claim check and its commit. The earlier one's second look removes its row."""
    a, c = batch_key(24), batch_key(25)
    real = AssetTable._overwrite

    def overwrite_after_the_later_batch(table, delta, batch, rows_, dim, replaced):
        AssetTable._overwrite = real
        write_batch(dam, c, rows(c, ["x"]), DIM)  # the later batch runs to the end meanwhile
        return real(table, delta, batch, rows_, dim, replaced)

    AssetTable._overwrite = overwrite_after_the_later_batch
    try:
        write_batch(dam, a, rows(a, ["x", "z"]), DIM)
    finally:
        AssetTable._overwrite = real
    assert dict(dam.table.connect().execute("SELECT id, batch FROM assets_all").fetchall()) == {"x": c, "z": a}
    assert dam.table.remove_duplicates() == 0


_WRITER = """
import sys
from datetime import UTC, datetime
from dam_core.dam import open_dam
from dam_core.settings import load_settings
from dam_assets_tests.core.test_delta_table import rows, write_batch
batch = sys.argv[1]
ids = [f"{batch[-7:]}-{k}" for k in range(int(sys.argv[2]))]
for _ in range(int(sys.argv[3])):
    write_batch(open_dam(load_settings()), batch, rows(batch, ids), 4)
print("ok")
"""


@pytest.mark.system
def test_batch_runs_in_separate_processes_commit_concurrently_without_losing_one(dam):
    env = dict(os.environ)  # make_settings put the store's variables there
    first = batch_key(20)
    write_batch(dam, first, rows(first, ["seed"]), DIM)  # the table exists: both race on commits only
    batches = [batch_key(24, n) for n in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, b, "3", "3"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in batches
    ]
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    con = dam.table.connect()
    per_batch = dict(con.execute("SELECT batch, count(*) FROM assets_all GROUP BY batch").fetchall())
    assert per_batch == {first: 1, **{b: 3 for b in batches}}
    writes = [h for h in dam.table.history() if h["operation"] == "WRITE"]
    assert len(writes) == 1 + 4 * 3  # every commit of every process is in the log


def test_delete_time_travel_and_forced_erasure(dam):
    a = batch_key(24)
    write_batch(dam, a, rows(a, ["keep", "gone"]), DIM)
    before = dam.table.open().version()
    assert dam.table.delete_rows(["gone", "never-existed"]) == 1
    assert ids_in(dam) == ["keep"]
    # Still in the history until the retention passes: time travel reads it.
    assert ids_in(dam, as_of=before) == ["gone", "keep"]
    assert [h["operation"] for h in dam.table.history()][:2] == ["DELETE", "WRITE"]
    # The default retention keeps the old file; 0 erases it (time travel to it then fails).
    kept = dam.table.compact(retention_hours=168)
    assert kept.vacuumed == 0
    assert ids_in(dam, as_of=before) == ["gone", "keep"]
    erased = dam.table.compact(retention_hours=0)
    assert erased.vacuumed >= 1
    # The erased version's files are gone: DuckDB's Parquet reader (local) or the Arrow scan (S3) cannot open them.
    if dam.table.location.is_local:
        erased_files = pytest.raises(duckdb.IOException, match="No files found")
    else:
        erased_files = pytest.raises(duckdb.InvalidInputException, match="Could not open Parquet input source")
    with erased_files:
        ids_in(dam, as_of=before)
    assert ids_in(dam) == ["keep"]
    assert dam.table.delete_rows([]) == 0


def test_compact_assets_materializes_and_reports_file_counts(dam, tmp_path):
    for n in range(6):
        b = batch_key(24, n)
        write_batch(dam, b, rows(b, [f"id{n}"]), DIM)
    files_before = len(dam.table.open().file_uris())
    assert files_before == 6
    result = materialize(
        [compact_assets],
        instance=DagsterInstance.ephemeral(),
        resources=build_resources(dam.settings),
        run_config={"ops": {"compact_assets": {"config": {"retention_hours": 0}}}},
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("compact_assets")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["files_before"] == 6 and meta["files_after"] == 1 and meta["vacuumed"] == 6
    assert ids_in(dam) == [f"id{n}" for n in range(6)]


@pytest.mark.system
def test_dam_table_history_and_sql_as_of_read_the_commit_log(dam, tmp_path):
    a, b = batch_key(22), batch_key(23)
    write_batch(dam, a, rows(a, ["l1", "l2"]), DIM)
    write_batch(dam, b, rows(b, ["l3"]), DIM)
    env = dict(os.environ)  # make_settings put the store's variables there
    cli = [sys.executable, "-m", "dam_cli.main"]
    sql = subprocess.run(
        [*cli, "sql", "SELECT id, camera_make, len(embedding) AS dim FROM assets ORDER BY id", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert json.loads(sql.stdout) == [
        {"id": "l1", "camera_make": "Canon", "dim": 4},
        {"id": "l2", "camera_make": "Canon", "dim": 4},
        {"id": "l3", "camera_make": "Canon", "dim": 4},
    ]
    log = subprocess.run([*cli, "table", "history"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert log.returncode == 0 and log.stdout.count("WRITE") == 2
    past = subprocess.run(
        [*cli, "sql", "SELECT count(*) AS n FROM assets", "--as-of", "0", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert json.loads(past.stdout) == [{"n": 2}]
    bad = subprocess.run(
        [*cli, "sql", "SELECT 1", "--as-of", "99"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert bad.returncode == 1 and "no version 99" in bad.stderr


def test_a_delete_landing_while_the_batch_commits_does_not_resurrect_the_id(
    make_settings, tiny_models, instance, monkeypatch
):
    """The delete's tombstone and table delete both land after the batch read the tombstones and
    before its commit (injected right there): the batch's second look removes the row again."""
    dam = open_dam(make_settings(**tiny_models))
    client = TestClient(create_app(dam.settings))
    ids = [
        client.post("/upload", files={"file": (f"{n}.jpg", jpeg_bytes(96, 64, seed=n), "image/jpeg")}).json()["id"]
        for n in (1, 2)
    ]
    (request,) = tick(instance).run_requests
    doomed, kept = ids
    real_write = AssetTable.write_batch

    def write_racing_a_delete(table, batch, rows, dim, store):
        assert {r["id"] for r in rows} == set(ids)  # the tombstone was not there when the batch looked
        delete_assets(dam, [doomed])  # tombstone, table (no row yet), objects
        return real_write(table, batch, rows, dim, store)

    monkeypatch.setattr(AssetTable, "write_batch", write_racing_a_delete)
    result = materialize_batch(instance, request.partition_key)
    (mat,) = [m for m in result.asset_materializations_for_node("asset_metadata")]
    assert mat.metadata["deleted_while_processing"].value == 1
    assert ids_in(dam) == [kept]
    assert ids_in(dam, "assets_all") == [kept]
    # The re-upload of the same bytes, after the delete, is a new asset that no tombstone hides.
    again = client.post("/upload", files={"file": ("1.jpg", jpeg_bytes(96, 64, seed=1), "image/jpeg")})
    assert again.status_code == 202 and again.json()["id"] == doomed
    monkeypatch.setattr(AssetTable, "write_batch", real_write)
    first = request.partition_key
    (request,) = [r for r in tick(instance).run_requests if r.partition_key != first]
    materialize_batch(instance, request.partition_key)
    assert ids_in(dam) == sorted(ids)


def test_the_sensor_requests_a_compaction_only_when_files_pile_up(make_settings, instance):
    dam = open_dam(make_settings(DAM_COMPACT_MAX_FILES="10"))

    def evaluate():
        return compact_assets_sensor(build_sensor_context(instance=instance, resources=build_resources(dam.settings)))

    assert "0 data files" in evaluate().skip_message
    for n in range(10):
        b = batch_key(24, n)
        write_batch(dam, b, rows(b, [f"id{n}"]), DIM)
    assert "10 data files" in evaluate().skip_message
    b = batch_key(25)
    write_batch(dam, b, rows(b, ["one-more"]), DIM)
    request = evaluate()
    assert request.run_key == "compact-v10" and request.tags["files"] == "11"  # the sensor's job: compact_assets_job
    dam.table.compact(retention_hours=168)
    assert "1 data files" in evaluate().skip_message


def test_cosine_over_a_table_with_error_rows_and_near_duplicates(dam):
    """Error rows have no embedding: list_cosine_similarity over the column still works, through
    the view (DuckDB's Parquet reader otherwise refuses a column holding a NULL list)."""
    a = batch_key(24)
    good = rows(a, ["p", "q"])
    good[1]["embedding"] = [1.0, 0.0, 0.0, 0.01]  # nearly p's
    write_batch(dam, a, good + rows(a, ["broken"], error="decode failed"), DIM)
    con = dam.table.connect()
    scores = dict(
        con.execute(
            "SELECT id, list_cosine_similarity(embedding, [1.0, 0.0, 0.0, 0.0]::FLOAT[]) FROM assets"
        ).fetchall()
    )
    assert scores["broken"] is None and scores["p"] == pytest.approx(1.0)
    assert con.execute("SELECT a, b FROM near_duplicates").fetchall() == [("p", "q")]
