"""The backstop for Dagster's automatic retries (dam_assets/ingest/retries.py), on a real SQLite instance."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunRequest, build_sensor_context
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG
from dagster._core.utils import make_new_run_id

import dam_assets.ingest.retries as retries
from dam_assets.ingest.jobs import enrich_batch_job
from dam_assets.ingest.sensors import BATCH_TAG

BATCH = "20261206T030000Z-{}"


@pytest.fixture
def instance(tmp_path):
    with DagsterInstance.local_temp(tempdir=str(tmp_path)) as inst:
        yield inst


def add_run(instance, batch: str, status=DagsterRunStatus.FAILURE, **tags) -> str:
    run_id = make_new_run_id()
    instance.add_run(
        DagsterRun(job_name=enrich_batch_job.name, run_id=run_id, status=status, tags={BATCH_TAG: batch, **tags})
    )
    return run_id


def test_only_a_failed_run_that_was_to_be_retried_and_was_not_is_stranded(instance):
    stranded = add_run(instance, BATCH.format("00001a"), **{WILL_RETRY_TAG: "true"})
    add_run(instance, BATCH.format("00002b"), **{WILL_RETRY_TAG: "true", AUTO_RETRY_RUN_ID_TAG: make_new_run_id()})
    add_run(instance, BATCH.format("00003c"), **{WILL_RETRY_TAG: "false"})  # out of retries: not ours to redo
    add_run(instance, BATCH.format("00004d"), **{WILL_RETRY_TAG: "true"})
    add_run(instance, BATCH.format("00004d"), status=DagsterRunStatus.SUCCESS)  # re-run since (by hand)
    add_run(instance, BATCH.format("00005e"), status=DagsterRunStatus.STARTED, **{WILL_RETRY_TAG: "true"})

    found = retries.stranded_batch_runs(instance, time.time() + 1, after_seconds=0)
    assert [(s.batch, s.run_id) for s in found] == [(BATCH.format("00001a"), stranded)]
    # Not before Dagster had its time to retry it.
    assert retries.stranded_batch_runs(instance, time.time(), after_seconds=600) == []


def test_the_sensor_requests_the_batch_once_per_stranded_run(instance, monkeypatch):
    batch = BATCH.format("00006f")
    failed = add_run(instance, batch, **{WILL_RETRY_TAG: "true"})
    assert retries.stranded_retry_sensor(build_sensor_context(instance=instance)).__class__.__name__ == "SkipReason"
    monkeypatch.setattr(retries, "STRANDED_AFTER_SECONDS", -1)
    result = retries.stranded_retry_sensor(build_sensor_context(instance=instance))
    (request,) = result.run_requests
    assert isinstance(request, RunRequest)
    assert request.partition_key == batch and request.tags[BATCH_TAG] == batch
    assert request.run_key == f"{batch}:after:{failed}"  # the daemon launches a run key once
    # Once the batch's new run exists, the failed run is no longer stranded.
    add_run(instance, batch, status=DagsterRunStatus.NOT_STARTED)
    assert retries.stranded_retry_sensor(build_sensor_context(instance=instance)).__class__.__name__ == "SkipReason"
