"""Ingest batches as dynamic partitions: one partition per drained batch of uploads.

Batch keys (time-sorted, strictly increasing) are made in dam_core.manifests.
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

batches_partitions_def = DynamicPartitionsDefinition(name="ingest_batches")
