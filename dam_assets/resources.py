"""The code location's resources: the store, queue and table (`dam`) and the models (`models`)."""

from __future__ import annotations

import logging
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, PrivateAttr, SecretStr

from dam_core.dam import Dam, open_dam
from dam_core.queue import UploadQueue
from dam_core.settings import Settings, SettingsError
from dam_core.store import ObjectStore
from dam_core.table import AssetTable
from dam_models.serving import ServerUnavailable, connect
from dam_models.tagging import load_vocabulary
from dam_models.versions import caption_version, embedding_version

log = logging.getLogger("dam_assets.resources")

if TYPE_CHECKING:  # imports torch, which a run on served models never loads (dam_models/serving.py)
    from dam_models.captioner import Captioner
    from dam_models.embedder import Embedder

# The settings that hold secrets: the resource passes them by variable name, never by value. Each
# needs a field of DamResource's own (without one, the first use of `dam` fails, loudly).
SECRETS = tuple(
    name
    for name, field in Settings.model_fields.items()
    if field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation)
)


class DamResource(ConfigurableResource):
    """The object store, the upload queue and the `assets` table (a Dam, opened on first use) of these settings."""

    # Optional values: Dagster refuses a null map member otherwise (R2_BUCKET unset is a null).
    values: dict[str, Optional[Any]] = Field(description="Every setting but the secrets, by variable name (lowercase).")
    # The UI shows resource config: a secret is an EnvVar there, which shows as its variable's name.
    r2_access_key_id: Optional[str] = Field(default=None, description="R2_ACCESS_KEY_ID")
    r2_secret_access_key: Optional[str] = Field(default=None, description="R2_SECRET_ACCESS_KEY")
    amqp_url: Optional[str] = Field(
        default=None, description="AMQP_URL; unset: the embedded queue under the data folder."
    )
    dam_api_key: Optional[str] = Field(default=None, description="DAM_API_KEY")
    configuration_error: Optional[str] = Field(
        default=None, description="Why the environment could not be read; when set, nothing runs."
    )

    _dam: Dam | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, s: Settings, configuration_error: str | None = None) -> DamResource:
        values = s.model_dump(mode="json", exclude=set(SECRETS))
        values["dam_data_dir"] = str(s.data_dir)  # resolved here: a run may start in another folder
        secrets = {name: EnvVar(name.upper()) if getattr(s, name) is not None else None for name in SECRETS}
        return cls(values=values, **secrets, configuration_error=configuration_error)

    @property
    def dam(self) -> Dam:
        """The store, queue and table of these settings, opened once per resource."""
        if self.configuration_error:
            raise SettingsError(self.configuration_error)
        if self._dam is None:
            values: dict[str, Any] = self.values  # each checked by Settings
            self._dam = open_dam(Settings(**values, **{name: getattr(self, name) for name in SECRETS}))
        return self._dam

    @property
    def settings(self) -> Settings:
        return self.dam.settings

    @property
    def store(self) -> ObjectStore:
        return self.dam.store

    @property
    def queue(self) -> UploadQueue:
        return self.dam.queue

    @property
    def table(self) -> AssetTable:
        return self.dam.table


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
    model_server: str = Field(
        default="", description="DAM_MODEL_SERVER: the socket of warm models (dam dev's); empty: load here."
    )
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
        try:
            captioner, embedder = connect(self.model_server)
        except ServerUnavailable as err:
            log.warning("loading the models in this process: %s", err)
            return None
        wanted = (
            caption_version(
                self.caption_model,
                self.caption_max_tokens,
                dtype=self.dtype,
                runtime=self.runtime,
                quantize=self.quantize,
            ),
            embedding_version(self.embedding_model, self.dtype, self.runtime),
        )
        if (captioner.version, embedder.version) != wanted:
            log.warning(
                "the model server serves %s, this run wants %s: loading here",
                (captioner.version, embedder.version),
                wanted,
            )
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
        # Imported here, as in load_embedder: torch, which a run on served models never loads.
        from dam_models.captioner import get_captioner

        return get_captioner(
            self.caption_model,
            device=self.device,
            dtype=self.dtype,
            max_new_tokens=self.caption_max_tokens,
            runtime=self.runtime,
            cache_dir=self.model_cache_dir or None,
            quantize=self.quantize,
        )

    def load_embedder(self) -> Embedder:
        """The embedder loaded (and converted, once) in this process, whatever server there is."""
        from dam_models.embedder import get_embedder  # torch: see load_captioner

        return get_embedder(
            self.embedding_model,
            device=self.device,
            dtype=self.dtype,
            runtime=self.runtime,
            cache_dir=self.model_cache_dir or None,
        )

    def vocabulary(self) -> list[str]:
        return load_vocabulary(Path(self.tags_file) if self.tags_file else None)
