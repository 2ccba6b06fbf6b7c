"""Which Celery queue a run goes to on the production instance; a tag only, so importing it is free.

CeleryRunLauncher reads QUEUE_TAG. The embedded default (`dam dev`) ignores it.
"""

QUEUE_TAG = "dagster-celery/queue"  # dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG, without importing Celery
MODELS_QUEUE = "dam-models"  # enrichment: BLIP and CLIP, served by model workers (CPU or GPU)
LIGHT_QUEUE = "dam-light"  # search index and maintenance: no models
QUEUES = (MODELS_QUEUE, LIGHT_QUEUE)
