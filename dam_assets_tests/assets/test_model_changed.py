"""ModelChanged: the batches a model change left stale are read from the instance on every tick
(the data version each materialization recorded), so a change made before the automation sensor
ever ticked is still seen, and a batch re-made by the new model stops being stale."""

from __future__ import annotations

from dagster import (
    DagsterInstance,
    DynamicPartitionsDefinition,
    MaterializeResult,
    asset,
    evaluate_automation_conditions,
    materialize,
)

from dam_assets.enrichment.automation import ModelChanged, made_by

PARTS = DynamicPartitionsDefinition(name="toy_batches")


def _embeddings(code_version: str, condition=None):
    """A stand-in for image_embeddings: partitioned like it, recording its code version like it."""

    @asset(name="toy_embeddings", partitions_def=PARTS, code_version=code_version, automation_condition=condition)
    def toy_embeddings(context) -> MaterializeResult:
        return MaterializeResult(data_version=made_by(code_version))

    return toy_embeddings


def test_batches_made_by_another_code_version_are_stale_from_the_first_tick():
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("toy_batches", ["b1", "b2", "b3"])
        for b in ("b1", "b2", "b3"):
            materialize([_embeddings("clip:v1")], partition_key=b, instance=instance)
        # The first evaluation ever, with the model already changed: every batch is stale.
        result = evaluate_automation_conditions(defs=[_embeddings("siglip:v1", ModelChanged())], instance=instance)
        key = _embeddings("x").key
        assert result.get_requested_partitions(key) == {"b1", "b2", "b3"}
        # b2 re-made by the new model: no longer stale; the others still are, on every later tick.
        materialize([_embeddings("siglip:v1")], partition_key="b2", instance=instance)
        result = evaluate_automation_conditions(
            defs=[_embeddings("siglip:v1", ModelChanged())], instance=instance, cursor=result.cursor
        )
        assert result.get_requested_partitions(key) == {"b1", "b3"}
        # The same code version as every batch: nothing is stale.
        for b in ("b1", "b3"):
            materialize([_embeddings("siglip:v1")], partition_key=b, instance=instance)
        result = evaluate_automation_conditions(
            defs=[_embeddings("siglip:v1", ModelChanged())], instance=instance, cursor=result.cursor
        )
        assert result.get_requested_partitions(key) == set()
