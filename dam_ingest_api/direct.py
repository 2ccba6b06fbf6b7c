"""Direct-to-store uploads (`DirectUploads`): the client PUTs to S3/R2 itself, the API signs and checks.

The protocol is Uppy's `@uppy/aws-s3` as Uppy Companion serves it (routes/direct.py). A single PUT
whose client declares its SHA-256, size and type goes straight to its original's key
(content_puts.py). Otherwise the content id is unknown until the bytes are, so a client uploads to
a staging key `incoming/{token}` (a random token); the API keeps a record of each upload at `incoming/{token}.json` (the filename,
the multipart upload id, what the client declared), and signs URLs only for keys it has a record
of. On completion it checks the object (size, SHA-256, type and size from the header), copies it
to its original's key, removes the staging object and the record, and queues the upload through
`Uploader.admit`: the same guarantees and the same answer as `POST /upload`. A record is consumed
by its completion, so a completion replayed later finds none. What is never completed is aborted
and removed by the sweep (`dam_assets.maintenance.sweep.sweep_staging`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from dam_core.images import ImageInfo, ImageRejected, ext_of_type, inspect_header
from dam_core.layout import original_parts, staging_key, staging_record_key, staging_token
from dam_core.messages import UploadMessage, is_sha256
from dam_core.store import (
    KeyNotFound,
    ObjectChanged,
    ObjectHead,
    PartsRejected,
    S3Store,
    StoreError,
    UploadedPart,
    UploadNotFound,
)
from dam_ingest_api.content_puts import ContentPuts
from dam_ingest_api.direct_errors import DirectUploadError, too_large
from dam_ingest_api.service import Uploader

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 * 1024 * 1024  # S3's and R2's smallest part, the last one excepted
S3_MAX_PART_NUMBER = 10_000
_SPOOL_IN_MEMORY = 1024 * 1024


class StagedUpload(BaseModel):
    """The API's record of one direct upload, kept at `incoming/{token}.json` until it completes."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    token: str
    kind: Literal["put", "multipart"]
    upload_id: str | None = None
    filename: str | None = None
    sha256: str | None = None  # declared by the client: checked against the bytes
    size: int | None = None  # declared by the client: checked against the object
    created_at: AwareDatetime

    @property
    def key(self) -> str:
        return staging_key(self.token)


def declared(metadata: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The SHA-256 (64 hex) and size (bytes) a client may declare in Uppy's `metadata`; 400 when malformed."""
    sha = metadata.get("sha256")
    size = metadata.get("size")
    if sha is not None:
        sha = str(sha).strip().lower()
        if not is_sha256(sha):
            raise DirectUploadError(400, "metadata sha256: expected 64 hexadecimal characters")
    if size is not None:
        try:
            size = int(str(size))
        except ValueError:
            raise DirectUploadError(400, "metadata size: expected a number of bytes") from None
        if size < 1:
            raise DirectUploadError(400, "metadata size: expected a positive number of bytes")
    return sha, size


def _spool_and_hash(chunks: Any, limit: int, fp: IO[bytes]) -> str:
    digest = hashlib.sha256()
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > limit:  # the object grew after its HEAD: a new version under the same ETag cannot be
            raise ObjectChanged("more bytes than the object's size")
        digest.update(chunk)
        fp.write(chunk)
    return digest.hexdigest()


class DirectUploads:
    """Signs direct uploads to the S3 store and turns completed ones into queued uploads."""

    def __init__(self, uploader: Uploader, store: S3Store):
        self.uploader = uploader
        self.settings = uploader.settings
        self.store = store
        self.content = ContentPuts(uploader, store) if self.settings.dam_direct_content_keys else None

    @classmethod
    def of(cls, uploader: Uploader) -> DirectUploads | None:
        """Direct uploads over the uploader's store; None on the local-folder store (no URLs to sign)."""
        store = uploader.store
        return cls(uploader, store) if isinstance(store, S3Store) else None

    @property
    def expires(self) -> int:
        return self.settings.dam_direct_url_expiry_seconds

    @property
    def max_parts(self) -> int:
        """More parts than this cannot fit DAM_MAX_UPLOAD_BYTES: every part but the last is 5 MiB or more."""
        return min(S3_MAX_PART_NUMBER, max(1, math.ceil(self.settings.dam_max_upload_bytes / MIN_PART_BYTES)))

    # -- signing

    def start_put(
        self, filename: str | None, metadata: Mapping[str, Any], content_type: str | None = None
    ) -> tuple[str, str, dict[str, str]]:
        """A new single-PUT upload: (key, presigned PUT URL, headers the PUT must carry).

        The original's own key when the client declared digest, size and a supported type (and
        DAM_DIRECT_CONTENT_KEYS is on); a staging key otherwise.
        """
        started = self.start_content_put(filename, metadata, content_type)
        if started is not None:
            return started
        sha, size = declared(metadata)
        record = self._new_record("put", filename, sha, size)
        headers: dict[str, str] = {}
        checksum = base64.b64encode(bytes.fromhex(sha)).decode() if sha else None
        if checksum:
            headers["x-amz-checksum-sha256"] = checksum  # signed: S3/R2 refuse other bytes at the PUT
        url = self.store.presign_put(record.key, self.expires, checksum)
        self._save(record)
        return record.key, url, headers

    def start_content_put(
        self, filename: str | None, metadata: Mapping[str, Any], content_type: str | None = None
    ) -> tuple[str, str, dict[str, str]] | None:
        """`start_put`'s answer when the PUT goes to the original's own key (no store request); else None."""
        if self.content is None:
            return None
        sha, size = declared(metadata)
        ext = ext_of_type(content_type)
        if sha is None or size is None or ext is None:
            return None
        return self.content.start(filename, sha, size, ext, self.expires)

    def completes_content(self, key: str) -> bool:
        """Whether `complete_put(key)` completes a PUT to an original's own key (`ContentPuts.complete`)."""
        return self.content is not None and original_parts(key) is not None

    def start_multipart(self, filename: str | None, metadata: Mapping[str, Any]) -> tuple[str, str]:
        """A new multipart upload: (its upload id, its staging key)."""
        sha, size = declared(metadata)
        if size is not None and size > self.settings.dam_max_upload_bytes:
            raise DirectUploadError(413, self._too_large(size))
        record = self._new_record("multipart", filename, sha, size)
        upload_id = self.store.create_multipart(record.key)
        record = record.model_copy(update={"upload_id": upload_id})
        try:
            self._save(record)
        except StoreError:
            self._quietly(lambda: self.store.abort_multipart(record.key, upload_id))
            raise
        return upload_id, record.key

    def sign_part(self, key: str, upload_id: str, part_number: int) -> str:
        """A presigned URL for one part of a multipart upload this API started."""
        if not 1 <= part_number <= S3_MAX_PART_NUMBER:
            raise DirectUploadError(400, f"part numbers go from 1 to {S3_MAX_PART_NUMBER}")
        if part_number > self.max_parts:
            raise DirectUploadError(413, self._too_many_parts(part_number))
        record = self._record(key, upload_id)
        return self.store.presign_part(record.key, upload_id, part_number, self.expires)

    def parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        """The parts uploaded so far (Uppy resumes from them)."""
        record = self._record(key, upload_id)
        try:
            return self.store.list_parts(record.key, upload_id)
        except UploadNotFound:
            raise self._gone(record) from None

    def abort(self, key: str, upload_id: str) -> None:
        """Drop a multipart upload, its parts and its record."""
        record = self._record(key, upload_id)
        try:
            self.store.abort_multipart(record.key, upload_id)
        except UploadNotFound:
            pass  # completed by the store but never checked, or aborted already: the record goes either way
        self._discard(record)

    # -- completion

    def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> tuple[bool, UploadMessage]:
        """Assemble the parts, then `complete_put`'s checks; raises DirectUploadError, ImageRejected, ServiceUnavailable."""
        record = self._record(key, upload_id)
        if self.store.head(record.key) is not None:
            return self._finish(record)  # assembled by an earlier call whose checks did not finish
        if not parts:
            raise DirectUploadError(400, "parts: name at least one uploaded part")
        if len(parts) > self.max_parts:
            self._drop_multipart(record)
            raise DirectUploadError(413, self._too_many_parts(len(parts)) + "; the upload was aborted")
        numbers = [n for n, _ in parts]
        if any(b <= a for a, b in zip(numbers, numbers[1:], strict=False)):
            raise DirectUploadError(400, "parts: list each part once, in ascending PartNumber order")
        try:
            uploaded = {p.number: p for p in self.store.list_parts(record.key, upload_id)}
        except UploadNotFound:
            raise self._gone(record) from None
        total = sum(p.size for p in uploaded.values())
        if total > self.settings.dam_max_upload_bytes:
            self._drop_multipart(record)
            raise DirectUploadError(413, self._too_large(total) + "; the upload was aborted")
        for number, etag in parts:
            part = uploaded.get(number)
            if part is None:
                raise DirectUploadError(400, f"part {number} was never uploaded; nothing was assembled")
            if not hmac.compare_digest(part.etag.strip('"'), etag.strip().strip('"')):
                raise DirectUploadError(400, f"part {number}: the ETag is not that of the uploaded part")
        try:
            self.store.complete_multipart(record.key, upload_id, [(n, uploaded[n].etag) for n in numbers])
        except PartsRejected as err:
            raise DirectUploadError(400, f"the store refused to assemble these parts: {err}") from None
        except UploadNotFound:
            raise self._gone(record) from None
        return self._finish(record)

    def complete_put(self, key: str) -> tuple[bool, UploadMessage]:
        """Check the object a single PUT left at `key`, then store and queue it as `POST /upload` does.

        Raises DirectUploadError, ImageRejected (bad bytes: the staging object and record are
        removed) and ServiceUnavailable (nothing removed: complete again).
        """
        if self.content is not None and self.completes_content(key):
            return self.content.complete(key)
        record = self._record(key)
        if record.kind != "put":
            raise DirectUploadError(
                409, "this key belongs to a multipart upload: complete it with POST /s3/multipart/{uploadId}/complete"
            )
        return self._finish(record)

    def _finish(self, record: StagedUpload) -> tuple[bool, UploadMessage]:
        head = self.store.head(record.key)
        if head is None:
            raise DirectUploadError(
                409,
                f"nothing has been uploaded to {record.key}: the PUT failed, its URL expired, or it was sent to "
                "another key",
            )
        limit = self.settings.dam_max_upload_bytes
        if head.size > limit:
            self._discard(record)
            raise DirectUploadError(413, self._too_large(head.size) + "; it was removed")
        if head.size == 0:
            self._discard(record)
            raise DirectUploadError(400, "the file is empty; it was removed")
        if record.size is not None and record.size != head.size:
            self._discard(record)
            raise DirectUploadError(
                422, f"{head.size:,} bytes arrived, {record.size:,} were declared; the upload was removed"
            )
        try:
            with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as fp:
                sha = _spool_and_hash(self.store.iter_bytes(record.key, head.etag), head.size, fp)
                if record.sha256 is not None and record.sha256 != sha:
                    self._discard(record)
                    raise DirectUploadError(
                        422, f"the bytes' SHA-256 is {sha}, not the declared {record.sha256}; the upload was removed"
                    )
                info = self._check_header(fp, record)
            message = self.uploader.message_for(sha, head.size, info, record.filename)
            outcome = self.uploader.admit(
                message,
                lambda: self._place(record, head, message),
                lambda: self._copy(record, head, message),
            )
        except (ObjectChanged, KeyNotFound):
            raise DirectUploadError(
                409, f"the object at {record.key} changed or went away while it was checked; complete it again"
            ) from None
        self._discard(record)  # the original is stored and queued: the staging copy and the record go
        return outcome

    def _check_header(self, fp: IO[bytes], record: StagedUpload) -> ImageInfo:
        settings = self.settings
        try:
            return inspect_header(fp, settings.dam_max_image_pixels, settings.dam_max_image_side)
        except ImageRejected:
            self._discard(record)
            raise

    def _place(self, record: StagedUpload, head: ObjectHead, message: UploadMessage) -> bool:
        """Copy the checked version of the staging object to the original's key (server-side), only
        when no original is there yet (False when one is). The existence check and
        the copy are two requests: two completions of the same bytes may both copy, the same bytes to
        the same key, and both publish; as with two `POST /upload`s racing, the pipeline keeps one row.
        """
        if self.store.exists(message.r2_key):
            return False
        self._copy(record, head, message)
        return True

    def _copy(self, record: StagedUpload, head: ObjectHead, message: UploadMessage) -> None:
        self.store.copy(record.key, message.r2_key, head.etag, message.mime_type)

    # -- records

    def _new_record(
        self, kind: Literal["put", "multipart"], filename: str | None, sha: str | None, size: int | None
    ) -> StagedUpload:
        return StagedUpload(
            token=secrets.token_hex(16),
            kind=kind,
            filename=filename,
            sha256=sha,
            size=size,
            created_at=datetime.now(UTC),
        )

    def _save(self, record: StagedUpload) -> None:
        self.store.put(staging_record_key(record.token), record.model_dump_json().encode(), "application/json")

    def _record(self, key: str, upload_id: str | None = None) -> StagedUpload:
        """The record of the upload at `key` (and with this multipart upload id); 400 or 404 otherwise."""
        token = staging_token(key)
        if token is None:
            raise DirectUploadError(
                400, "not a direct-upload key: use the key that GET /s3/params or POST /s3/multipart answered"
            )
        try:
            record = StagedUpload.model_validate_json(self.store.get(staging_record_key(token)))
        except KeyNotFound:
            raise DirectUploadError(
                404, f"no direct upload in progress at {key}: completed, aborted, expired, or never started"
            ) from None
        except ValidationError:
            raise DirectUploadError(404, f"no readable direct upload record for {key}") from None
        if upload_id is not None and not (
            record.kind == "multipart"
            and record.upload_id is not None
            and hmac.compare_digest(record.upload_id.encode(), upload_id.encode())
        ):
            raise DirectUploadError(404, f"no multipart upload with this id at {key}")
        return record

    def _gone(self, record: StagedUpload) -> DirectUploadError:
        self._discard(record)
        return DirectUploadError(404, f"the multipart upload at {record.key} no longer exists (aborted or expired)")

    def _drop_multipart(self, record: StagedUpload) -> None:
        if record.upload_id is not None:
            self._quietly(lambda: self.store.abort_multipart(record.key, record.upload_id or ""))
        self._discard(record)

    def _discard(self, record: StagedUpload) -> None:
        """Remove the staging object and the record; what fails here is left to the sweep."""
        self._quietly(lambda: self.store.delete(record.key))
        self._quietly(lambda: self.store.delete(staging_record_key(record.token)))

    @staticmethod
    def _quietly(action: Any) -> None:
        try:
            action()
        except (StoreError, UploadNotFound) as err:
            log.warning("direct upload clean-up left for the sweep: %s", err)

    def _too_large(self, size: int) -> str:
        return too_large(size, self.settings.dam_max_upload_bytes)

    def _too_many_parts(self, count: int) -> str:
        return (
            f"part {count} is over the limit of {self.max_parts} parts: every part but the last is at least "
            f"5 MiB, so more cannot fit DAM_MAX_UPLOAD_BYTES ({self.settings.dam_max_upload_bytes:,} bytes)"
        )


__all__ = ["DirectUploadError", "DirectUploads", "StagedUpload", "MIN_PART_BYTES"]
