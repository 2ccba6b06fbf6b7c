"""Dagster resources built once from the shared settings: the store, the queue, the models."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from dam_core.queue import UploadQueue, make_queue
from dam_core.settings import Settings, load_settings
from dam_core.store import ObjectStore, S3Store, make_store


class DamResource(ConfigurableResource):
    """dam-pipeline's settings, object store and upload queue, configured from the environment."""

    _settings: Settings | None = PrivateAttr(default=None)
    _store: ObjectStore | None = PrivateAttr(default=None)
    _queue: UploadQueue | None = PrivateAttr(default=None)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            s = self.settings
            if s.uses_s3:
                from dagster_aws.s3 import S3Resource

                client = S3Resource(
                    endpoint_url=s.r2_endpoint,
                    region_name=s.r2_region,
                    aws_access_key_id=s.r2_access_key_id.get_secret_value() if s.r2_access_key_id else None,
                    aws_secret_access_key=(
                        s.r2_secret_access_key.get_secret_value() if s.r2_secret_access_key else None
                    ),
                    max_attempts=3,
                ).get_client()
                self._store = S3Store(client, s.r2_bucket, s.r2_endpoint)
            else:
                self._store = make_store(s)
        return self._store

    @property
    def queue(self) -> UploadQueue:
        if self._queue is None:
            self._queue = make_queue(self.settings)
        return self._queue


class ModelsResource(ConfigurableResource):
    """Which captioning and embedding models run, where, and how; loaded once per process."""

    caption_model: str = ""
    embedding_model: str = ""
    device: str = ""
    dtype: str = ""
    caption_max_tokens: int = 0

    def _resolved(self) -> Settings:
        return load_settings()

    def captioner(self):
        from dam_models.captioner import get_captioner

        s = self._resolved()
        return get_captioner(
            self.caption_model or s.dam_caption_model,
            device=self.device or s.dam_device,
            dtype=self.dtype or s.dam_dtype,
            max_new_tokens=self.caption_max_tokens or s.dam_caption_max_tokens,
        )

    def embedder(self):
        from dam_models.embedder import get_embedder

        s = self._resolved()
        return get_embedder(
            self.embedding_model or s.dam_embedding_model,
            device=self.device or s.dam_device,
            dtype=self.dtype or s.dam_dtype,
        )
