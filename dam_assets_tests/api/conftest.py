"""The direct-upload tests' API: on moto's S3 through the strict front (faults/strict_s3.py), and RabbitMQ."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from dam_assets_tests.faults.strict_s3 import strict_s3
from dam_ingest_api.main import create_app


@pytest.fixture
def front(moto_endpoint):
    with strict_s3(moto_endpoint) as url:
        yield url


@pytest.fixture
def make_api(make_settings, s3_env, front, rabbit_url, queue_name):
    """Build an app on the S3 store and RabbitMQ; returns (client, settings).

    The store is reached through the strict front unless `endpoint` names another (moto itself: a
    store that checks neither signatures nor checksums).
    """
    opened = []

    def build(endpoint: str | None = None, **env):
        settings = make_settings(
            **{**s3_env, "R2_ENDPOINT": endpoint or front}, AMQP_URL=rabbit_url, DAM_QUEUE=queue_name, **env
        )
        client = TestClient(create_app(settings))
        client.__enter__()
        opened.append(client)
        return client, settings

    yield build
    for client in opened:
        client.__exit__(None, None, None)
