"""Drive the real pipeline in-process: evaluate the sensor, then materialize what it requested."""

from __future__ import annotations

import subprocess
import sys

from dagster import DagsterInstance, build_sensor_context, materialize

from dam_assets.definitions import build_resources
from dam_assets.enrichment.assets import asset_metadata, image_enrichment
from dam_assets.ingest.assets import upload_batch
from dam_assets.ingest.partitions import batches_partitions_def
from dam_assets.ingest.sensors import upload_queue_sensor
from dam_core.settings import load_settings

BATCH_ASSETS = [upload_batch, image_enrichment, asset_metadata]


def resources(**overrides) -> dict:
    """The code location's resources, built from the environment as it is now (plus `overrides`)."""
    return build_resources(load_settings(**overrides))


def tick(instance: DagsterInstance, cursor: str | None = None):
    """One sensor evaluation; applies its partition requests to the instance like the daemon does.

    Without the long poll (DAM_SENSOR_WAIT_SECONDS=0): a test ticks after it published, and a tick
    of an empty queue would only wait. The daemon-driven tests run the default.
    """
    ctx = build_sensor_context(instance=instance, cursor=cursor, resources=resources(dam_sensor_wait_seconds=0))
    result = upload_queue_sensor(ctx)
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(batches_partitions_def.name, list(req.partition_keys))
    return result


def materialize_batch(instance: DagsterInstance, batch: str, selection=None, raise_on_error=True):
    return materialize(
        BATCH_ASSETS,
        partition_key=batch,
        instance=instance,
        resources=resources(),
        selection=selection,
        raise_on_error=raise_on_error,
    )


def run_pending(instance: DagsterInstance, cursor: str | None = None) -> tuple[list[str], str | None]:
    """Tick once and materialize every requested batch; returns (batches, new cursor)."""
    result = tick(instance, cursor)
    batches = [r.partition_key for r in result.run_requests or []]
    for b in batches:
        materialize_batch(instance, b)
    return batches, result.cursor if result.cursor is not None else cursor


def dam_sql(query: str, env: dict, fmt: str = "json") -> subprocess.CompletedProcess:
    """`dam sql` as a user runs it, in a subprocess with the given environment."""
    return subprocess.run(
        [sys.executable, "-m", "dam_cli.main", "sql", query, "--format", fmt],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
