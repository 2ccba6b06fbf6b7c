"""The workers' Prometheus metrics (docs/metrics.md lists them) and the calls that record them.

Recorded wherever a run executes: inside a `dam worker` pool process they are written to the
worker's PROMETHEUS_MULTIPROC_DIR and served on its --metrics-port; under `dagster dev` nothing
serves them and recording costs a few microseconds. The same figures go into each
materialization's metadata, so the Dagster UI shows them per run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram, disable_created_metrics

disable_created_metrics()

STAGES = ("decode", "caption", "embed", "thumbnail", "write")
RUN_OUTCOMES = ("success", "failure", "canceled", "worker_lost")

IMAGES_ENRICHED = Counter(
    "dam_images_enriched",
    "Images whose table row was committed, by outcome (error: the row carries an error).",
    ["outcome"],
)
STAGE_SECONDS = Histogram(
    "dam_enrichment_stage_seconds",
    "Seconds one batch spent in one enrichment stage.",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0),
)
MODEL_LOAD_SECONDS = Histogram(
    "dam_model_load_seconds",
    "Seconds to load a model into a worker process (a warm process loads none).",
    ["model"],
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0),
)
RUNS = Counter("dam_runs", "Dagster runs a worker executed, by outcome.", ["outcome"])
UPLOAD_TO_ROW_SECONDS = Histogram(
    "dam_upload_to_row_seconds",
    "Seconds from an upload's acceptance to the commit of its table row.",
    buckets=(1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0),
)

for _outcome in ("ok", "error"):  # exported from the start, at 0: rate() needs the series
    IMAGES_ENRICHED.labels(_outcome)
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)
for _outcome in RUN_OUTCOMES:
    RUNS.labels(_outcome)


class Timed:
    """Seconds a `stage` block took, for the materialization's metadata."""

    seconds: float = 0.0


@contextmanager
def stage(name: str) -> Iterator[Timed]:
    """Time one stage of one batch; observed when the block ends, also when it raises."""
    timed = Timed()
    started = time.perf_counter()
    try:
        yield timed
    finally:
        timed.seconds = time.perf_counter() - started
        STAGE_SECONDS.labels(name).observe(timed.seconds)


def stages_observed(busy: dict[str, float]) -> None:
    """One batch's pipelined step: seconds per stage, summed over its chunks (the stages overlapped)."""
    for name in ("decode", "caption", "embed", "thumbnail"):
        if name in busy:
            STAGE_SECONDS.labels(name).observe(busy[name])


def model_loaded(model: str, seconds: float, loads: int) -> None:
    """A model load seen by dam_models.loading.track_loads (nothing when the process held it already)."""
    if loads:
        MODEL_LOAD_SECONDS.labels(model).observe(seconds)


def rows_committed(rows: Iterable[dict], committed_at: datetime, lag: bool = True) -> None:
    """Rows now in the table: images enriched by outcome, and (unless `lag` is off) upload-to-row seconds."""
    for row in rows:
        IMAGES_ENRICHED.labels("error" if row.get("error") else "ok").inc()
        uploaded = row.get("uploaded_at")
        if lag and isinstance(uploaded, datetime):
            if uploaded.tzinfo is None:
                uploaded = uploaded.replace(tzinfo=UTC)
            UPLOAD_TO_ROW_SECONDS.observe(max(0.0, (committed_at - uploaded).total_seconds()))


def run_finished(outcome: str) -> None:
    RUNS.labels(outcome if outcome in RUN_OUTCOMES else "failure").inc()


__all__ = ["RUN_OUTCOMES", "STAGES", "model_loaded", "rows_committed", "run_finished", "stage", "stages_observed"]
