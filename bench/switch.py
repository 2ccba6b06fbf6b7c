"""A change of embedding model over 10,000 rows (tiny models): how long until the new model's index
serves every row, and what searches running all through it got back.

The folder is filled with tiny CLIP (`A`), `dam api` serves it, then every batch is re-embedded with
tiny SigLIP (`B`), re-committed to the table and re-indexed batch by batch, oldest first, as the
automation's runs do (dam_core.index.write.update_index: the B index is built beside the served one
and promoted when it covers every row). Meanwhile a client asks `/search` (meaning) without pause and
deletes a few assets. Dagster's scheduling of the runs is not in these figures (the system test
dam_assets_tests/system/test_model_switch.py drives the real daemon); the model's own time (the
embedding alone) and the index's own time are measured beside the total.

    python -m bench.switch [--quick] [--models-dir DIR] [--no-report]
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROWS, QUICK_ROWS = 10_000, 1_000
BATCH = 64
DELETES = 10


def _images(n: int, seed: int):
    """n small distinct images (colour fields with noise): what the tiny models embed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
    noise = rng.integers(0, 40, (n, 32, 32, 3), dtype=np.uint8)
    arr = np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return [Image.fromarray(a, "RGB") for a in arr]


def _rows(batch: str, ids: list[str], vectors: np.ndarray, model: str, t0: datetime, first: int) -> list[dict]:
    return [
        {
            "id": asset_id,
            "filename": f"{asset_id}.jpg",
            "r2_key": f"assets/{asset_id}.jpg",
            "vector_key": None,
            "mime_type": "image/jpeg",
            "caption": f"a photo number {first + j}",
            "embedding": vectors[j].tolist(),
            "width": 32,
            "height": 32,
            "bytes": 1000,
            "sha256": asset_id * 2,
            "uploaded_at": t0 + timedelta(seconds=first + j),
            "processed_at": datetime.now(UTC),
            "caption_model": "tiny-blip",
            "embedding_model": model,
            "batch": batch,
            "error": None,
            "tags": [],
        }
        for j, asset_id in enumerate(ids)
    ]


def _manifest(store, batch: str, rows: list[dict]) -> None:
    from dam_core.layout import manifest_key
    from dam_core.messages import BatchManifest, UploadMessage

    uploads = [
        UploadMessage(
            id=r["id"],
            filename=r["filename"],
            r2_key=r["r2_key"],
            mime_type="image/jpeg",
            bytes=1000,
            sha256=r["sha256"],
            width=32,
            height=32,
            uploaded_at=r["uploaded_at"],
        )
        for r in rows
    ]
    store.put(
        manifest_key(batch), BatchManifest(batch=batch, created_at=rows[0]["uploaded_at"], uploads=uploads).to_json()
    )


class Client(threading.Thread):
    """Asks /search without pause; records (status, latency, hits' ids and models) per answer."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.halt, self.answers = url, threading.Event(), []

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=60) as c:
            i = 0
            while not self.halt.is_set():
                t = time.perf_counter()
                try:
                    r = c.get(f"{self.url}/search", params={"q": f"a photo {i % 50}", "mode": "meaning", "k": 20})
                except httpx.TransportError:  # the API stopped: the run is over
                    return
                took = time.perf_counter() - t
                items = r.json().get("items", []) if r.status_code == 200 else []
                self.answers.append(
                    (
                        time.monotonic(),
                        r.status_code,
                        took,
                        [h["id"] for h in items],
                        {h["embedding_model"] for h in items},
                    )
                )
                i += 1


def run(quick: bool, models_dir: str | None, log=print) -> dict:
    from dam_core.index.manifest import read_head
    from dam_core.index.snapshot import load_snapshot
    from dam_core.index.write import update_index
    from dam_core.settings import load_settings
    from dam_core.store import make_store
    from dam_core.table import make_table
    from dam_models.embedder import get_embedder
    from dam_models.tiny import write_tiny_models, write_tiny_siglip

    n = QUICK_ROWS if quick else ROWS
    work = Path(tempfile.mkdtemp(prefix="dam-switch-"))
    models = Path(models_dir) if models_dir else work / "models"
    if not (models / "clip").exists():
        write_tiny_models(models)
    if not (models / "siglip").exists():
        write_tiny_siglip(models / "siglip")
    a, b = str(models / "clip"), str(models / "siglip")
    env = {
        **os.environ,
        "DAM_DATA_DIR": str(work / "data"),
        "DAM_EMBEDDING_MODEL": a,
        "DAM_CAPTION_MODEL": str(models / "blip"),
        "DAM_INDEX_POLL_SECONDS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith(("DAM_", "HF_"))})
    settings = load_settings()
    store, table = make_store(settings), make_table(settings)
    embed_a, embed_b = get_embedder(a), get_embedder(b)
    images = _images(n, seed=7)
    ids = [f"{i:032x}" for i in range(n)]
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    batches = [
        (f"20261201T{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}Z-000000", i * BATCH) for i in range(-(-n // BATCH))
    ]

    log(f"filling {n:,} rows in {len(batches)} batches with {a} ...")
    for batch, first in batches:
        part = slice(first, min(n, first + BATCH))
        rows = _rows(batch, ids[part], embed_a.embed_images(images[part]), a, t0, first)
        for r, img in zip(rows, images[part], strict=True):  # the originals, as uploads leave them
            buf = io.BytesIO()
            img.save(buf, "JPEG")
            store.put(r["r2_key"], buf.getvalue(), content_type="image/jpeg")
        _manifest(store, batch, rows)
        table.write_batch(batch, rows, embed_a.dim, store)
        update_index(store, table.connect(), batch, settings.dam_exact_search_max)

    port = _free_port()
    api_log = open(work / "api.log", "wb")
    api = subprocess.Popen(
        [sys.executable, "-m", "dam_cli.main", "api", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=api_log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url)
        client = Client(url)
        client.start()
        time.sleep(2)
        log(f"re-embedding every batch with {b} while searches run ...")
        started = time.monotonic()
        model_s = index_s = 0.0
        deleted: dict[str, float] = {}
        promoted_at = None
        for k, (batch, first) in enumerate(batches):
            part = slice(first, min(n, first + BATCH))
            t = time.perf_counter()
            vectors = embed_b.embed_images(images[part])
            model_s += time.perf_counter() - t
            rows = [r for r in _rows(batch, ids[part], vectors, b, t0, first) if r["id"] not in deleted]
            t = time.perf_counter()
            table.write_batch(batch, rows, embed_b.dim, store)
            update_index(store, table.connect(), batch, settings.dam_exact_search_max)
            index_s += time.perf_counter() - t
            now = read_head(store)
            if promoted_at is None and now is not None and now.model == b:
                promoted_at = time.monotonic()
            if k == len(batches) // 2:  # deletes in the middle of the switch, through the API
                import httpx

                for asset_id in ids[first + BATCH : first + BATCH + DELETES]:
                    r = httpx.delete(f"{url}/assets/{asset_id}", timeout=60)
                    assert r.status_code == 200, r.text
                    deleted[asset_id] = time.monotonic()
        alive = n - len(deleted)
        served_at = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            last = client.answers[-1] if client.answers else None
            if last and last[1] == 200 and last[4] == {b}:
                served_at = last[0]
                break
            time.sleep(0.2)
        time.sleep(2)
        client.halt.set()
        client.join(60)
    finally:
        api.terminate()
        api.wait(30)
        api_log.close()
    head = read_head(store)
    served = load_snapshot(store)
    answers = client.answers
    during = [x for x in answers if x[0] >= started]
    lat = np.array([x[2] for x in during]) * 1000
    models_seen = [next(iter(x[4])) for x in during if len(x[4]) == 1]
    flips = sum(1 for p, q in zip(models_seen, models_seen[1:], strict=False) if p != q)
    late_deleted = sum(
        1 for at, _, _, hit_ids, _ in answers for i in hit_ids if i in deleted and at > deleted[i] + 2 * 1.0 + 1
    )
    return {
        "rows": n,
        "batches": len(batches),
        "alive_after": alive,
        "served_rows_after": served.size if served else 0,
        "served_vectors_after": served.vector_count if served else 0,
        "served_model_after": "B" if head and head.model == b else "A",
        "switch_s": round((served_at or time.monotonic()) - started, 2),
        "promote_after_s": round(promoted_at - started, 2) if promoted_at else None,
        "api_swap_after_promote_s": round(served_at - promoted_at, 2) if served_at and promoted_at else None,
        "model_alone_s": round(model_s, 2),
        "index_and_table_s": round(index_s, 2),
        "queries": len(during),
        "non_200": sum(1 for x in during if x[1] != 200),
        "empty": sum(1 for x in during if x[1] == 200 and not x[3]),
        "mixed": sum(1 for x in during if len(x[4]) > 1),
        "model_flips": flips,
        "deleted_served_after_delete": late_deleted,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "cpus": os.cpu_count(),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"dam api did not answer at {url}")


def render(r: dict) -> str:
    ok = r["non_200"] == 0 and r["empty"] == 0 and r["mixed"] == 0 and r["model_flips"] <= 1
    return "\n".join(
        [
            "## Model switch\n",
            f"`python -m bench.switch`: {r['rows']:,} rows in {r['batches']} batches of {BATCH}, embedded with tiny CLIP, "
            "served by `dam api`; then every batch re-embedded with tiny SigLIP (another dimension), re-committed and "
            "re-indexed oldest first, as the automation's runs do (Dagster's scheduling not included: the system test "
            f"drives the real daemon), with `/search` (meaning, k=20) asked without pause and {DELETES} assets deleted "
            f"through the API half way. {r['cpus']} cores.\n",
            "| rows | until the new index serves every row | of which: the model alone | the table and the index | "
            "promoted after | API swapped after the promote |",
            "|---|---|---|---|---|---|",
            f"| {r['rows']:,} | {r['switch_s']} s | {r['model_alone_s']} s | {r['index_and_table_s']} s | "
            f"{r['promote_after_s']} s | {r['api_swap_after_promote_s']} s |",
            "",
            "| queries during the switch | not 200 | empty | mixing two models | model changes seen | deleted ids "
            "served after the delete | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|",
            f"| {r['queries']:,} | {r['non_200']} | {r['empty']} | {r['mixed']} | {r['model_flips']} | "
            f"{r['deleted_served_after_delete']} | {r['p50_ms']} | {r['p99_ms']} |",
            "",
            f"After: the served index is model {r['served_model_after']} with {r['served_rows_after']:,} rows and "
            f"{r['served_vectors_after']:,} vectors ({r['alive_after']:,} assets alive). "
            + ("Every answer 200, none empty, none mixing models." if ok else "**Not every answer was clean.**"),
            "",
        ]
    )


def main(argv=None) -> int:
    from bench.report import standalone

    argv = sys.argv[1:] if argv is None else argv
    return standalone(argv, "python -m bench.switch", __doc__, run, "switch", render)


if __name__ == "__main__":
    raise SystemExit(main())
