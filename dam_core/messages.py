"""The upload message: one pydantic model, serialized by the model, shared by producer and sensor."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from dam_core.store import ObjectStore

ID_PATTERN = r"^[0-9a-f]{32}$"
_ID_RE = re.compile(ID_PATTERN)


def is_asset_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def original_key(asset_id: str, ext: str) -> str:
    """Object key of an original; built from the id, never from user input."""
    return f"assets/{asset_id}{ext}"


def vector_key(asset_id: str) -> str:
    return f"vectors/{asset_id}.json"


def thumbnail_key(asset_id: str) -> str:
    return f"thumbnails/{asset_id}.webp"


def upload_marker_key(asset_id: str) -> str:
    """Written once an upload's message is confirmed: the same bytes again are a duplicate."""
    return f"uploads/{asset_id}.json"


class UploadMessage(BaseModel):
    """One accepted upload, as published to the queue and stored in a batch manifest."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(pattern=ID_PATTERN)
    filename: str = Field(max_length=1024)
    r2_key: str = Field(pattern=r"^assets/[0-9a-f]{32}\.[a-z0-9]{2,5}$")
    mime_type: str = Field(pattern=r"^image/[a-z0-9.+-]+$")
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    uploaded_at: AwareDatetime

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, body: bytes | str) -> "UploadMessage":
        """Parse a message; raises MessageError with a readable reason."""
        try:
            return cls.model_validate_json(body)
        except ValidationError as err:
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:5]
            )
            raise MessageError(reasons) from None


class MessageError(ValueError):
    """A queue message that cannot be parsed; it goes to the dead-letter queue."""


class BatchManifest(BaseModel):
    """The list of uploads in one ingest batch, written before the queue is acknowledged."""

    model_config = ConfigDict(frozen=True)

    batch: str
    created_at: datetime
    uploads: list[UploadMessage]

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode()


def manifest_key(batch: str) -> str:
    return f"batches/{batch}.json"


# The listing prefix and suffix come from manifest_key itself: the key format is written once.
_MANIFEST_PREFIX, _MANIFEST_SUFFIX = manifest_key("\0").split("\0")


def manifest_batches(store: ObjectStore, after: str | None = None) -> Iterator[str]:
    """Batch keys of the manifests in the store that sort after batch `after`, oldest first."""
    for key in store.list(_MANIFEST_PREFIX, start_after=manifest_key(after) if after else None):
        batch = key[len(_MANIFEST_PREFIX):-len(_MANIFEST_SUFFIX)] if key.endswith(_MANIFEST_SUFFIX) else ""
        if batch and "/" not in batch:  # a nested object is no manifest
            yield batch


_INVISIBLE = {0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0xFEFF}


def clean_filename(raw: str | None) -> str:
    """The client's filename kept as data: no path, no control or bidi-override characters, bounded."""
    import unicodedata

    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(
        ch for ch in name if unicodedata.category(ch) != "Cc" and ord(ch) not in _INVISIBLE
    ).strip()
    if name in ("", ".", ".."):
        name = "upload"
    return name[:255]
