"""Ingest batches as dynamic partitions: one partition per drained batch of uploads."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta

from dagster import DynamicPartitionsDefinition

batches_partitions_def = DynamicPartitionsDefinition(name="ingest_batches")

BATCH_KEY_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def new_batch_key(now: datetime | None = None, floor: str | None = None) -> str:
    """A key that sorts by creation time, `20261124T101500Z-3fa2c1`, and after `floor`.

    The six hex digits are the microsecond (five digits, < 0xf4240) and one random digit,
    so keys made within the same second still sort in the order they were made. The sensor
    only lists manifests after its cursor, so a key must never sort before one already handed
    out: when the clock is behind `floor` (stepped back, or another host's clock was ahead),
    the key is `floor`'s time plus one microsecond instead of the clock's.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if floor is not None:
        now = max(now, batch_key_time(floor) + timedelta(microseconds=1))
    return f"{now:%Y%m%dT%H%M%S}Z-{now.microsecond:05x}{os.urandom(1)[0] % 16:x}"


def batch_key_time(key: str) -> datetime:
    """The time a batch key was made from (to the microsecond)."""
    if not is_batch_key(key):
        raise ValueError(f"not a batch key: {key!r}")
    return datetime.strptime(key[:15], "%Y%m%dT%H%M%S").replace(microsecond=int(key[17:22], 16), tzinfo=UTC)


def is_batch_key(key: str) -> bool:
    return bool(BATCH_KEY_RE.match(key))
