"""Ingest batches as dynamic partitions, one per drained batch; dam_core.manifests makes the keys."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

batches_partitions_def = DynamicPartitionsDefinition(name="ingest_batches")
