"""Ingest batches as dynamic partitions: one partition per drained batch of uploads."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

from dagster import DynamicPartitionsDefinition

batches_partitions_def = DynamicPartitionsDefinition(name="ingest_batches")

BATCH_KEY_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def new_batch_key(now: datetime | None = None) -> str:
    """A key that sorts by creation time: `20261124T101500Z-3fa2c1`.

    The six hex digits are the microsecond (five digits, < 0xf4240) and one random digit,
    so keys made within the same second still sort in the order they were made.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{now.microsecond:05x}{os.urandom(1)[0] % 16:x}"


def is_batch_key(key: str) -> bool:
    return bool(BATCH_KEY_RE.match(key))
