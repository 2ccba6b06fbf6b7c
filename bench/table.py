"""The `assets` Delta table (dam_core.table): per-batch writes, compaction, and `dam sql` top-10 queries.

`python -m bench.table [--quick] [--out DIR] [--all-real]` (or `python -m bench.run --only table`).

One run, one table of N batches of 64 rows (512-float embeddings, ~60-char captions, tags, EXIF
mostly null, 32-hex ids, one batch in 100 carrying ~5% redeliveries of ids from earlier batches, ~1% error rows):

1. writes: ``dam_core.table.write_batch`` (real, into a local store under a temp DAM_DATA_DIR),
   timed per batch; the median (and mean / max: the delta-rs checkpoint every 100 commits lands
   in the window) of a window around batches 1, 10, 100, 1k, 5k, 10k, 15k and the last. With
   --compact-above N the table is compacted before a write_batch whenever it holds more than N data
   files, as compact_assets_sensor does in production (N = DAM_COMPACT_MAX_FILES = 1000).
   --quick (1,563 batches) writes every batch through write_batch. The full run (15,625 batches,
   1M rows) writes only the windows through write_batch (about 100 commits each) and the batches
   between them *in bulk*: the same rows as one Parquet file per batch (pyarrow, zstd), committed
   500 files per commit with ``DeltaTable.create_write_transaction`` (append, with the same
   statistics columns write_batch's delta-rs collects). The table then has exactly the files the
   per-batch run would have (one per batch), but fewer log versions. write_batch keeps one row per
   id (owner claims, dam_core/owners.py); the bulk applies the same outcome itself (ownership_plan)
   and writes the claims a later write_batch window needs to replace a bulk row. --all-real writes every batch
   through write_batch (about 15k commits: slow on 2 shared cores).
2. compaction: ``AssetTable.compact(0)`` timed in total and per step (optimize,
   checkpoint, vacuum, cleanup_metadata), data files and bytes before/after.
3. queries, p50 of several runs, a new ``AssetTable.connect()`` per run (as `dam sql`
   does), connect time included and reported apart:
     recent:  SELECT id, caption, processed_at FROM assets ORDER BY processed_at DESC LIMIT 10
     cosine:  SELECT id, list_cosine_similarity(embedding, $q::FLOAT[]) AS score FROM assets
              ORDER BY score DESC LIMIT 10
   on the compacted Delta table, against the LEGACY LAYOUT (the same rows as one Parquet file per
   batch, metadata/assets/batch={batch}/part-0.parquet, read with the pre-Delta connect():
   read_parquet(glob, union_by_name=true) and a row_number() window over every row; SQL copied
   below from dam_core/table.py at a9816a0). Both must return the same ids.
4. where the time goes on the Delta side (open_table / to_pyarrow_dataset / views, the scans; a check
   that assets_all holds one row per id, which write_batch now enforces) and ALTERNATIVES measured here
   only (not in dam_core): DuckDB read_parquet over DeltaTable.file_uris() instead of the Arrow dataset;
   write_batch after compaction and with delta.checkpointInterval=10.
5. `--write-profile`: why write_batch grows with the file count (snapshot loads, alternatives).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

BATCH = 64
DIM = 512
REDELIVERED = 0.05  # share of a redelivery batch's rows that repeat an id from an earlier batch
REDELIVERY_EVERY = 100  # one batch in this many carries redeliveries (they follow a crash, not every batch)
ERRORS = 0.01
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
BATCH_EVERY = timedelta(minutes=10)  # 15,625 batches span ~108 days: 4 monthly partitions
BULK_FILES_PER_COMMIT = 500
HERE = Path(__file__).resolve().parent

RECENT_SQL = "SELECT id, caption, processed_at FROM assets ORDER BY processed_at DESC LIMIT 10"
COSINE_SQL = (
    "SELECT id, list_cosine_similarity(embedding, $q::FLOAT[]) AS score FROM assets ORDER BY score DESC LIMIT 10"
)
QUERIES = {"recent": RECENT_SQL, "cosine": COSINE_SQL}
COSINE_ARRAY_SQL = (
    "SELECT id, array_cosine_similarity(embedding::FLOAT[512], $q::FLOAT[512]) AS score FROM assets "
    "ORDER BY score DESC LIMIT 10"
)

# ----------------------------------------------------------------------------- rows

_WORDS = (
    "a photo of the man woman dog cat child bicycle car street beach mountain lake tree house "
    "kitchen table chair window sunset night city crowd market boat river bridge snow field flowers "
    "red blue green old small large two three sitting standing walking next to on in with under near "
    "wooden white black building sky clouds road train station garden park bench"
).split()
_TAGS = (
    "person dog cat car tree sky building beach water food plant bicycle chair table screen "
    "document night indoor outdoor portrait"
).split()
_CAMERAS = [
    ("Apple", "iPhone 14 Pro", "iPhone 14 Pro back triple camera 6.86mm f/1.78"),
    ("Canon", "Canon EOS R6", "RF24-105mm F4 L IS USM"),
    ("SONY", "ILCE-7M3", "FE 35mm F1.8"),
    ("samsung", "SM-S911B", None),
]
_MIMES = ["image/jpeg"] * 17 + ["image/png"] * 2 + ["image/heic"]


def batch_key(k: int) -> str:
    """Batch k (0-based): keys sort by time like dam_core.manifests.new_batch_key's."""
    t = T0 + k * BATCH_EVERY
    return t.strftime("%Y%m%dT%H%M%SZ") + f"-{(k * 2654435761) & 0xFFFFF:05x}{k % 16:x}"


def _own_ids(k: int) -> list[str]:
    raw = np.random.default_rng([7, k]).bytes(16 * BATCH).hex()
    return [raw[32 * i : 32 * (i + 1)] for i in range(BATCH)]


def _ids_err(k: int):
    """Batch k's ids (a few redelivered from up to 50 batches earlier) and error flags, and the rng after them."""
    rng = np.random.default_rng([11, k])
    ids = _own_ids(k)
    if k > 0 and k % REDELIVERY_EVERY == REDELIVERY_EVERY // 2:  # redeliveries: ids first seen up to 50 batches earlier
        for pos in rng.choice(BATCH, size=rng.binomial(BATCH, REDELIVERED), replace=False):
            ids[pos] = _own_ids(k - int(rng.integers(1, min(k, 50) + 1)))[int(rng.integers(BATCH))]
    err = rng.random(BATCH) < ERRORS
    return rng, ids, err


def ownership_plan(n_batches: int, real: set[int]) -> dict:
    """What dam_core.table.write_batch's ownership rule (one row per id: the later batch's row wins,
    except that an error row never replaces a row without error) leaves of each batch, for the bulk
    part of the full run, which bypasses write_batch. Batch numbers are 1-based.

    Returns drop: {b: positions a bulk batch leaves out (superseded by a later bulk row, or an error
    row that loses to an earlier good row, or a row that would supersede a write_batch batch's row:
    a bulk commit cannot delete it)} and claims: {b: positions of bulk rows a later write_batch batch
    supersedes (their owner claims are written, so write_batch finds and replaces them)}."""
    owner: dict[str, tuple[int, int, bool]] = {}
    drop: dict[int, set[int]] = {}
    claims: dict[int, set[int]] = {}
    skipped_real = 0
    for b in range(1, n_batches + 1):
        _, ids, err = _ids_err(b - 1)
        for pos, (i, e) in enumerate(zip(ids, err, strict=True)):
            old = owner.get(i)
            if old is None:
                owner[i] = (b, pos, bool(e))
                continue
            b0, p0, e0 = old
            if b in real:
                if b0 not in real:
                    claims.setdefault(b0, set()).add(p0)  # write_batch decides, from the claim
                if not (e and not e0):
                    owner[i] = (b, pos, bool(e))
            elif b0 in real:
                drop.setdefault(b, set()).add(pos)  # keep the write_batch batch's row
                skipped_real += 1
            elif e and not e0:
                drop.setdefault(b, set()).add(pos)
            else:
                drop.setdefault(b0, set()).add(p0)
                owner[i] = (b, pos, bool(e))
    return {"drop": drop, "claims": claims, "skipped_superseding_real": skipped_real, "ids": len(owner)}


def batch_table(k: int):
    """Batch k's 64 rows as an Arrow table of dam_core.table.schema(512) (deterministic in k)."""
    import pyarrow as pa

    from dam_core.table import schema

    rng, ids, err = _ids_err(k)
    key = batch_key(k)
    bt = T0 + k * BATCH_EVERY
    exif = rng.random(BATCH) < 0.2
    gps = exif & (rng.random(BATCH) < 0.25)
    emb = rng.standard_normal((BATCH, DIM), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    captions, tags, cams = [], [], []
    for i in range(BATCH):
        if err[i]:
            captions.append(None)
            tags.append(None)
        else:
            words = rng.choice(_WORDS, size=14)
            cap, j = "a photo of", 0
            while len(cap) < 55:
                cap += " " + words[j]
                j += 1
            captions.append(cap)
            tags.append([str(t) for t in rng.choice(_TAGS, size=int(rng.integers(0, 6)), replace=False)])
        cams.append(_CAMERAS[int(rng.integers(len(_CAMERAS)))] if exif[i] else (None, None, None))
    mimes = [_MIMES[int(m)] for m in rng.integers(len(_MIMES), size=BATCH)]
    ext = {"image/jpeg": "jpg", "image/png": "png", "image/heic": "heic"}
    ts = pa.timestamp("us", tz="UTC")
    cols = {
        "id": ids,
        "filename": [
            f"IMG_{int(n):05d}.{ext[m]}" for n, m in zip(rng.integers(100000, size=BATCH), mimes, strict=True)
        ],
        "r2_key": [f"assets/{u}.{ext[m]}" for u, m in zip(ids, mimes, strict=True)],
        "vector_key": [None if err[i] else f"vectors/{u}.json" for i, u in enumerate(ids)],
        "mime_type": mimes,
        "caption": captions,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), DIM, mask=pa.array(err)),
        "width": pa.array(rng.choice([4032, 1600, 1920, 3000, 1080], size=BATCH), pa.int32()),
        "height": pa.array(rng.choice([3024, 1200, 1080, 2000, 1920], size=BATCH), pa.int32()),
        "bytes": pa.array(rng.integers(80_000, 6_000_000, size=BATCH), pa.int64()),
        "sha256": [u * 2 for u in ids],
        "uploaded_at": pa.array([bt - timedelta(seconds=int(s)) for s in rng.integers(5, 600, size=BATCH)], ts),
        # unique per row, later for a redelivery: both layouts must agree on the top-10 by recency
        "processed_at": pa.array([bt + timedelta(milliseconds=250 * i) for i in range(BATCH)], ts),
        "caption_model": ["Salesforce/blip-image-captioning-base"] * BATCH,
        "embedding_model": ["openai/clip-vit-base-patch32"] * BATCH,
        "batch": [key] * BATCH,
        "error": ["TimeoutError: fetching original timed out after 30 s" if e else None for e in err],
        "tags": pa.array(tags, pa.list_(pa.string())),
        "taken_at": pa.array(
            [
                bt - timedelta(days=int(d)) if x else None
                for d, x in zip(rng.integers(0, 900, size=BATCH), exif, strict=True)
            ],
            ts,
        ),
        "camera_make": [c[0] for c in cams],
        "camera_model": [c[1] for c in cams],
        "lens": [c[2] for c in cams],
        "gps_lat": pa.array(np.where(gps, rng.uniform(-60, 70, size=BATCH), np.nan), pa.float64(), mask=~gps),
        "gps_lon": pa.array(np.where(gps, rng.uniform(-180, 180, size=BATCH), np.nan), pa.float64(), mask=~gps),
        "orientation": pa.array([1 if x else None for x in exif], pa.int8()),
    }
    return pa.table(cols, schema=schema(DIM))


# ----------------------------------------------------------------------------- helpers


def _ms(xs) -> float:
    return round(1000 * statistics.median(xs), 1)


def _du(path: Path, suffix: str = ".parquet") -> tuple[int, int]:
    n = size = 0
    for p in path.rglob(f"*{suffix}"):
        if "_delta_log" in p.parts:
            continue
        n += 1
        size += p.stat().st_size
    return n, size


def _log_state(uri: str) -> dict:
    """Files in _delta_log and the latest checkpoint (its size and its add/remove actions)."""
    import pyarrow.parquet as pq

    log_dir = Path(uri) / "_delta_log"
    names = os.listdir(log_dir)
    out = {"log_files": len(names), "json_commits": sum(n.endswith(".json") for n in names)}
    cps = sorted(n for n in names if n.endswith(".checkpoint.parquet"))
    if cps:
        cp = log_dir / cps[-1]
        t = pq.read_table(cp, columns=["add", "remove"])
        out.update(
            {
                "checkpoint": cps[-1],
                "checkpoint_kib": round(cp.stat().st_size / 1024, 1),
                "checkpoint_adds": t["add"].length() - t["add"].null_count,
                "checkpoint_removes": t["remove"].length() - t["remove"].null_count,
            }
        )
    return out


# ----------------------------------------------------------------------------- 1. writes


def _stat_ts(v) -> str:
    return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if v is not None else None


def _bulk_file(uri: str, table, month: str):
    """One batch's rows as one data file of the Delta table (what write_batch would write), and its AddAction."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction

    data = table.set_column(
        table.schema.get_field_index("embedding"), "embedding", table.column("embedding").cast(pa.list_(pa.float32()))
    )
    rel = f"batch_month={month}/part-00000-{uuid.uuid4()}-c000.zstd.parquet"
    path = Path(uri) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(data, path, compression="zstd")
    mins, maxs, nulls = {}, {}, {}
    for c in ("batch", "uploaded_at", "processed_at", "taken_at"):  # dam_core.table._STATS_COLUMNS
        col = data.column(c)
        nulls[c] = col.null_count
        if col.null_count < len(col):
            mm = pc.min_max(col).as_py()
            conv = _stat_ts if c != "batch" else (lambda v: v)
            mins[c], maxs[c] = conv(mm["min"]), conv(mm["max"])
    stats = json.dumps({"numRecords": data.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})
    return AddAction(rel, path.stat().st_size, {"batch_month": month}, int(time.time() * 1000), True, stats)


def _bulk_commit(uri: str, actions: list) -> None:
    from deltalake import DeltaTable

    dt = DeltaTable(uri)
    dt.create_write_transaction(actions, mode="append", schema=dt.schema(), partition_by=["batch_month"])


@contextmanager
def _timing_open_table():
    """Time the AssetTable.open() each write_batch makes (one per call, before its commit)."""
    from dam_core.table import AssetTable

    spent: list[float] = []
    real = AssetTable.open

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t)

    AssetTable.open = timed
    try:
        yield spent
    finally:
        AssetTable.open = real


def write_window(settings, first_k: int, n: int) -> dict:
    """n more batches (new keys from batch index first_k) through write_batch, timed."""
    from dam_core.store import make_store
    from dam_core.table import make_table

    table, store = make_table(settings), make_store(settings)
    times, reopen = [], []
    for k in range(first_k, first_k + n):
        rows = batch_table(k).to_pylist()
        with _timing_open_table() as opened:
            t = time.perf_counter()
            table.write_batch(batch_key(k), rows, DIM, store)
            times.append(time.perf_counter() - t)
        reopen.append(sum(opened))
    return {
        "batches": [first_k + 1, first_k + n],
        "median_ms": _ms(times),
        "mean_ms": round(1000 * statistics.fmean(times), 1),
        "max_ms": round(1000 * max(times), 1),
        "open_table_median_ms": _ms(reopen),
    }


def sample_points(n_batches: int, quick: bool) -> list[int]:
    pts = [1, 10, 100, 1000] if quick else [1, 10, 100, 1000, 5000, 10000, 15000]
    return sorted({p for p in pts if p <= n_batches} | {n_batches})


def build_delta(
    settings, n_batches: int, points: list[int], window: int, all_real: bool, log=print, compact_above: int = 0
) -> dict:
    """Write the table; returns the per-window write times and what was done in bulk. With
    `compact_above`, the table is compacted (as compact_assets_sensor does) whenever it holds more
    data files than that before a write_batch call; those compactions are timed apart."""
    from dam_core.store import make_store
    from dam_core.table import batch_month, make_table

    assets, store = make_table(settings), make_store(settings)
    uri = assets.location.uri
    half = window // 2
    windows = {}
    for p in points:
        lo = max(1, p - half)
        hi = min(n_batches, lo + window - 1)
        lo = max(1, hi - window + 1)
        windows[p] = (lo, hi)
    real = set(range(1, n_batches + 1)) if all_real else {b for lo, hi in windows.values() for b in range(lo, hi + 1)}
    times: dict[int, float] = {}
    reopen: dict[int, float] = {}
    pending: list = []
    plan = (
        ownership_plan(n_batches, real) if not all_real else {"drop": {}, "claims": {}, "skipped_superseding_real": 0}
    )
    owners_root = settings.data_dir / "store"
    claims_written = 0
    bulk_commits = bulk_files = 0
    compactions: list[dict] = []
    t_all = time.perf_counter()
    t_real = 0.0
    last_log = time.monotonic()
    for b in range(1, n_batches + 1):
        k = b - 1
        table = batch_table(k)
        if b in real:
            if pending:
                _bulk_commit(uri, pending)
                bulk_commits += 1
                bulk_files += len(pending)
                pending = []
                os.sync()  # the bulk's dirty pages are not flushed inside the next timed window
            current = assets.open() if compact_above else None
            if current is not None and len(current.file_uris()) > compact_above:
                t = time.perf_counter()
                done = assets.compact(retention_hours=168)
                compactions.append(
                    {
                        "before_batch": b,
                        "seconds": round(time.perf_counter() - t, 2),
                        "files_before": done.files_before,
                        "files_after": done.files_after,
                    }
                )
                log(
                    f"  compaction before batch {b:,}: {done.files_before:,} -> {done.files_after:,} files "
                    f"in {compactions[-1]['seconds']} s"
                )
            rows = table.to_pylist()
            with _timing_open_table() as opened:
                t = time.perf_counter()
                assets.write_batch(batch_key(k), rows, DIM, store)
                times[b] = time.perf_counter() - t
            reopen[b] = sum(opened)
            t_real += times[b]
        else:
            drop = plan["drop"].get(b)
            if drop:
                import pyarrow as pa

                table = table.filter(pa.array([i not in drop for i in range(table.num_rows)]))
            for pos in plan["claims"].get(b, ()):  # owner claims write_batch will look for (empty files)
                from dam_core.layout import owner_key

                path = owners_root / owner_key(table.column("id")[pos].as_py(), batch_key(k))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
                claims_written += 1
            pending.append(_bulk_file(uri, table, batch_month(batch_key(k))))
            if len(pending) >= BULK_FILES_PER_COMMIT:
                _bulk_commit(uri, pending)
                bulk_commits += 1
                bulk_files += len(pending)
                pending = []
        if time.monotonic() - last_log > 30:
            last_log = time.monotonic()
            n_real = len(times)
            log(
                f"  table: batch {b:,}/{n_batches:,} ({n_real:,} through write_batch, "
                f"{1000 * t_real / max(n_real, 1):.0f} ms mean; {bulk_files:,} bulk files)"
            )
    if pending:
        _bulk_commit(uri, pending)
        bulk_commits += 1
        bulk_files += len(pending)
    total_s = time.perf_counter() - t_all
    out_windows = []
    for p, (lo, hi) in windows.items():
        w = [times[b] for b in range(lo, hi + 1) if b in times]
        ro = [reopen[b] for b in range(lo, hi + 1) if b in reopen]
        out_windows.append(
            {
                "batch": p,
                "window": [lo, hi],
                "rows_before": (p - 1) * BATCH,
                "open_table_median_ms": _ms(ro),
                "median_ms": _ms(w),
                "mean_ms": round(1000 * statistics.fmean(w), 1),
                "p90_ms": round(1000 * sorted(w)[int(0.9 * (len(w) - 1))], 1),
                "max_ms": round(1000 * max(w), 1),
            }
        )
    first, last = out_windows[0]["median_ms"], out_windows[-1]["median_ms"]
    all_t = list(times.values())
    return {
        "batches": n_batches,
        "rows_written": n_batches * BATCH,
        "method": (
            "every batch through write_batch"
            if all_real
            else f"write_batch for {len(real):,} batches in windows of {window} around the sample points; "
            f"the other {bulk_files:,} batches as one pyarrow file each, {bulk_commits} "
            f"create_write_transaction append commits of <= {BULK_FILES_PER_COMMIT} files, with "
            f"write_batch's one-row-per-id outcome applied ({sum(len(v) for v in plan['drop'].values()):,} "
            f"bulk rows left out) and {claims_written:,} owner claims for rows a write_batch window replaces"
        ),
        "write_batch_calls": len(times),
        "bulk_files": bulk_files,
        "bulk_commits": bulk_commits,
        "compact_above": compact_above,
        "compactions": compactions,
        "bulk_rows_left_out": sum(len(v) for v in plan["drop"].values()),
        "bulk_rows_left_out_superseding_write_batch_rows": plan["skipped_superseding_real"],
        "bulk_claims_written": claims_written,
        "windows": out_windows,
        "write_batch_median_ms": _ms(all_t),
        "write_batch_mean_ms": round(1000 * statistics.fmean(all_t), 1),
        "write_batch_rate_per_s": round(len(all_t) / sum(all_t), 2),
        "first_last_ratio": round(last / first, 2) if first else None,
        "flat": bool(first and last <= 2.0 * first),
        "target": "per-batch write flat (last window median <= 2x first)",
        "build_s": round(total_s, 1),
    }


# ----------------------------------------------------------------------------- 2. compaction


@contextmanager
def _timed_steps(steps: dict):
    """Time the delta-rs calls compact() makes, without touching dam_core."""
    from deltalake import DeltaTable
    from deltalake.table import TableOptimizer

    originals = {}

    def wrap(cls, name, label):
        fn = getattr(cls, name)
        originals[(cls, name)] = fn

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                steps[label] = round(steps.get(label, 0.0) + time.perf_counter() - t, 2)

        setattr(cls, name, timed)

    from dam_core.table import AssetTable

    wrap(AssetTable, "_remove_duplicates", "remove_duplicates_s")
    wrap(TableOptimizer, "compact", "optimize_s")
    wrap(DeltaTable, "create_checkpoint", "checkpoint_s")
    wrap(DeltaTable, "vacuum", "vacuum_s")
    wrap(DeltaTable, "cleanup_metadata", "cleanup_metadata_s")
    try:
        yield
    finally:
        for (cls, name), fn in originals.items():
            setattr(cls, name, fn)


def compaction(settings, log=print) -> dict:
    from dam_core.table import make_table

    table = make_table(settings)
    uri = table.location.uri
    files_before, bytes_before = _du(Path(uri))
    log_before = _log_state(uri)
    steps: dict = {}
    t = time.perf_counter()
    with _timed_steps(steps):
        result = table.compact(retention_hours=0)
    total = time.perf_counter() - t
    files_after, bytes_after = _du(Path(uri))
    out = {
        "seconds": round(total, 1),
        **steps,
        **result.as_metadata(),
        "data_files_on_disk_before": files_before,
        "data_files_on_disk_after": files_after,
        "mib_before": round(bytes_before / 2**20),
        "mib_after": round(bytes_after / 2**20),
        "log_before": log_before,
        "log_after": _log_state(uri),
    }
    log(
        f"  compact: {total:.1f} s ({steps}); files {result.files_before:,} -> {result.files_after:,}, "
        f"vacuumed {result.vacuumed:,}"
    )
    return out


# ----------------------------------------------------------------------------- legacy layout

# LEGACY LAYOUT: the pre-Delta table, copied from dam_core/table.py at a9816a0 (for comparison only).
_LEGACY_ASSETS_VIEW = """
CREATE OR REPLACE VIEW assets AS
SELECT * EXCLUDE (_rank) FROM (
    SELECT *, row_number() OVER (
        PARTITION BY id ORDER BY (error IS NULL) DESC, processed_at DESC, batch DESC
    ) AS _rank
    FROM assets_all
) WHERE _rank = 1
"""


def legacy_connect(root: Path):
    """LEGACY LAYOUT: the pre-Delta dam_core.table.connect() on a local store (a9816a0)."""
    import duckdb

    con = duckdb.connect(":memory:")
    pattern = str(root / "batch=*" / "*.parquet")
    quoted = "'" + pattern.replace("'", "''") + "'"
    con.execute(
        "CREATE OR REPLACE VIEW assets_all AS SELECT * FROM "
        f"read_parquet({quoted}, hive_partitioning=false, union_by_name=true)"
    )
    con.execute(_LEGACY_ASSETS_VIEW)
    return con


def build_legacy(root: Path, n_batches: int, log=print) -> dict:
    """LEGACY LAYOUT: the same rows, one file per batch as the old write_batch wrote it (pq zstd)."""
    import pyarrow.parquet as pq

    t = time.perf_counter()
    for k in range(n_batches):
        d = root / f"batch={batch_key(k)}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(batch_table(k), d / "part-0.parquet", compression="zstd")
    files, size = _du(root)
    log(f"  legacy layout: {files:,} files, {size / 2**20:.0f} MiB in {time.perf_counter() - t:.0f} s")
    return {"files": files, "mib": round(size / 2**20), "build_s": round(time.perf_counter() - t, 1)}


# ----------------------------------------------------------------------------- 3. queries


def _query_vector() -> list[float]:
    q = np.random.default_rng(5).standard_normal(DIM).astype(np.float32)
    return (q / np.linalg.norm(q)).tolist()


def measure(make_con, runs: int, queries: dict = QUERIES, label: str = "", log=print) -> dict:
    """p50 over `runs` of connect + query, a new connection per run (as `dam sql`)."""
    from bench.fixtures import CpuMonitor

    params = {"q": _query_vector()}
    out = {}
    for name, sql in queries.items():
        failed = None
        if "list_cosine_similarity" in sql:
            # DuckDB 2.0.1: list_cosine_similarity raises "left argument can not contain NULL values" when a
            # NULL embedding (an error row) spans NULL child values in the vector DuckDB gets (it does not skip
            # NULL lists). Then the array form of the same query is measured instead, and the error recorded.
            try:
                c = make_con()
                c.execute(sql, params).fetchall()
                c.close()
            except Exception as err:
                failed = f"{type(err).__name__}: {err}"
                sql = COSINE_ARRAY_SQL
                log(f"  {label} {name}: list_cosine_similarity FAILED ({failed}); measuring the array form")
        conn_t, query_t, total_t = [], [], []
        res = None
        cpu = CpuMonitor()
        for _ in range(runs):
            t0 = time.perf_counter()
            con = make_con()
            t1 = time.perf_counter()
            res = con.execute(sql, params if "$q" in sql else None).fetchall()
            t2 = time.perf_counter()
            con.close()
            conn_t.append(t1 - t0)
            query_t.append(t2 - t1)
            total_t.append(t2 - t0)
        out[name] = {
            "total_ms": _ms(total_t),
            "connect_ms": _ms(conn_t),
            "query_ms": _ms(query_t),
            "total_ms_all": [round(1000 * x) for x in total_t],
            "ids": [r[0] for r in res],
            "cpu": cpu.stop(),
            "list_cosine_error": failed,
            "sql": sql,
        }
        log(
            f"  {label} {name}: {out[name]['total_ms']} ms = connect {out[name]['connect_ms']} + "
            f"query {out[name]['query_ms']} (p50 of {runs}; other cores {out[name]['cpu']['other_cores']})"
        )
    return out


def profile_delta(settings, runs: int, log=print) -> dict:
    """Where the Delta side's time goes, and alternatives to AssetTable.connect (measured here only)."""
    import duckdb
    from deltalake import DeltaTable

    from dam_core.table import _ASSETS_VIEW, PARTITION_COLUMN, make_table

    assets = make_table(settings)
    uri = assets.location.uri
    out: dict = {}
    # connect() split: DeltaTable load (log replay), to_pyarrow_dataset, DuckDB register + views
    load, dataset, views = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        table = assets.open()
        t1 = time.perf_counter()
        ds = table.to_pyarrow_dataset()
        t2 = time.perf_counter()
        con = duckdb.connect(":memory:")
        con.register("_assets_dataset", ds)
        con.execute(f"CREATE OR REPLACE VIEW assets_all AS SELECT * EXCLUDE ({PARTITION_COLUMN}) FROM _assets_dataset")
        con.execute(_ASSETS_VIEW)
        t3 = time.perf_counter()
        con.close()
        load += [t1 - t0]
        dataset += [t2 - t1]
        views += [t3 - t2]
    out["connect_split_ms"] = {
        "open_table": _ms(load),
        "to_pyarrow_dataset": _ms(dataset),
        "duckdb_register_views": _ms(views),
    }
    log(f"  connect split: {out['connect_split_ms']}")

    # the dedupe: which ids repeat, and the query on assets_all (no dedupe) for comparison
    con = assets.connect()
    t = time.perf_counter()
    repeated = con.execute(
        "SELECT count(*) FROM (SELECT id FROM assets_all GROUP BY id HAVING count(*) > 1)"
    ).fetchone()[0]
    out["repeated_ids"] = repeated
    out["repeated_group_by_ms"] = round(1000 * (time.perf_counter() - t), 1)
    t = time.perf_counter()
    out["rows_all"] = con.execute("SELECT count(*) FROM assets_all").fetchone()[0]
    out["count_assets_all_ms"] = round(1000 * (time.perf_counter() - t), 1)
    t = time.perf_counter()
    out["rows_assets"] = con.execute("SELECT count(*) FROM assets").fetchone()[0]
    out["count_assets_ms"] = round(1000 * (time.perf_counter() - t), 1)
    con.close()
    log(
        f"  dedupe: {repeated:,} repeated ids, GROUP BY {out['repeated_group_by_ms']} ms; "
        f"rows {out['rows_all']:,} -> {out['rows_assets']:,}"
    )
    con = assets.connect()
    t = time.perf_counter()
    con.execute("SELECT max(len(embedding)) FROM assets_all").fetchall()
    out["scan_embeddings_ms"] = round(1000 * (time.perf_counter() - t), 1)
    t = time.perf_counter()
    con.execute("SELECT max(processed_at), max(caption), max(id) FROM assets_all").fetchall()
    out["scan_id_caption_processed_at_ms"] = round(1000 * (time.perf_counter() - t), 1)
    con.close()
    log(
        f"  scans of assets_all: embeddings {out['scan_embeddings_ms']} ms, id+caption+processed_at "
        f"{out['scan_id_caption_processed_at_ms']} ms"
    )

    # ALTERNATIVE (not in dam_core): DuckDB's own Parquet reader over the table's current files.
    # Valid for this table: no deletion vectors, no column mapping; the partition column is in the path only.
    def read_parquet_con():
        files = DeltaTable(uri).file_uris()
        c = duckdb.connect(":memory:")
        c.execute(
            "CREATE OR REPLACE VIEW assets_all AS SELECT * FROM read_parquet($files, hive_partitioning=false)".replace(
                "$files", "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
            )
        )
        c.execute(_ASSETS_VIEW)
        return c

    # DuckDB 2.0.1's Parquet reader + list_cosine_similarity raises "left argument can not contain NULL
    # values" on these files (error rows have a NULL embedding; it fails even with WHERE embedding IS NOT
    # NULL); the array form of the same cosine works, so the alternative is measured with it.
    try:
        read_parquet_con().execute(COSINE_SQL, {"q": _query_vector()}).fetchall()
        out["alt_list_cosine_error"] = None
    except Exception as err:
        out["alt_list_cosine_error"] = f"{type(err).__name__}: {err}"
    alt_queries = {"recent": RECENT_SQL, "cosine": COSINE_ARRAY_SQL}
    out["alt_read_parquet_file_uris"] = measure(read_parquet_con, runs, alt_queries, "ALT read_parquet(file_uris)", log)
    # the same array-form cosine through the product's connect(), for a like-for-like comparison
    out["array_cosine_product"] = measure(
        assets.connect, runs, {"cosine": COSINE_ARRAY_SQL}, "delta (product connect), array cosine", log
    )
    return out


# ----------------------------------------------------------------------------- run


def run(
    quick: bool,
    out_dir: Path | None = None,
    all_real: bool = False,
    keep: str | None = None,
    batches: int | None = None,
    log=print,
    compact_above: int = 0,
) -> dict:
    import deltalake
    import duckdb

    from bench.fixtures import machine, other_load
    from dam_core.settings import load_settings
    from dam_core.table import location, make_table

    n_batches = batches or (1_563 if quick else 15_625)
    runs = 5
    window = 50 if quick else 100
    out: dict = {
        "mode": "quick" if quick else "full",
        "machine": machine(),
        "versions": {"deltalake": deltalake.__version__, "duckdb": duckdb.__version__},
        "other_cores_at_start": other_load(2.0),
        "rows": n_batches * BATCH,
        "batches": n_batches,
        "batch_rows": BATCH,
        "dim": DIM,
    }
    t_run = time.perf_counter()
    parent = keep or None
    tmp = tempfile.mkdtemp(prefix="bench-table-", dir=parent)
    try:
        settings = load_settings(dam_data_dir=str(Path(tmp) / "delta"))
        uri = location(settings).uri
        Path(uri).mkdir(parents=True, exist_ok=True)
        log(
            f"table: {n_batches:,} batches x {BATCH} rows into {uri} "
            f"({'all through write_batch' if quick or all_real else 'write_batch windows + bulk'})"
        )
        out["writes"] = build_delta(
            settings,
            n_batches,
            sample_points(n_batches, quick),
            window,
            all_real=quick or all_real,
            log=log,
            compact_above=compact_above,
        )
        for w in out["writes"]["windows"]:
            log(
                f"  write_batch at batch {w['batch']:>6,}: median {w['median_ms']} ms, mean {w['mean_ms']}, "
                f"max {w['max_ms']} (window {w['window']})"
            )

        legacy_root = Path(tmp) / "legacy" / "store" / "metadata" / "assets"
        log("table: legacy layout (one file per batch, the pre-Delta reader) with the same rows")
        out["legacy_build"] = build_legacy(legacy_root, n_batches, log=log)

        assets = make_table(settings)
        # before compaction: one run of each, to show what compaction buys
        log("table: before compaction (one file per batch)")
        out["delta_before_compaction"] = measure(assets.connect, 1, QUERIES, "delta uncompacted", log)
        out["log_before"] = _log_state(uri)
        t = time.perf_counter()
        assets.open()
        out["open_table_before_ms"] = round(1000 * (time.perf_counter() - t), 1)

        log("table: compaction")
        out["compaction"] = compaction(settings, log=log)

        log("table: queries (a new connect() per run)")
        out["delta"] = measure(assets.connect, runs, QUERIES, "delta compacted", log)
        lc = legacy_connect(legacy_root)
        out["legacy_distinct_ids"] = lc.execute("SELECT count(DISTINCT id) FROM assets_all").fetchone()[0]
        lc.close()
        out["legacy"] = measure(
            lambda: legacy_connect(legacy_root), 3 if not quick else runs, QUERIES, "LEGACY layout", log
        )
        target = 100 if quick else 300
        for q in QUERIES:
            d, lg = out["delta"][q], out["legacy"][q]
            d["same_ids_as_legacy"] = d["ids"] == lg["ids"]
            d["speedup_vs_legacy"] = round(lg["total_ms"] / d["total_ms"], 1) if d["total_ms"] else None
            d["target_ms"] = target
            d["met"] = d["total_ms"] < target
        log("table: profile and alternatives (measured here only)")
        out["profile"] = profile_delta(settings, runs if quick else 3, log=log)
        for q in QUERIES:
            alt = out["profile"]["alt_read_parquet_file_uris"][q]
            alt["same_ids_as_product"] = alt["ids"] == out["delta"][q]["ids"]

        log("table: write_batch after compaction (100 new batches), then with delta.checkpointInterval=10 (100 more)")
        from deltalake import DeltaTable

        out["writes_after_compaction"] = write_window(settings, n_batches, 100)
        DeltaTable(uri).alter.set_table_properties({"delta.checkpointInterval": "10"})
        out["writes_checkpoint_interval_10"] = write_window(settings, n_batches + 100, 100)
        log(
            f"  after compaction: {out['writes_after_compaction']}; interval 10: {out['writes_checkpoint_interval_10']}"
        )
    finally:
        if keep is None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            out["kept"] = tmp
    out["seconds"] = round(time.perf_counter() - t_run, 1)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / (
            ("table-quick" if quick else "table") + (f"-compact{compact_above}" if compact_above else "") + ".json"
        )
        path.write_text(json.dumps(out, indent=1, default=str))
        log(f"table: wrote {path}")
    return out


def write_profile(n_batches: int, keep: str | None = None, log=print) -> dict:
    """Why write_batch grows with the number of data files (`--write-profile`): a table of n_batches
    files (batch 1 through write_batch, the rest in bulk as in the full run), then the snapshot loads
    and ALTERNATIVE writes measured against the product's write_batch, 50 new batches each."""
    import shutil

    from deltalake import DeltaTable, WriterProperties, write_deltalake

    from dam_core.settings import load_settings
    from dam_core.table import _STATS_COLUMNS, PARTITION_COLUMN, _arrow, batch_month, location

    tmp = tempfile.mkdtemp(prefix="bench-table-wp-", dir=keep)
    out: dict = {"files": n_batches}
    try:
        settings = load_settings(dam_data_dir=str(Path(tmp) / "delta"))
        uri = location(settings).uri
        Path(uri).mkdir(parents=True, exist_ok=True)
        build_delta(settings, n_batches, [1], 1, all_real=False, log=log)
        k = n_batches
        out["product_write_batch"] = write_window(settings, k, 100)  # a normal log tail: one checkpoint
        k += 100
        log(f"  product write_batch at {n_batches:,} files: {out['product_write_batch']}")
        loads = {}
        # without_files / skip_stats: deprecated and ignored by deltalake 1.6 (it warns), measured to show it
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning, module=__name__)
        for name, kw in (
            ("DeltaTable(uri)", {}),
            ("DeltaTable(uri, without_files=True)", {"without_files": True}),
            ("DeltaTable(uri, skip_stats=True)", {"skip_stats": True}),
        ):
            ts = []
            for _ in range(10):
                t = time.perf_counter()
                DeltaTable(uri, **kw).version()
                ts.append(time.perf_counter() - t)
            loads[name] = _ms(ts)
        out["snapshot_load_ms"] = loads
        log(f"  snapshot loads: {loads}")

        def alt_write(k: int) -> tuple[float, float]:
            """ALTERNATIVE write_batch: the same write_deltalake, then the version from a snapshot without files."""
            batch = batch_key(k)
            month = batch_month(batch)
            data = _arrow(batch_table(k).to_pylist(), DIM, month)
            t0 = time.perf_counter()
            write_deltalake(
                uri,
                data,
                mode="overwrite",
                predicate=f"{PARTITION_COLUMN} = '{month}' AND batch = '{batch}'",
                partition_by=[PARTITION_COLUMN],
                schema_mode="merge",
                configuration={"delta.dataSkippingStatsColumns": _STATS_COLUMNS},
                writer_properties=WriterProperties(compression="ZSTD"),
            )
            t1 = time.perf_counter()
            DeltaTable(uri, without_files=True).version()
            return t1 - t0, time.perf_counter() - t1

        w, v = [], []
        for i in range(100):
            a, b = alt_write(k + i)
            w.append(a)
            v.append(b)
        k += 100
        out["alt_version_without_files"] = {
            "write_deltalake_median_ms": _ms(w),
            "version_lookup_median_ms": _ms(v),
            "total_median_ms": _ms([a + b for a, b in zip(w, v, strict=True)]),
            "mean_ms": round(1000 * statistics.fmean([a + b for a, b in zip(w, v, strict=True)]), 1),
        }
        log(f"  ALT version lookup without files: {out['alt_version_without_files']}")

        def alt_write_object(k: int) -> float:
            """ALTERNATIVE write_batch: load the table once, write through that object, read its version."""
            batch = batch_key(k)
            month = batch_month(batch)
            data = _arrow(batch_table(k).to_pylist(), DIM, month)
            t0 = time.perf_counter()
            table = DeltaTable(uri)
            write_deltalake(
                table,
                data,
                mode="overwrite",
                predicate=f"{PARTITION_COLUMN} = '{month}' AND batch = '{batch}'",
                partition_by=[PARTITION_COLUMN],
                schema_mode="merge",
                configuration={"delta.dataSkippingStatsColumns": _STATS_COLUMNS},
                writer_properties=WriterProperties(compression="ZSTD"),
            )
            version = table.version()
            dt = time.perf_counter() - t0
            assert version == DeltaTable(uri).version(), "the object's version is not the table's"
            return dt

        ts = [alt_write_object(k + i) for i in range(100)]
        k += 100
        out["alt_write_through_table_object"] = {
            "median_ms": _ms(ts),
            "mean_ms": round(1000 * statistics.fmean(ts), 1),
            "max_ms": round(1000 * max(ts), 1),
        }
        log(f"  ALT write through one DeltaTable object: {out['alt_write_through_table_object']}")
        out["product_write_batch_again"] = write_window(settings, k, 100)
        k += 100
        log(f"  product write_batch again: {out['product_write_batch_again']}")
        DeltaTable(uri).alter.set_table_properties({"delta.checkpointInterval": "10"})
        out["alt_checkpoint_interval_10"] = write_window(settings, k, 100)
        log(f"  ALT checkpointInterval=10: {out['alt_checkpoint_interval_10']}")
        out["log"] = _log_state(uri)
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def lines(r: dict) -> list[str]:
    """The printed table."""
    w = r["writes"]
    c = r["compaction"]
    p = r["profile"]
    L = [
        f"== assets Delta table: {r['rows']:,} rows = {r['batches']:,} batches x {r['batch_rows']} "
        f"({r['mode']}; deltalake {r['versions']['deltalake']}, duckdb {r['versions']['duckdb']}; "
        f"{r['machine']['cpu']}, {r['machine']['cores']} cores, other load at start {r['other_cores_at_start']} cores) =="
    ]
    L.append("")
    L.append(
        f"{'top-10 query (new connect per run, p50)':<44}| {'Delta, compacted':>26} | {'LEGACY layout (files)':>26} | "
        f"{'speedup':>7} | {'target':>8}"
    )
    L.append(f"{'':<44}| {'total = connect + query ms':>26} | {'total = connect + query ms':>26} | {'':>7} |")
    for q in QUERIES:
        d, lg = r["delta"][q], r["legacy"][q]
        L.append(
            f"{q + (' (processed_at DESC)' if q == 'recent' else ' (cosine to a query vector)'):<44}| "
            f"{d['total_ms']:>8.0f} = {d['connect_ms']:>6.0f} + {d['query_ms']:>6.0f} | "
            f"{lg['total_ms']:>8.0f} = {lg['connect_ms']:>6.0f} + {lg['query_ms']:>6.0f} | "
            f"{d['speedup_vs_legacy']:>6}x | < {d['target_ms']} ms {'met' if d['met'] else 'SHORT'}"
            f"{'' if d['same_ids_as_legacy'] else '  (ids differ!)'}"
            f"{'  (list_cosine_similarity FAILED on the Delta side: array form measured)' if d.get('list_cosine_error') else ''}"
        )
    ub = r["delta_before_compaction"]
    L.append(
        f"{'  Delta before compaction (1 run)':<44}| recent {ub['recent']['total_ms']:.0f} ms, cosine"
        f"{'*' if ub['cosine'].get('list_cosine_error') else ''} {ub['cosine']['total_ms']:.0f} ms "
        f"(connect {ub['recent']['connect_ms']:.0f} ms)"
    )
    alt = p["alt_read_parquet_file_uris"]
    L.append(
        f"{'  ALT read_parquet(DeltaTable.file_uris())':<44}| recent {alt['recent']['total_ms']:.0f} = "
        f"{alt['recent']['connect_ms']:.0f} + {alt['recent']['query_ms']:.0f} ms, cosine* "
        f"{alt['cosine']['total_ms']:.0f} = {alt['cosine']['connect_ms']:.0f} + {alt['cosine']['query_ms']:.0f} ms"
    )
    ac = p["array_cosine_product"]["cosine"]
    L.append(
        f"{'  product connect(), cosine*':<44}| {ac['total_ms']:.0f} = {ac['connect_ms']:.0f} + {ac['query_ms']:.0f} ms"
        f"   (* array_cosine_similarity(embedding::FLOAT[512], ...), the array form; on a raw read_parquet "
        f"DuckDB 2.0.1's list_cosine_similarity refuses a column with NULL lists, connect()'s view slices them clean)"
    )
    cs = p["connect_split_ms"]
    L.append(
        f"{'  connect() split (compacted)':<44}| open_table {cs['open_table']} ms, to_pyarrow_dataset "
        f"{cs['to_pyarrow_dataset']} ms, DuckDB register+views {cs['duckdb_register_views']} ms"
    )
    L.append(
        f"{'  scans of assets_all (compacted, 1 run)':<44}| embeddings {p['scan_embeddings_ms']} ms, "
        f"id+caption+processed_at {p['scan_id_caption_processed_at_ms']} ms"
    )
    L.append(
        f"{'  one row per id (check)':<44}| {p['repeated_ids']:,} repeated ids in assets_all "
        f"(GROUP BY id HAVING count>1: {p['repeated_group_by_ms']} ms); rows {p['rows_all']:,}, legacy distinct ids "
        f"{r.get('legacy_distinct_ids', 0):,}"
    )
    L.append("")
    L.append(f"write_batch per batch ({w['method']}):")
    L.append("  batch        " + "".join(f"{x['batch']:>9,}" for x in w["windows"]))
    for key, name in (("median_ms", "median ms"), ("mean_ms", "mean ms"), ("max_ms", "max ms")):
        L.append(f"  {name:<13}" + "".join(f"{x[key]:>9}" for x in w["windows"]))
    L.append(
        f"  {'open_table ms':<13}"
        + "".join(f"{x['open_table_median_ms']:>9}" for x in w["windows"])
        + "   (the AssetTable.open() each write_batch makes before its commit; inside the median)"
    )
    L.append(
        f"  last/first median {w['first_last_ratio']}x  [target flat (<= 2x): {'met' if w['flat'] else 'SHORT'}]; "
        f"write_batch median {w['write_batch_median_ms']} ms over {w['write_batch_calls']:,} calls "
        f"({w['write_batch_rate_per_s']} commits/s); table built in {w['build_s']:.0f} s"
    )
    if w.get("compact_above"):
        cs = w.get("compactions") or []
        L.append(
            f"  compacted whenever over {w['compact_above']:,} files before a write_batch (compact_assets_sensor's "
            f"rule): {len(cs)} compaction(s), "
            + ", ".join(
                f"before batch {c['before_batch']:,}: {c['files_before']:,} -> {c['files_after']:,} files in {c['seconds']} s"
                for c in cs
            )
        )
    else:
        L.append(
            "  no compaction while writing (the table's raw growth; compact_assets_sensor compacts above "
            "1,000 files: `--compact-above 1000`)"
        )
    for key, what in (
        ("writes_after_compaction", "after compaction, default checkpoint interval (100)"),
        ("writes_checkpoint_interval_10", "after compaction, ALT delta.checkpointInterval=10"),
    ):
        x = r.get(key)
        if x:
            L.append(
                f"  {what}: batches {x['batches'][0]:,}-{x['batches'][1]:,}: median {x['median_ms']} ms, "
                f"mean {x['mean_ms']}, max {x['max_ms']} (open_table {x['open_table_median_ms']} ms)"
            )
    L.append("")
    L.append(
        f"compaction (AssetTable.compact(0)): {c['seconds']} s (remove_duplicates {c.get('remove_duplicates_s')} s, "
        f"{c.get('duplicates_removed')} removed; optimize {c.get('optimize_s')} s, checkpoint "
        f"{c.get('checkpoint_s')} s, vacuum {c.get('vacuum_s')} s, cleanup_metadata {c.get('cleanup_metadata_s')} s); "
        f"files {c['files_before']:,} -> {c['files_after']:,} ({c['mib_before']:,} -> {c['mib_after']:,} MiB), "
        f"vacuumed {c['vacuumed']:,}; version {c['version_before']} -> {c['version_after']}"
    )
    la = c["log_after"]
    L.append(
        f"  _delta_log after: {la['log_files']:,} files ({la['json_commits']:,} commits), checkpoint "
        f"{la.get('checkpoint_kib')} KiB with {la.get('checkpoint_adds')} adds, {la.get('checkpoint_removes')} removes"
    )
    L.append(f"legacy layout: {r['legacy_build']['files']:,} files, {r['legacy_build']['mib']:,} MiB")
    return L


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.table", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="100k rows (1,563 batches), all through write_batch")
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--all-real", action="store_true", help="full run: every batch through write_batch (slow)")
    ap.add_argument("--keep", metavar="DIR", help="build the tables under DIR and keep them")
    ap.add_argument("--batches", type=int, help="another table size (a smoke test); the results JSON is not written")
    ap.add_argument(
        "--compact-above",
        type=int,
        default=0,
        metavar="FILES",
        help="compact whenever the table holds more data files than this before a write_batch "
        "(what compact_assets_sensor does at DAM_COMPACT_MAX_FILES=1000); 0: never",
    )
    ap.add_argument(
        "--write-profile",
        action="store_true",
        help="only: why write_batch grows with the file count (snapshot loads, alternatives), "
        "at 15,625 files (1,563 with --quick); writes OUT/table-write-profile.json",
    )
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if args.write_profile:
        r = write_profile(args.batches or (1_563 if args.quick else 15_625), keep=args.keep, log=log)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "table-write-profile.json").write_text(json.dumps(r, indent=1))
        print(json.dumps(r, indent=1))
        return 0

    r = run(
        args.quick,
        None if args.batches else Path(args.out),
        all_real=args.all_real,
        keep=args.keep,
        batches=args.batches,
        log=log,
        compact_above=args.compact_above,
    )
    for line in lines(r):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
