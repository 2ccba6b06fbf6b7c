"""The `assets` table: a Delta Lake table (delta-rs) at `metadata/assets/`, and DuckDB views over it.

Parquet data files plus a transaction log (`_delta_log/`), in the local store's folder or in the
S3/R2 bucket alike, partitioned by `batch_month` (the month of the batch key). Every write is one
commit:

- a batch run replaces exactly its own rows (overwrite with the predicate `batch = '…'`): re-running
  a batch or a backfill never appends;
- runs of different batches commit concurrently: their predicates touch disjoint files, so
  delta-rs's conflict check lets both commit; on S3 the commit is a conditional PUT of the next log
  entry (`If-None-Match`, R2 and S3 both honour it), so two writers can never both take a version.
  A real conflict (the same batch twice at once) is retried here;
- a delete is a Delta delete: the rows leave the current version at once and stay readable only
  through time travel until `compact()` vacuums the files nothing references any more.

One row per id is enforced by the `assets` view, not by the writes: an id may legitimately sit in
two batches (a message redelivered into a second batch, or an upload re-enqueued by recovery), and
finding it at write time would cost a scan of the whole table per batch. The view ranks only the
ids that occur more than once (a success beats an error, then the newest `processed_at`).
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from dam_core.layout import TABLE_PREFIX

if TYPE_CHECKING:
    import duckdb
    from deltalake import DeltaTable

    from dam_core.settings import Settings

log = logging.getLogger(__name__)

PARTITION_COLUMN = "batch_month"
# Statistics only where a filter can use them: the batch predicate of a write, and time ranges.
# (By default delta-rs collects min/max for the first 32 columns, the embedding list included.)
_STATS_COLUMNS = "batch,uploaded_at,processed_at,taken_at"
COMMIT_ATTEMPTS = 8
_BATCH_KEY = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def schema(embedding_dim: int | None) -> pa.Schema:
    emb = pa.list_(pa.float32(), embedding_dim) if embedding_dim else pa.list_(pa.float32())
    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("id", pa.string()),
            ("filename", pa.string()),
            ("r2_key", pa.string()),
            ("vector_key", pa.string()),
            ("mime_type", pa.string()),
            ("caption", pa.string()),
            ("embedding", emb),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("bytes", pa.int64()),
            ("sha256", pa.string()),
            ("uploaded_at", ts),
            ("processed_at", ts),
            ("caption_model", pa.string()),
            ("embedding_model", pa.string()),
            ("batch", pa.string()),
            ("error", pa.string()),
            ("tags", pa.list_(pa.string())),
            # EXIF (dam_core/exif.py); null when the file has none, it is malformed, or the batch
            # was enriched before EXIF was read. taken_at: UTC when the file states its offset,
            # else the camera's clock as it is.
            ("taken_at", ts),
            ("camera_make", pa.string()),
            ("camera_model", pa.string()),
            ("lens", pa.string()),
            ("gps_lat", pa.float64()),
            ("gps_lon", pa.float64()),
            ("orientation", pa.int8()),
        ]
    )


COLUMNS = schema(None).names


# ----------------------------------------------------------------------------- where it lives


@dataclass(frozen=True)
class Location:
    uri: str
    storage_options: dict[str, str] | None

    def describe(self) -> str:
        return self.uri


def location(settings: "Settings") -> Location:
    """The table's URI and the delta-rs storage options for the configured store."""
    if not settings.uses_s3:
        root = settings.data_dir / "store" / TABLE_PREFIX
        return Location(str(root).rstrip("/"), None)
    options = {"AWS_REGION": settings.r2_region, "conditional_put": "etag"}
    if settings.r2_endpoint:
        options["AWS_ENDPOINT_URL"] = settings.r2_endpoint
        if settings.r2_endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if settings.r2_access_key_id:
        options["AWS_ACCESS_KEY_ID"] = settings.r2_access_key_id.get_secret_value()
        options["AWS_SECRET_ACCESS_KEY"] = settings.r2_secret_access_key.get_secret_value()
    return Location(f"s3://{settings.r2_bucket}/{TABLE_PREFIX.rstrip('/')}", options)


def open_table(settings: "Settings", as_of: "int | datetime | str | None" = None) -> "DeltaTable | None":
    """The table at its latest version (or `as_of`: a version number or a time), None if none yet.

    (`DeltaTable.is_deltatable` is not used: it holds the GIL while it waits on the store, which
    deadlocks against an S3 server running in the same process, as tests' moto does.)
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    where = location(settings)
    try:
        table = DeltaTable(where.uri, storage_options=where.storage_options)
    except TableNotFoundError:
        return None
    except OSError as err:  # a local folder that does not exist yet
        if "not found" in str(err).lower() or "no such file" in str(err).lower():
            return None
        raise
    if as_of is not None:
        if isinstance(as_of, str) and as_of.isdigit():
            as_of = int(as_of)
        if isinstance(as_of, int) and not 0 <= as_of <= table.version():
            raise ValueError(f"the table has no version {as_of}: its versions are 0 to {table.version()}")
        if isinstance(as_of, str):
            try:
                as_of = datetime.fromisoformat(as_of.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"--as-of takes a version number or an ISO time, not {as_of!r}") from None
        if isinstance(as_of, datetime) and as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
        if isinstance(as_of, datetime):
            first = min(h["timestamp"] for h in table.history())
            if as_of.timestamp() * 1000 < first:
                raise ValueError(f"the table did not exist yet at {as_of.isoformat()}")
        table.load_as_version(as_of)
    return table


# ----------------------------------------------------------------------------- writing


def batch_month(batch: str) -> str:
    """The partition a batch's rows live in: `20261124T101500Z-3fa2c1` -> `2026-11`."""
    if not _BATCH_KEY.match(batch):
        raise ValueError(f"not a batch key: {batch!r}")
    return f"{batch[:4]}-{batch[4:6]}"


def _arrow(rows: list[dict], embedding_dim: int | None, month: str) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=schema(embedding_dim))
    # Delta has no fixed-size lists: the embedding is stored as a variable list of float32.
    table = table.set_column(
        table.schema.get_field_index("embedding"), "embedding", table.column("embedding").cast(pa.list_(pa.float32()))
    )
    return table.append_column(PARTITION_COLUMN, pa.array([month] * len(rows), pa.string()))


def _commit(action, what: str):
    """Run one commit, retrying a conflict with another writer (delta-rs re-checks on each try)."""
    from deltalake.exceptions import CommitFailedError

    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return action()
        except CommitFailedError as err:
            if attempt == COMMIT_ATTEMPTS:
                raise
            pause = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
            log.info("%s: commit conflict (%s), retry %d in %.2f s", what, err, attempt, pause)
            time.sleep(pause)


def write_batch(settings: "Settings", batch: str, rows: list[dict], embedding_dim: int | None) -> int:
    """Replace the batch's rows with `rows` in one commit; returns the table version written."""
    from deltalake import WriterProperties, write_deltalake

    month = batch_month(batch)
    data = _arrow(rows, embedding_dim, month)
    where = location(settings)

    def write():
        write_deltalake(
            where.uri,
            data,
            mode="overwrite",
            predicate=f"{PARTITION_COLUMN} = '{month}' AND batch = '{batch}'",
            partition_by=[PARTITION_COLUMN],
            schema_mode="merge",
            storage_options=where.storage_options,
            configuration={"delta.dataSkippingStatsColumns": _STATS_COLUMNS},
            writer_properties=WriterProperties(compression="ZSTD"),
        )

    _commit(write, f"batch {batch}")
    return open_table(settings).version()


def _quoted(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def delete_rows(settings: "Settings", ids: list[str], batch: str | None = None) -> int:
    """Delete every row of these ids, or only those in `batch` (a Delta delete, one commit);
    returns how many went."""
    table = open_table(settings)
    if table is None or not ids:
        return 0
    predicate = f"id IN ({_quoted(sorted(set(ids)))})"
    if batch is not None:
        predicate = f"{PARTITION_COLUMN} = '{batch_month(batch)}' AND batch = '{batch}' AND {predicate}"

    def delete():
        fresh = open_table(settings)
        return fresh.delete(predicate)

    metrics = _commit(delete, f"delete {len(ids)} ids")
    return int(metrics.get("num_deleted_rows", 0) or 0)


# ----------------------------------------------------------------------------- maintenance


@dataclass
class Compaction:
    version_before: int
    version_after: int
    files_before: int
    files_after: int
    files_added: int
    files_removed: int
    vacuumed: int
    retention_hours: float

    def as_metadata(self) -> dict:
        return dict(self.__dict__)


def compact(settings: "Settings", retention_hours: float) -> Compaction | None:
    """Merge small files, checkpoint the log, then remove files that no version newer than
    `retention_hours` ago references (0 forces erasure of deleted rows from history now)."""
    table = open_table(settings)
    if table is None:
        return None
    before, files_before = table.version(), len(table.file_uris())
    metrics = _commit(lambda: open_table(settings).optimize.compact(), "compact")
    table = open_table(settings)
    table.create_checkpoint()
    vacuumed = table.vacuum(
        retention_hours=int(retention_hours), enforce_retention_duration=False, dry_run=False
    )
    table.cleanup_metadata()
    table = open_table(settings)
    return Compaction(
        version_before=before,
        version_after=table.version(),
        files_before=files_before,
        files_after=len(table.file_uris()),
        files_added=int(metrics.get("numFilesAdded", 0)),
        files_removed=int(metrics.get("numFilesRemoved", 0)),
        vacuumed=len(vacuumed),
        retention_hours=retention_hours,
    )


def history(settings: "Settings", limit: int | None = None) -> list[dict]:
    """The commit log, newest first: version, timestamp, operation and its parameters/metrics."""
    table = open_table(settings)
    return [] if table is None else table.history(limit)


# ----------------------------------------------------------------------------- DuckDB


# Only ids that occur more than once are ranked: counting ids is a hash aggregate over one column,
# far cheaper than a window over every row; the rest pass straight through.
_ASSETS_VIEW = """
CREATE OR REPLACE VIEW assets AS
WITH repeated AS (SELECT id FROM assets_all GROUP BY id HAVING count(*) > 1)
SELECT * FROM assets_all WHERE id NOT IN (SELECT id FROM repeated)
UNION ALL BY NAME
SELECT * EXCLUDE (_rank) FROM (
    SELECT *, row_number() OVER (
        PARTITION BY id ORDER BY (error IS NULL) DESC, processed_at DESC, batch DESC
    ) AS _rank
    FROM assets_all WHERE id IN (SELECT id FROM repeated)
) WHERE _rank = 1
"""


def _near_duplicates_view(threshold: float) -> str:
    # Every pair once (a < b) whose embeddings, from the same model, are at least `threshold` alike.
    return f"""
CREATE OR REPLACE VIEW near_duplicates AS
SELECT a, b, score FROM (
    SELECT x.id AS a, y.id AS b,
           list_cosine_similarity(CAST(x.embedding AS FLOAT[]), CAST(y.embedding AS FLOAT[])) AS score
    FROM assets x JOIN assets y
      ON x.id < y.id AND x.embedding_model = y.embedding_model
    WHERE x.embedding IS NOT NULL AND y.embedding IS NOT NULL
) WHERE score >= {float(threshold)!r}
"""


def connect(
    settings: "Settings | None" = None, database: str = ":memory:", as_of: "int | datetime | str | None" = None
) -> "duckdb.DuckDBPyConnection":
    """A DuckDB connection with views `assets` (one row per id), `assets_all` (every row of every
    batch) and `near_duplicates(a, b, score)` (pairs at or above DAM_NEAR_DUPLICATE), over the
    table's latest version or the one `as_of` names (a version number or a timestamp)."""
    import duckdb

    if settings is None:
        from dam_core.settings import get_settings

        settings = get_settings()
    table = open_table(settings, as_of)
    con = duckdb.connect(database)
    if table is not None:
        con.register("_assets_dataset", table.to_pyarrow_dataset())
        con.execute(f"CREATE OR REPLACE VIEW assets_all AS SELECT * EXCLUDE ({PARTITION_COLUMN}) FROM _assets_dataset")
    else:
        con.register("_assets_empty", schema(None).empty_table())
        con.execute("CREATE OR REPLACE VIEW assets_all AS SELECT * FROM _assets_empty")
    con.execute(_ASSETS_VIEW)
    con.execute(_near_duplicates_view(settings.dam_near_duplicate))
    return con

