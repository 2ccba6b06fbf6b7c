"""The code location's resources: the store, queue and table (`dam`) and the models (`models`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, PrivateAttr

from dam_core.queue import UploadQueue, make_queue
from dam_core.settings import Settings, SettingsError
from dam_core.store import ObjectStore, make_store

log = logging.getLogger("dam_assets.resources")

if TYPE_CHECKING:
    import duckdb

    from dam_models.captioner import Captioner
    from dam_models.embedder import Embedder


def _secret(name: str, value) -> Optional[str]:
    # By name, not value: the UI shows resource config, and an EnvVar shows as its variable.
    return EnvVar(name) if value is not None else None


class _GivenSettings(Settings):
    """Settings from the values passed in alone: the environment was read once, in dam_assets.config."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_):
        return (init_settings,)


class DamResource(ConfigurableResource):
    """The object store, the upload queue and the `assets` table, with the pipeline's limits."""

    r2_endpoint: Optional[str] = Field(description="R2_ENDPOINT; unset: a local folder under data_dir.")
    r2_bucket: Optional[str] = Field(description="R2_BUCKET")
    r2_region: str = Field(description="R2_REGION")
    r2_access_key_id: Optional[str] = Field(description="R2_ACCESS_KEY_ID")
    r2_secret_access_key: Optional[str] = Field(description="R2_SECRET_ACCESS_KEY")
    amqp_url: Optional[str] = Field(description="AMQP_URL; unset: the embedded queue under data_dir.")
    queue_name: str = Field(description="DAM_QUEUE")
    data_dir: str = Field(description="DAM_DATA_DIR, resolved")
    near_duplicate: float = Field(description="DAM_NEAR_DUPLICATE")
    batch_size: int = Field(description="DAM_BATCH_SIZE")
    sensor_budget_seconds: float = Field(description="DAM_SENSOR_BUDGET_SECONDS")
    decode_pixel_budget: int = Field(description="DAM_DECODE_PIXEL_BUDGET")
    max_image_pixels: int = Field(
        default=Settings.model_fields["dam_max_image_pixels"].default, description="DAM_MAX_IMAGE_PIXELS"
    )
    max_image_side: int = Field(
        default=Settings.model_fields["dam_max_image_side"].default, description="DAM_MAX_IMAGE_SIDE"
    )
    orphan_grace_seconds: float = Field(description="DAM_ORPHAN_GRACE_SECONDS")
    exact_search_max: int = Field(description="DAM_EXACT_SEARCH_MAX")
    table_retention_hours: float = Field(description="DAM_TABLE_RETENTION_HOURS")
    compact_max_files: int = Field(description="DAM_COMPACT_MAX_FILES")
    configuration_error: Optional[str] = Field(
        default=None, description="Why the environment could not be read; when set, nothing runs."
    )

    _settings: Settings | None = PrivateAttr(default=None)
    _store: ObjectStore | None = PrivateAttr(default=None)
    _queue: UploadQueue | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, s: Settings, configuration_error: str | None = None) -> DamResource:
        return cls(
            r2_endpoint=s.r2_endpoint,
            r2_bucket=s.r2_bucket,
            r2_region=s.r2_region,
            r2_access_key_id=_secret("R2_ACCESS_KEY_ID", s.r2_access_key_id),
            r2_secret_access_key=_secret("R2_SECRET_ACCESS_KEY", s.r2_secret_access_key),
            amqp_url=_secret("AMQP_URL", s.amqp_url),
            queue_name=s.dam_queue,
            data_dir=str(s.data_dir),
            near_duplicate=s.dam_near_duplicate,
            batch_size=s.dam_batch_size,
            sensor_budget_seconds=s.dam_sensor_budget_seconds,
            decode_pixel_budget=s.dam_decode_pixel_budget,
            max_image_pixels=s.dam_max_image_pixels,
            max_image_side=s.dam_max_image_side,
            orphan_grace_seconds=s.dam_orphan_grace_seconds,
            exact_search_max=s.dam_exact_search_max,
            table_retention_hours=s.dam_table_retention_hours,
            compact_max_files=s.dam_compact_max_files,
            configuration_error=configuration_error,
        )

    @property
    def settings(self) -> Settings:
        """These fields as dam_core settings, for the factories the API uses too."""
        # Only what make_store, make_queue and table.connect read: a setting they start to read
        # needs a field here, or the pipeline would silently use its default.
        if self.configuration_error:
            raise SettingsError(self.configuration_error)
        if self._settings is None:
            self._settings = _GivenSettings(
                r2_endpoint=self.r2_endpoint,
                r2_bucket=self.r2_bucket,
                r2_region=self.r2_region,
                r2_access_key_id=self.r2_access_key_id,
                r2_secret_access_key=self.r2_secret_access_key,
                amqp_url=self.amqp_url,
                dam_queue=self.queue_name,
                dam_data_dir=self.data_dir,
                dam_near_duplicate=self.near_duplicate,
            )
        return self._settings

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = make_store(self.settings)
        return self._store

    @property
    def queue(self) -> UploadQueue:
        if self._queue is None:
            self._queue = make_queue(self.settings)
        return self._queue

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the `assets` views over the table."""
        from dam_core.table import connect

        return connect(self.settings)


# A CPU gains nothing past 16 images per call; a GPU needs 64 or more to be kept busy (bench/RESULTS.md).
DEVICE_BATCH_SIZE = {"cpu": 16, "cuda": 64}


class ModelsResource(ConfigurableResource):
    """The captioning and embedding models and the tag vocabulary; weights load once per process."""

    caption_model: str = Field(description="DAM_CAPTION_MODEL: a hub id or a local folder.")
    embedding_model: str = Field(description="DAM_EMBEDDING_MODEL: a hub id or a local folder.")
    device: str = Field(description="DAM_DEVICE")
    dtype: str = Field(description="DAM_DTYPE")
    runtime: str = Field(default="auto", description="DAM_RUNTIME: auto, torch or openvino.")
    quantize: str = Field(default="auto", description="DAM_QUANTIZE: auto, none or int8 (the captioner's image side).")
    model_cache_dir: str = Field(default="", description="DAM_MODEL_CACHE_DIR, resolved: converted models.")
    model_server: str = Field(default="", description="DAM_MODEL_SERVER: the socket of warm models (dam dev's); empty: load here.")
    caption_max_tokens: int = Field(description="DAM_CAPTION_MAX_TOKENS")
    model_batch_size: int = Field(
        default=0, description="DAM_MODEL_BATCH_SIZE: images per model call and pipeline chunk; 0: by device."
    )
    prefetch_chunks: int = Field(default=1, description="DAM_PREFETCH_CHUNKS: chunks prepared ahead; 0: in line.")
    tags_file: Optional[str] = Field(description="DAM_TAGS_FILE; unset: the list shipped in dam_models.")
    tag_threshold: float = Field(description="DAM_TAG_THRESHOLD")
    tags_top_k: int = Field(description="DAM_TAGS_TOP_K")

    @classmethod
    def from_settings(cls, s: Settings) -> ModelsResource:
        return cls(
            caption_model=s.dam_caption_model,
            embedding_model=s.dam_embedding_model,
            device=s.dam_device,
            dtype=s.dam_dtype,
            runtime=s.dam_runtime,
            quantize=s.dam_quantize,
            model_cache_dir=str(s.model_cache_dir),
            model_server=s.dam_model_server,
            caption_max_tokens=s.dam_caption_max_tokens,
            model_batch_size=s.dam_model_batch_size,
            prefetch_chunks=s.dam_prefetch_chunks,
            tags_file=str(s.dam_tags_file) if s.dam_tags_file else None,
            tag_threshold=s.dam_tag_threshold,
            tags_top_k=s.dam_tags_top_k,
        )

    def chunk_size(self, device: str) -> int:
        """Images per model call: the setting, else by device (measured, bench/RESULTS.md)."""
        if self.model_batch_size:
            return self.model_batch_size
        return DEVICE_BATCH_SIZE["cuda" if device.startswith("cuda") else "cpu"]

    _served_models: tuple | None = PrivateAttr(default=None)
    _server_asked: bool = PrivateAttr(default=False)

    def _served(self):
        """The model server's clients when one serves exactly these models, else None (then load here).

        Asked once per resource: the captioner and the embedder come from the same answer."""
        if self._server_asked:
            return self._served_models
        self._server_asked = True
        if not self.model_server or self.model_server == "off":
            return None
        from dam_models.serving import ServerUnavailable, connect
        from dam_models.versions import caption_version, embedding_version

        try:
            captioner, embedder = connect(self.model_server)
        except ServerUnavailable as err:
            log.warning("loading the models in this process: %s", err)
            return None
        wanted = (
            caption_version(self.caption_model, self.caption_max_tokens, dtype=self.dtype, runtime=self.runtime, quantize=self.quantize),
            embedding_version(self.embedding_model, self.dtype, self.runtime),
        )
        if (captioner.version, embedder.version) != wanted:
            log.warning("the model server serves %s, this run wants %s: loading here", (captioner.version, embedder.version), wanted)
            return None
        self._served_models = (captioner, embedder)
        return self._served_models

    def captioner(self) -> Captioner:
        """The served captioner, else the one this process loads."""
        served = self._served()
        return served[0] if served else self.load_captioner()

    def embedder(self) -> Embedder:
        """The served embedder, else the one this process loads."""
        served = self._served()
        return served[1] if served else self.load_embedder()

    def load_captioner(self) -> Captioner:
        """The captioner loaded (and converted, once) in this process, whatever server there is."""
        from dam_models.captioner import get_captioner

        return get_captioner(
            self.caption_model, device=self.device, dtype=self.dtype, max_new_tokens=self.caption_max_tokens,
            runtime=self.runtime, cache_dir=self.model_cache_dir or None, quantize=self.quantize,
        )

    def load_embedder(self) -> Embedder:
        """The embedder loaded (and converted, once) in this process, whatever server there is."""
        from dam_models.embedder import get_embedder

        return get_embedder(
            self.embedding_model, device=self.device, dtype=self.dtype,
            runtime=self.runtime, cache_dir=self.model_cache_dir or None,
        )

    def vocabulary(self) -> list[str]:
        from dam_models.tagging import load_vocabulary

        return load_vocabulary(self.tags_file)
