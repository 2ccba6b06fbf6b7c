"""The `assets` table: its Parquet schema, one file per batch, and DuckDB views over all of it."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import duckdb

    from dam_core.settings import Settings
    from dam_core.store import ObjectStore

from dam_core.layout import TABLE_PREFIX, table_key


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


def to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_batch(store: "ObjectStore", batch: str, rows: list[dict], embedding_dim: int | None) -> str:
    """Write one batch's rows as a single Parquet object (atomic put) and return its key."""
    table = pa.Table.from_pylist(rows, schema=schema(embedding_dim))
    key = table_key(batch)
    store.put(key, to_parquet_bytes(table), content_type="application/vnd.apache.parquet")
    return key


def read_batch(store: "ObjectStore", batch: str) -> pa.Table:
    return pq.read_table(io.BytesIO(store.get(table_key(batch))))


# ----------------------------------------------------------------------------- DuckDB


# One row per id: a successful row beats an error row, then the latest processed_at wins.
# A message redelivered into a second batch, or a re-materialized batch, never shows twice.
_ASSETS_VIEW = """
CREATE OR REPLACE VIEW assets AS
SELECT * EXCLUDE (_rank) FROM (
    SELECT *, row_number() OVER (
        PARTITION BY id ORDER BY (error IS NULL) DESC, processed_at DESC, batch DESC
    ) AS _rank
    FROM assets_all
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


def _local_files(settings: "Settings") -> tuple[str, bool]:
    root = settings.data_dir / "store" / TABLE_PREFIX
    pattern = str(root / "batch=*" / "*.parquet")
    return pattern, any(root.glob("batch=*/*.parquet"))


def _s3_dataset(settings: "Settings"):
    from urllib.parse import urlparse

    import pyarrow.dataset as ds
    from pyarrow import fs

    kwargs = {"region": settings.r2_region}
    if settings.r2_endpoint:
        u = urlparse(settings.r2_endpoint)
        kwargs["endpoint_override"] = u.netloc + u.path.rstrip("/")
        kwargs["scheme"] = u.scheme
    if settings.r2_access_key_id:
        kwargs["access_key"] = settings.r2_access_key_id.get_secret_value()
        kwargs["secret_key"] = settings.r2_secret_access_key.get_secret_value()
    s3 = fs.S3FileSystem(**kwargs)
    selector = fs.FileSelector(f"{settings.r2_bucket}/{TABLE_PREFIX.rstrip('/')}", recursive=True, allow_not_found=True)
    files = sorted(f.path for f in s3.get_file_info(selector) if f.is_file and f.path.endswith(".parquet"))
    if not files:
        return None
    return ds.dataset(files, filesystem=s3, format="parquet")


def connect(settings: "Settings | None" = None, database: str = ":memory:") -> "duckdb.DuckDBPyConnection":
    """A DuckDB connection with views `assets` (one row per id), `assets_all` (every row of every
    batch) and `near_duplicates(a, b, score)` (pairs at or above DAM_NEAR_DUPLICATE)."""
    import duckdb

    if settings is None:
        from dam_core.settings import get_settings

        settings = get_settings()
    con = duckdb.connect(database)
    if settings.uses_s3:
        dataset = _s3_dataset(settings)
        if dataset is not None:
            con.register("_assets_dataset", dataset)
            con.execute("CREATE OR REPLACE VIEW assets_all AS SELECT * FROM _assets_dataset")
        else:
            _empty(con)
    else:
        pattern, found = _local_files(settings)
        if found:
            quoted = "'" + pattern.replace("'", "''") + "'"  # DDL cannot take parameters
            con.execute(
                "CREATE OR REPLACE VIEW assets_all AS SELECT * FROM "
                f"read_parquet({quoted}, hive_partitioning=false, union_by_name=true)"
            )
        else:
            _empty(con)
    con.execute(_ASSETS_VIEW)
    con.execute(_near_duplicates_view(settings.dam_near_duplicate))
    return con


def _empty(con) -> None:
    empty = schema(None).empty_table()
    con.register("_assets_empty", empty)
    con.execute("CREATE OR REPLACE VIEW assets_all AS SELECT * FROM _assets_empty")


def _cell(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        if len(v) > 4 and all(isinstance(x, (int, float)) for x in v):
            return "[" + ", ".join(f"{x:.4g}" for x in v[:3]) + f", … ({len(v)} values)]"
        return json.dumps(list(v), default=str, ensure_ascii=False)
    if isinstance(v, datetime):
        return v.isoformat()
    return "" if v is None else str(v)


def format_result(rel, fmt: str = "table", max_width: int = 60) -> str:
    """Render a DuckDB relation as an aligned table, CSV or JSON lines."""
    names = rel.columns
    rows = rel.fetchall()
    if fmt == "json":
        return json.dumps([dict(zip(names, r)) for r in rows], default=str, ensure_ascii=False, indent=1)
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")  # the csv module's default is CRLF
        w.writerow(names)
        for r in rows:
            w.writerow([json.dumps(list(v)) if isinstance(v, (list, tuple)) else ("" if v is None else v) for v in r])
        return out.getvalue().rstrip("\n")
    cells = [[_cell(v).replace("\n", " ")[:max_width] for v in r] for r in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(names), "-+-".join("-" * w for w in widths)] + [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)
