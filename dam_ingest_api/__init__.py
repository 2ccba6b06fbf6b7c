"""FastAPI producer: validates uploads, stores originals, queues them for the pipeline."""
