"""Single PUTs straight to the original's key (`ContentPuts`): the store checks the bytes, the API reads the header.

A client that declares the file's SHA-256, size and type before sending gets a URL for the
content-derived key itself, `assets/{id}{ext}`, with `x-amz-checksum-sha256` and
`If-None-Match: *` signed in: S3 and R2 refuse any other bytes (400 BadDigest) and never replace
an object (412). The declared digest, size and filename travel as the object's own metadata, so
nothing is written for the upload before its bytes, and a completion needs one ranged GET: size
from `Content-Range`, type and dimensions from the first 64 KiB, the metadata, the object's age.
Then the marker lookup and the confirmed publish of `POST /upload` (`Uploader.admit`).

What moves from the answer to the pipeline: the digest is the store's check here, and the pipeline
hashes the bytes it reads anyway (`dam_core.imaging.decode_batch`): a store that ignored the
checksum yields a clear error row, never a row for other bytes. Everything else is checked before
the 202. What a client never completes is an original without a marker: the orphan sweep removes
it after DAM_ORPHAN_GRACE_SECONDS.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

from dam_core.images import ImageInfo, ImageRejected, inspect_header
from dam_core.layout import original_key, original_parts
from dam_core.markers import find_upload
from dam_core.messages import UploadMessage, clean_filename
from dam_core.store import ObjectPeek, S3Store, StoreError
from dam_ingest_api.direct_errors import DirectUploadError, too_large
from dam_ingest_api.service import Uploader

log = logging.getLogger(__name__)

HEADER_BYTES = 64 * 1024  # every supported format's header fits, bar huge EXIF or ICC blocks (then: all bytes)
_FILENAME_METADATA_CHARS = 1024  # S3 and R2 allow 2 KB of user metadata in all


def filename_metadata(filename: str | None) -> str:
    """The client's filename as an ASCII metadata value (percent-encoded, bounded)."""
    name = clean_filename(filename)
    while len(encoded := quote(name, safe="")) > _FILENAME_METADATA_CHARS:
        name = name[:-1]
    return encoded


class ContentPuts:
    """Signs single PUTs to content-derived keys and queues what arrived there."""

    def __init__(self, uploader: Uploader, store: S3Store):
        self.uploader = uploader
        self.settings = uploader.settings
        self.store = store

    def start(
        self, filename: str | None, sha256: str, size: int, ext: str, expires: int
    ) -> tuple[str, str, dict[str, str]]:
        """(key, presigned URL, headers the PUT must send) for a file of this digest, size and suffix."""
        if size > self.settings.dam_max_upload_bytes:
            raise DirectUploadError(413, too_large(size, self.settings.dam_max_upload_bytes))
        key = original_key(sha256[:32], ext)
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        metadata = {"sha256": sha256, "size": str(size), "filename": filename_metadata(filename)}
        url, headers = self.store.presign_create(key, expires, checksum, size, metadata)
        return key, url, headers

    def complete(self, key: str) -> tuple[bool, UploadMessage]:
        """Check what a PUT left at the original's `key`, then publish it as `POST /upload` does.

        Raises DirectUploadError and ImageRejected (the object is removed: no accepted upload can be
        at a key whose bytes fail these checks), and ServiceUnavailable (nothing removed).
        """
        parts = original_parts(key)
        if parts is None:
            raise DirectUploadError(400, f"not an original's key: {key}")
        asset_id, ext = parts
        peek = self.store.peek(key, HEADER_BYTES)
        if peek is None:
            raise DirectUploadError(
                409, f"nothing has been uploaded to {key}: the PUT failed, its URL expired, or it was sent elsewhere"
            )
        existing = self.uploader.markers.pending(asset_id) or find_upload(self.store, asset_id)
        if existing is not None:
            return False, existing  # the same bytes were accepted before: nothing more to queue
        info = self._check(key, ext, peek)  # first: a digest of an object PUT another way reads all of it
        sha = self._digest(key, asset_id, peek)
        message = self.uploader.message_for(sha, peek.size, info, unquote(peek.metadata.get("filename", "")))
        return self.uploader.admit(message, lambda: self._keep(key, peek, info), lambda: None)

    def _digest(self, key: str, asset_id: str, peek: ObjectPeek) -> str:
        """The declared SHA-256 the store checked; for an object PUT another way (no metadata), the bytes' own."""
        sha = peek.metadata.get("sha256", "")
        if len(sha) != 64 or not sha.startswith(asset_id):
            sha = hashlib.sha256(self.store.get(key)).hexdigest()
        if not sha.startswith(asset_id):
            self._remove(key)
            raise DirectUploadError(422, f"the bytes at {key} are not those its name derives from; they were removed")
        return sha

    def _check(self, key: str, ext: str, peek: ObjectPeek) -> ImageInfo:
        """Size (against the limit and the declared one), type and dimensions, from the header bytes (all
        bytes when the header is longer)."""
        if peek.size == 0:
            self._remove(key)
            raise DirectUploadError(400, "the file is empty; it was removed")
        if peek.size > self.settings.dam_max_upload_bytes:
            self._remove(key)
            raise DirectUploadError(413, too_large(peek.size, self.settings.dam_max_upload_bytes) + "; it was removed")
        declared = peek.metadata.get("size")
        if declared is not None and declared != str(peek.size):
            self._remove(key)
            raise DirectUploadError(
                422, f"{peek.size:,} bytes arrived, {declared} were declared; the upload was removed"
            )
        try:
            info = self._inspect(peek.head, peek.size)
        except ImageRejected:
            if len(peek.head) >= peek.size:
                self._remove(key)
                raise
            try:
                info = self._inspect(self.store.get(key), peek.size)
            except ImageRejected:
                self._remove(key)
                raise
        if info.ext != ext:
            self._remove(key)
            raise DirectUploadError(
                415, f"the bytes are {info.mime_type}, not the type declared for {key}; the upload was removed"
            )
        return info

    def _inspect(self, data: bytes, size: int) -> ImageInfo:
        settings = self.settings
        return inspect_header(io.BytesIO(data), settings.dam_max_image_pixels, settings.dam_max_image_side, size)

    def _keep(self, key: str, peek: ObjectPeek, info: ImageInfo) -> bool:
        """Before the publish: an object old enough for the orphan sweep to take soon is made young again."""
        grace = timedelta(seconds=self.settings.dam_orphan_grace_seconds)
        if datetime.now(UTC) - peek.modified > grace / 2:
            self.store.copy(key, key, peek.etag, info.mime_type)
        return True

    def _remove(self, key: str) -> None:
        """Remove a refused object; what fails here is left to the orphan sweep."""
        try:
            self.store.delete(key)
        except StoreError as err:
            log.warning("refused upload at %s left for the orphan sweep: %s", key, err)


__all__ = ["HEADER_BYTES", "ContentPuts", "filename_metadata"]
