"""The one settings object, read from the environment by the API, Dagster and the CLI."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


def default_data_dir() -> Path:
    """Where data lives when DAM_DATA_DIR is unset: $XDG_DATA_HOME/dam, else ~/.local/share/dam.

    One folder per user, not per working directory, so `dam sql` run from any folder reads what
    `dam dev` wrote. A relative XDG_DATA_HOME is ignored, as the XDG base directory spec says.
    """
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "dam"
    try:
        return Path.home() / ".local" / "share" / "dam"
    except (RuntimeError, KeyError):  # no HOME and no passwd entry (a container's arbitrary uid)
        return Path(".dam")


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(value: str | None) -> str:
    """The one check of a device setting (DAM_DEVICE, resource config, the CLI): auto (also when
    empty), cpu, cuda, cuda:N or mps, in any case; returns it lowercase."""
    device = (value or "").strip().lower() or "auto"
    if not _DEVICE.match(device):
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
    return device


class SettingsError(RuntimeError):
    """Configuration is missing or contradictory; the message names the variable."""


class Settings(BaseSettings):
    """Every knob of dam-pipeline; field names are the environment variable names."""

    model_config = SettingsConfigDict(env_ignore_empty=True, case_sensitive=False, extra="ignore", frozen=True)

    # Object store: the seed's variables. Unset -> a local folder under DAM_DATA_DIR.
    r2_endpoint: str | None = None
    r2_access_key_id: SecretStr | None = None
    r2_secret_access_key: SecretStr | None = None
    r2_bucket: str | None = None
    r2_region: str = "auto"

    # Queue: unset -> a durable embedded queue under DAM_DATA_DIR.
    amqp_url: SecretStr | None = None
    dam_queue: str = Field(default="uploads", min_length=1, max_length=200)

    dam_data_dir: Path = Field(default_factory=default_data_dir)  # a relative value is from the current folder
    dam_max_upload_bytes: int = Field(default=25 * MiB, gt=0)
    dam_max_files_per_request: int = Field(default=32, gt=0, le=1000)
    # Decompression-bomb limit (width x height), the one limit wherever an image is opened (Pillow's own
    # MAX_IMAGE_PIXELS is set to it): the API's validation and the pipeline's decode.
    dam_max_image_pixels: int = Field(default=100_000_000, gt=0)
    # Longest side an image may have, checked from the header before any decode: a 1x89,000,000 PNG
    # is within the pixel limit but costs seconds of CPU per row-heavy decode. 65,535 is JPEG's own maximum.
    dam_max_image_side: int = Field(default=65_535, gt=0)
    dam_max_frames: int = Field(default=1000, gt=0)
    dam_read_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)  # a stalled upload body gets 408
    dam_api_key: SecretStr | None = None
    dam_cors_origins: str = ""  # comma-separated; empty means CORS stays off
    # Slow or greedy clients: bounds on one upload's time and on how much runs at once.
    dam_upload_deadline_seconds: float = Field(default=600.0, gt=0, le=86400)  # whole body, start to end
    dam_min_upload_bytes_per_second: int = Field(default=4096, ge=0)  # average, enforced after the grace
    dam_upload_rate_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    dam_header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)  # request line + headers
    # Open connections beyond which requests without a valid X-API-Key get 503 (requests with one have
    # their own allowance of as many in flight); past half of it, idle keep-alive connections are closed.
    dam_max_connections: int = Field(default=1000, gt=0)
    # Open connections one client address may hold; more are answered 503 and closed at once. 0: no cap
    # (set 0, or a high value, behind a reverse proxy: every client then has the proxy's address).
    dam_max_connections_per_client: int = Field(default=256, ge=0)
    dam_max_concurrent_uploads: int = Field(default=64, gt=0)  # beyond: 503 + Retry-After at once
    dam_max_concurrent_validations: int = Field(default=4, gt=0)  # full decodes in memory at once
    dam_publish_connections: int = Field(default=16, gt=0, le=256)  # RabbitMQ publishes in flight at once
    dam_orphan_grace_seconds: float = Field(default=3600.0, ge=60)  # originals without a confirmed message
    # Direct-to-store uploads (S3/R2, docs/http-api.md): how long a presigned URL stays valid, and the
    # age past which an upload never completed is aborted and its staging objects removed by the sweep.
    dam_direct_url_expiry_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    dam_direct_abandon_seconds: float = Field(default=86400.0, ge=60)
    # A single PUT whose client declares SHA-256, size and type goes straight to its original's key,
    # with the checksum signed in: the store refuses other bytes (S3 and R2 do), so the API reads only
    # the header. 0 sends every upload through staging, where the API reads and hashes all the bytes
    # (for a store that ignores x-amz-checksum-sha256). The pipeline checks the digest either way.
    dam_direct_content_keys: bool = True
    dam_metrics: bool = True  # Prometheus metrics and GET /metrics (docs/metrics.md); 0 turns both off

    # Pipeline.
    dam_batch_size: int = Field(default=64, gt=0, le=10_000)
    dam_sensor_budget_seconds: float = Field(default=20.0, gt=0, le=50)
    # How long a sensor tick waits on an empty queue for the first upload (a long poll): the daemon
    # ticks the sensor about every 5 s, so an upload waited 0-5 s for the next tick, 2.5 s on average.
    dam_sensor_wait_seconds: float = Field(default=4.0, ge=0, le=30)
    # Full-size pixels decoded at once by one run process (~4 bytes each); a larger image is an error row.
    dam_decode_pixel_budget: int = Field(default=100_000_000, gt=0)
    dam_caption_model: str = "Salesforce/blip-image-captioning-base"
    dam_embedding_model: str = "openai/clip-vit-base-patch32"
    dam_caption_max_tokens: int = Field(default=30, gt=0, le=512)
    dam_device: str = "auto"
    dam_dtype: str = "auto"
    # auto: OpenVINO on a CPU where installed (fastest at parity, bench/RESULTS.md), PyTorch on a GPU.
    dam_runtime: str = "auto"
    # auto: the captioner's image side in int8 on OpenVINO where the CPU has int8 dot products (VNNI, AMX-INT8;
    # 1.1-1.4x its bf16 path at parity there, no faster than fp32 on AVX2 alone: bench/RESULTS.md).
    dam_quantize: str = "auto"
    dam_model_batch_size: int = Field(default=0, ge=0, le=4096)  # images per model call; 0: 16 on a CPU, 64 on a GPU
    dam_backfill_batches_per_run: int = Field(default=4, ge=1, le=256)  # a backfill's batches per run (BackfillPolicy)
    dam_prefetch_chunks: int = Field(default=1, ge=0, le=8)  # chunks decoded and prepared ahead of the models
    # Unix socket of a `dam models serve` whose warm models runs use (`dam dev` starts one and sets this
    # for its runs); empty: every run loads its own; `off`: `dam dev` starts none.
    dam_model_server: str = ""
    dam_model_cache_dir: Path | None = None  # converted models; default: DATA_DIR/models/converted

    # Finding images: zero-shot tags, near duplicates, the vector index.
    dam_tags_file: Path | None = None  # one label per line; default: the list shipped in the package
    dam_tag_threshold: float = Field(default=0.05, ge=0, le=1)  # CLIP: softmax over the vocabulary; SigLIP: per label
    dam_tags_top_k: int = Field(default=5, ge=0, le=50)
    # Text in images (OCR, asset image_text): off by default, because on this project's reference
    # CPU it costs more than the captioner per photo (bench/RESULTS.md, "OCR"). Switched on for a
    # data folder that has batches already, every earlier batch gets its text in the background.
    dam_ocr: bool = False
    dam_ocr_det_side: int = Field(default=960, ge=160, le=4096)  # detection runs at this long side, at most
    dam_ocr_min_score: float = Field(default=0.5, ge=0, le=1)  # lines recognized with less confidence are dropped
    dam_near_duplicate: float = Field(default=0.95, ge=-1, le=1)
    # Per index segment: above this many vectors a segment gets an HNSW graph (recall@10 about 0.98
    # at 1M in segments, ef=256; bench/NOTES.md); up to it, a float32 scan takes ~1 ms.
    dam_exact_search_max: int = Field(default=20_000, ge=0)
    dam_index_poll_seconds: float = Field(default=5.0, gt=0)
    # How often the automation sensor looks for work (an enrichment added later, a model changed):
    # each look evaluates every batch, and a re-computation takes three looks (its asset, the rows,
    # the index segment).
    dam_automation_interval_seconds: int = Field(default=30, ge=1)

    # The assets table (Delta Lake): how long superseded and deleted rows stay in its history.
    dam_table_retention_hours: float = Field(default=168.0, ge=0)  # compact_assets vacuums older files
    dam_compact_cron: str = "0 3 * * *"  # compact_assets' schedule (UTC)
    dam_compact_max_files: int = Field(default=1000, ge=10)  # more data files: compact_assets_sensor compacts

    @field_validator("r2_endpoint")
    @classmethod
    def _endpoint_is_url(cls, v: str | None) -> str | None:
        if v is not None:
            parsed = urlparse(v)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError("must be an http(s) URL such as https://<account>.r2.cloudflarestorage.com")
        return v

    @field_validator("amqp_url")
    @classmethod
    def _amqp_is_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and urlparse(v.get_secret_value()).scheme not in ("amqp", "amqps"):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return v

    @field_validator("dam_device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("dam_dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError("must be auto, float32, bfloat16 or float16")
        return v

    @field_validator("dam_runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in ("auto", "torch", "openvino"):
            raise ValueError("must be auto, torch or openvino")
        return v

    @field_validator("dam_quantize")
    @classmethod
    def _quantize(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in ("auto", "none", "int8"):
            raise ValueError("must be auto, none or int8")
        return v

    @field_validator("dam_tags_file")
    @classmethod
    def _tags_file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.expanduser().is_file():
            raise ValueError(f"no such file: {v}")
        return v

    @model_validator(mode="after")
    def _store_is_complete(self) -> "Settings":
        if self.r2_endpoint or self.r2_access_key_id or self.r2_secret_access_key:
            if not self.r2_bucket:
                raise ValueError("R2_BUCKET: required when R2_ENDPOINT or R2 credentials are set")
        if bool(self.r2_access_key_id) != bool(self.r2_secret_access_key):
            raise ValueError("R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY: set both or neither")
        return self

    @model_validator(mode="after")
    def _abandon_after_expiry(self) -> "Settings":
        if self.dam_direct_abandon_seconds <= self.dam_direct_url_expiry_seconds:
            raise ValueError(
                "DAM_DIRECT_ABANDON_SECONDS: must be longer than DAM_DIRECT_URL_EXPIRY_SECONDS, "
                "else the sweep may remove an upload whose URL is still valid"
            )
        return self

    @property
    def uses_s3(self) -> bool:
        return bool(self.r2_bucket)

    @property
    def uses_rabbitmq(self) -> bool:
        return self.amqp_url is not None

    @property
    def data_dir(self) -> Path:
        return self.dam_data_dir.expanduser().resolve()

    @property
    def model_cache_dir(self) -> Path:
        if self.dam_model_cache_dir is not None:
            return self.dam_model_cache_dir.expanduser().resolve()
        return self.data_dir / "models" / "converted"

    @property
    def model_server_socket(self) -> Path:
        """Where `dam models serve` listens unless told otherwise: in the data folder, or in the temp
        folder (named after the data folder) where that path is too long for a Unix socket."""
        path = self.data_dir / "run" / "models.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"dam-models-{digest}.sock"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.dam_queue}.dead"


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]).upper()
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "invalid configuration: " + "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, raising SettingsError that names the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise SettingsError(_describe(err)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
