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
  through time travel until `AssetTable.compact()` vacuums the files nothing references any more.

One row per id is enforced by the writes, so the `assets` view is a plain projection that stays
interactive at millions of rows: an id that reaches a second batch (a redelivered message, a
recovery re-enqueue) is owned by one batch through claims in the store (dam_core/owners.py), and
the owning batch's commit deletes the other rows of the id. `AssetTable.remove_duplicates()` (run
by compaction) is the safety net.

`AssetTable` is the handle: where the table lives and the settings that shape its reads and upkeep;
`make_table(settings)` builds it (dam_core/dam.py does, once per process).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from dam_core.layout import TABLE_PREFIX
from dam_core.owners import claim, claimants, release

if TYPE_CHECKING:
    from dam_core.settings import Settings
    from dam_core.store import ObjectStore

log = logging.getLogger(__name__)

PARTITION_COLUMN = "batch_month"
COMMIT_ATTEMPTS = 8
# Compacted files of about 32 MiB: few enough files for DuckDB, and a batch that replaces a
# redelivered id's old row (Delta rewrites the file holding it) rewrites at most this much.
COMPACT_FILE_BYTES = 32 << 20
_TABLE_PROPERTIES = {
    # Statistics only where a filter can use them: the batch predicate of a write, and time ranges.
    # (By default delta-rs collects min/max for the first 32 columns, the embedding list included.)
    "delta.dataSkippingStatsColumns": "batch,uploaded_at,processed_at,taken_at",
    # A checkpoint every 10 commits: opening the table replays at most 9 JSON commits.
    "delta.checkpointInterval": "10",
}
_BATCH_KEY = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
T = TypeVar("T")
# A commit's table: an open one, or None before the first commit creates it.
_Table = TypeVar("_Table", DeltaTable, DeltaTable | None)


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
            # The text read in the image (OCR, DAM_OCR): lines joined by newlines, "" for none; null
            # where it was not read (OCR off or not yet, or it failed on this image).
            ("ocr_text", pa.string()),
        ]
    )


COLUMNS = schema(None).names


# ----------------------------------------------------------------------------- where it lives


@dataclass(frozen=True)
class Location:
    uri: str
    storage_options: dict[str, str] | None  # None: a local folder

    @property
    def is_local(self) -> bool:
        return self.storage_options is None

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
    if settings.r2_access_key_id and settings.r2_secret_access_key:  # both or neither (Settings checks)
        options["AWS_ACCESS_KEY_ID"] = settings.r2_access_key_id.get_secret_value()
        options["AWS_SECRET_ACCESS_KEY"] = settings.r2_secret_access_key.get_secret_value()
    return Location(f"s3://{settings.r2_bucket}/{TABLE_PREFIX.rstrip('/')}", options)


def make_table(settings: "Settings") -> AssetTable:
    """The table the settings locate, with their thresholds."""
    return AssetTable(
        location(settings),
        near_duplicate=settings.dam_near_duplicate,
        retention_hours=settings.dam_table_retention_hours,
        compact_max_files=settings.dam_compact_max_files,
    )


# ----------------------------------------------------------------------------- rows and predicates


def batch_month(batch: str) -> str:
    """The partition a batch's rows live in: `20261124T101500Z-3fa2c1` -> `2026-11`."""
    if not _BATCH_KEY.match(batch):
        raise ValueError(f"not a batch key: {batch!r}")
    return f"{batch[:4]}-{batch[4:6]}"


def _arrow(rows: list[dict[str, Any]], embedding_dim: int | None, month: str) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=schema(embedding_dim))
    # Delta has no fixed-size lists: the embedding is stored as a variable list of float32.
    table = table.set_column(
        table.schema.get_field_index("embedding"), "embedding", table.column("embedding").cast(pa.list_(pa.float32()))
    )
    return table.append_column(PARTITION_COLUMN, pa.array([month] * len(rows), pa.string()))


def _batch_predicate(batch: str, ids: list[str] | None = None) -> str:
    where = f"{PARTITION_COLUMN} = '{batch_month(batch)}' AND batch = '{batch}'"
    return where if ids is None else f"{where} AND id IN ({_quoted(sorted(set(ids)))})"


def _quoted(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


@dataclass
class _Plan:
    dropped: set[str]  # ids this batch leaves out: a later batch owns them, or an earlier good row stays
    replaced: dict[str, list[str]]  # earlier batch -> ids whose rows this batch's commit deletes


def _later_claimed(batch: str, claims: dict[str, list[str]]) -> set[str]:
    return {i for i, batches in claims.items() if any(b > batch for b in batches)}


def _ownership(
    table: DeltaTable | None, batch: str, mine: dict[str, dict[str, Any]], claims: dict[str, list[str]]
) -> _Plan:
    later = _later_claimed(batch, claims)
    earlier = {i: [b for b in bs if b < batch] for i, bs in claims.items() if i not in later}
    earlier = {i: bs for i, bs in earlier.items() if bs}
    # An error row never replaces a row without error (the old `assets` view's rule).
    failed = {i: bs for i, bs in earlier.items() if mine[i].get("error")}
    keep_old = _ids_with_good_rows(table, failed) if failed else set()
    replaced: dict[str, list[str]] = {}
    for i, bs in earlier.items():
        if i in keep_old:
            continue
        for b in bs:
            replaced.setdefault(b, []).append(i)
    return _Plan(dropped=later | keep_old, replaced=replaced)


def _ids_with_good_rows(table: DeltaTable | None, where: dict[str, list[str]]) -> set[str]:
    """Which of these ids have a row without error in one of the given batches."""
    if table is None:
        return set()
    batches = sorted({b for bs in where.values() for b in bs})
    months = sorted({batch_month(b) for b in batches})
    found = table.to_pyarrow_dataset().to_table(
        columns=["id", "batch"],
        filter=pc.field(PARTITION_COLUMN).isin(months)
        & pc.field("batch").isin(batches)
        & pc.field("id").isin(sorted(where))
        & pc.field("error").is_null(),
    )
    return {
        i
        for i, b in zip(found.column("id").to_pylist(), found.column("batch").to_pylist(), strict=True)
        if b in where.get(i, [])
    }


# ----------------------------------------------------------------------------- maintenance results


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
    duplicates_removed: int = 0

    def as_metadata(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- the handle


class AssetTable:
    """The `assets` table at one location: batch writes, deletes, upkeep, and DuckDB views over it.

    Each operation opens the Delta table once and keeps working on that handle: delta-rs moves it to
    every version it commits, and a commit retried after a conflict first loads the versions the
    other writer added.
    """

    def __init__(
        self,
        where: Location,
        *,
        near_duplicate: float = 0.95,
        retention_hours: float = 168.0,
        compact_max_files: int = 1000,
    ):
        self.location = where
        self.near_duplicate = near_duplicate  # DAM_NEAR_DUPLICATE: the near_duplicates view's threshold
        self.retention_hours = retention_hours  # DAM_TABLE_RETENTION_HOURS: compact()'s default
        self.compact_max_files = compact_max_files  # DAM_COMPACT_MAX_FILES: more data files, compaction is due

    def describe(self) -> str:
        return self.location.describe()

    def open(self, as_of: "int | datetime | str | None" = None) -> DeltaTable | None:
        """The table at its latest version (or `as_of`: a version number or a time), None if none yet.

        (`DeltaTable.is_deltatable` is not used: it holds the GIL while it waits on the store, which
        deadlocks against an S3 server running in the same process, as tests' moto does.)
        """
        try:
            table = DeltaTable(self.location.uri, storage_options=self.location.storage_options)
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

    # ------------------------------------------------------------------------- writing

    def write_batch(
        self, batch: str, rows: list[dict[str, Any]], embedding_dim: int | None, store: "ObjectStore"
    ) -> int:
        """Replace the batch's rows with `rows` in one commit, owning each id's row (see
        dam_core/owners.py): rows of these ids in earlier batches go in the same commit, ids a later
        batch claimed are left to it. `store` holds the claims. Returns the table version written."""
        mine = {r["id"]: r for r in rows}
        claim(store, batch, mine)
        table = self.open()
        plan = _ownership(table, batch, mine, claimants(store, mine))
        kept = [r for r in rows if r["id"] not in plan.dropped]
        table = self._commit(
            table, lambda t: self._overwrite(t, batch, kept, embedding_dim, plan.replaced), f"batch {batch}"
        )
        version = table.version() if table is not None else 0
        # A later batch that claimed one of our ids after we looked owns it: it may have committed
        # first and found no row of ours to delete, so ours goes now.
        overtaken = _later_claimed(batch, claimants(store, [r["id"] for r in kept]))
        if overtaken:
            if table is None:
                table = self.open()
                assert table is not None  # this batch's commit created it
            self._delete(table, _batch_predicate(batch, sorted(overtaken)), f"delete {len(overtaken)} ids")
            version = table.version()
        release(store, [(i, b) for b, ids in plan.replaced.items() for i in ids])
        release(store, [(i, batch) for i in plan.dropped | overtaken])
        return version

    def _overwrite(
        self,
        table: DeltaTable | None,
        batch: str,
        rows: list[dict[str, Any]],
        dim: int | None,
        replaced: dict[str, list[str]],
    ) -> DeltaTable | None:
        """One commit: the batch's rows replace its old ones and the replaced batches' rows of its ids.
        Returns the handle, now at the version written (None when this commit created the table)."""
        predicate = " OR ".join(
            f"({p})"
            for p in [_batch_predicate(batch), *(_batch_predicate(b, ids) for b, ids in sorted(replaced.items()))]
        )
        write_deltalake(
            table if table is not None else self.location.uri,
            _arrow(rows, dim, batch_month(batch)),
            mode="overwrite",
            predicate=predicate,
            partition_by=[PARTITION_COLUMN],
            schema_mode="merge",
            storage_options=self.location.storage_options,
            configuration=_TABLE_PROPERTIES,
            writer_properties=WriterProperties(compression="ZSTD"),
        )
        return table

    def delete_rows(self, ids: list[str], batch: str | None = None) -> int:
        """Delete every row of these ids, or only those in `batch` (a Delta delete, one commit);
        returns how many went."""
        if not ids:
            return 0
        table = self.open()
        if table is None:
            return 0
        predicate = f"id IN ({_quoted(sorted(set(ids)))})" if batch is None else _batch_predicate(batch, ids)
        return self._delete(table, predicate, f"delete {len(ids)} ids")

    def remove_duplicates(self) -> int:
        """Delete every row that is not its id's best (a row without error, then the newest); the
        safety net behind the ownership claims, run by compaction."""
        table = self.open()
        return 0 if table is None else self._remove_duplicates(table)

    def _remove_duplicates(self, table: DeltaTable) -> int:
        con = duckdb.connect()
        con.register("_all", table.to_pyarrow_dataset())
        losers = con.execute(
            """
            WITH repeated AS (SELECT id FROM _all GROUP BY id HAVING count(*) > 1)
            SELECT batch, list(id) FROM (
                SELECT id, batch, row_number() OVER (
                    PARTITION BY id ORDER BY (error IS NULL) DESC, processed_at DESC, batch DESC) AS _rank
                FROM _all WHERE id IN (SELECT id FROM repeated)
            ) WHERE _rank > 1 GROUP BY batch
            """
        ).fetchall()
        if not losers:
            return 0
        predicate = " OR ".join(f"({_batch_predicate(b, ids)})" for b, ids in losers)
        return self._delete(table, predicate, "remove duplicates")

    def _delete(self, table: DeltaTable, predicate: str, what: str) -> int:
        metrics = self._commit(table, lambda t: t.delete(predicate), what)
        return int(metrics.get("num_deleted_rows", 0) or 0)

    def _commit(self, table: _Table, action: Callable[[_Table], T], what: str) -> T:
        """Run one commit on `table`, retrying a conflict with another writer (delta-rs re-checks on
        each try, after the handle loaded the versions it missed)."""
        for attempt in range(1, COMMIT_ATTEMPTS):
            try:
                return action(table)
            except CommitFailedError as err:
                pause = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
                log.info("%s: commit conflict (%s), retry %d in %.2f s", what, err, attempt, pause)
                time.sleep(pause)
                if table is None:
                    table = self.open()  # the other writer created the table
                else:
                    table.update_incremental()
        return action(table)  # the last try: a conflict now is raised

    # ------------------------------------------------------------------------- maintenance

    def compact(self, retention_hours: float | None = None) -> Compaction | None:
        """Merge small files, checkpoint the log, then remove files that no version newer than
        `retention_hours` ago references (default DAM_TABLE_RETENTION_HOURS; 0 forces erasure of
        deleted rows from history now)."""
        retention = self.retention_hours if retention_hours is None else retention_hours
        table = self.open()
        if table is None:
            return None
        before, files_before = table.version(), len(table.file_uris())
        duplicates = self._remove_duplicates(table)
        metrics = self._commit(table, lambda t: t.optimize.compact(target_size=COMPACT_FILE_BYTES), "compact")
        # The checkpoint and the vacuum see the latest version: a file another writer committed
        # since is referenced there, so it stays.
        table.update_incremental()
        table.create_checkpoint()
        vacuumed = table.vacuum(retention_hours=int(retention), enforce_retention_duration=False, dry_run=False)
        table.cleanup_metadata()
        table.update_incremental()
        return Compaction(
            version_before=before,
            version_after=table.version(),
            files_before=files_before,
            files_after=len(table.file_uris()),
            files_added=int(metrics.get("numFilesAdded", 0)),
            files_removed=int(metrics.get("numFilesRemoved", 0)),
            vacuumed=len(vacuumed),
            retention_hours=retention,
            duplicates_removed=duplicates,
        )

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The commit log, newest first: version, timestamp, operation and its parameters/metrics."""
        table = self.open()
        return [] if table is None else table.history(limit)

    # ------------------------------------------------------------------------- DuckDB

    def connect(
        self, database: str = ":memory:", as_of: "int | datetime | str | None" = None
    ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with views `assets` (one row per id), `assets_all` (every row of every
        batch) and `near_duplicates(a, b, score)` (pairs at or above DAM_NEAR_DUPLICATE), over the
        table's latest version or the one `as_of` names (a version number or a timestamp)."""
        table = self.open(as_of)
        con = duckdb.connect(database)
        files = table.file_uris() if table is not None else []
        if table is not None and files:
            present = {f.name for f in table.schema().fields}
            if self.location.is_local:
                # DuckDB's own Parquet reader over the version's files (about 2x the Arrow scan at 1M rows);
                # union_by_name: files written before a column existed read it as null.
                listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                # embedding[:]: DuckDB 2.0's Parquet reader leaves a NULL list's slot such that
                # list_cosine_similarity refuses the whole column; the slice hands on a clean list.
                columns = _column_list(present, {"embedding": "embedding[:]"})
                con.execute(
                    f"CREATE OR REPLACE VIEW assets_all AS SELECT {columns} FROM read_parquet([{listed}], union_by_name=true)"
                )
            else:
                con.register("_assets_dataset", table.to_pyarrow_dataset())
                con.execute(f"CREATE OR REPLACE VIEW assets_all AS SELECT {_column_list(present)} FROM _assets_dataset")
        else:
            con.register("_assets_empty", schema(None).empty_table())
            con.execute("CREATE OR REPLACE VIEW assets_all AS SELECT * FROM _assets_empty")
        con.execute(_ASSETS_VIEW)
        con.execute(_near_duplicates_view(self.near_duplicate))
        return con


# ----------------------------------------------------------------------------- DuckDB views


# One row per id is kept by the writes (dam_core/owners.py): the view only hides the partition column.
_ASSETS_VIEW = "CREATE OR REPLACE VIEW assets AS SELECT * FROM assets_all"


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


def _column_list(present: set[str], reads: dict[str, str] | None = None) -> str:
    """The views' columns in schema order, each read as `reads` says (default: as stored); one the
    table has never held (a column newer than every write) reads as null."""
    reads = reads or {}

    def typed_null(name: str) -> str:
        kind = schema(None).field(name).type
        if pa.types.is_timestamp(kind):
            return "NULL::TIMESTAMPTZ"
        if pa.types.is_list(kind):
            return "NULL::FLOAT[]" if name == "embedding" else "NULL::VARCHAR[]"
        if pa.types.is_floating(kind):
            return "NULL::DOUBLE"
        if pa.types.is_integer(kind):
            return "NULL::BIGINT"
        return "NULL::VARCHAR"

    return ", ".join(
        (f"{reads[c]} AS {c}" if c in reads else c) if c in present else f"{typed_null(c)} AS {c}" for c in COLUMNS
    )
