"""The upload message: one pydantic model, serialized by the model, shared by producer and sensor."""

from __future__ import annotations

import builtins
import re
import unicodedata
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

ID_PATTERN = r"^[0-9a-f]{32}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"  # a SHA-256 as the pipeline writes it: 64 lowercase hex characters
_ID_RE = re.compile(ID_PATTERN)
_SHA256_RE = re.compile(SHA256_PATTERN)


def is_asset_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def is_sha256(value: str) -> bool:
    """True for 64 lowercase hex characters."""
    return bool(_SHA256_RE.fullmatch(value))


class UploadMessage(BaseModel):
    """One accepted upload, as published to the queue and stored in a batch manifest."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(pattern=ID_PATTERN)
    filename: str = Field(max_length=1024)
    r2_key: str = Field(pattern=r"^assets/[0-9a-f]{32}\.[a-z0-9]{2,5}$")
    mime_type: str = Field(pattern=r"^image/[a-z0-9.+-]+$")
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern=SHA256_PATTERN)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    uploaded_at: AwareDatetime

    # `builtins.bytes`: in the class body `bytes` is the field above.
    def to_json(self) -> builtins.bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, body: builtins.bytes | str) -> "UploadMessage":
        """Parse a message; raises MessageError with a readable reason."""
        try:
            return cls.model_validate_json(body)
        except ValidationError as err:
            reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:5])
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


_INVISIBLE = {0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0xFEFF}


def clean_filename(raw: str | None) -> str:
    """The client's filename kept as data: no path, no control or bidi-override characters, bounded."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) != "Cc" and ord(ch) not in _INVISIBLE).strip()
    if name in ("", ".", ".."):
        name = "upload"
    return name[:255]
