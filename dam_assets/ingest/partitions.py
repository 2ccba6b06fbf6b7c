"""Ingest batches as dynamic partitions, one per drained batch; dam_core.manifests makes the keys."""

from __future__ import annotations

import warnings

from dagster import BackfillPolicy, BetaWarning, DynamicPartitionsDefinition

from dam_assets.config import SETTINGS

BATCHES_PARTITIONS = "ingest_batches"
batches_partitions_def = DynamicPartitionsDefinition(name=BATCHES_PARTITIONS)

# A backfill from the UI (asset graph, asset page or the job's partitions) runs up to this many
# batches per run: the models load once for all of them, and a GPU gets enough images per run. The
# sensor's runs stay one batch each (their run key is the batch's key).
warnings.filterwarnings("ignore", message=r".*`backfill_policy`", category=BetaWarning)  # used on purpose
BACKFILL_POLICY = BackfillPolicy.multi_run(SETTINGS.dam_backfill_batches_per_run)
