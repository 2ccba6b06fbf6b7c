"""Object store: one interface, a local folder (default) and the S3 API (R2, MinIO, AWS).

boto3/botocore are imported inside the S3 store's methods, not at the top: a process on the local
store (the default) never loads them. botocore ships no type information: its objects are `Any`.
The S3 store sends single-object requests and signs URLs itself (dam_core.s3_http: an upload's
three or four store requests at a fraction of boto3's CPU) and uses boto3 for the rest.
"""

from __future__ import annotations

import abc
import builtins
import functools
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

if TYPE_CHECKING:
    from dam_core.s3_http import S3Http, S3Response
    from dam_core.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=/-]{0,1000}$")


class StoreError(RuntimeError):
    """The object store could not be reached or refused the operation."""


class KeyNotFound(KeyError):
    """No object under that key."""


class ObjectChanged(RuntimeError):
    """The object is no longer the version a conditional read or copy named (its ETag changed)."""


class UploadNotFound(LookupError):
    """No such multipart upload under that key: never created, completed, or aborted."""


class PartsRejected(ValueError):
    """The store refused to assemble a multipart upload from the parts named (missing, too small, out of order)."""


@dataclass(frozen=True)
class ObjectHead:
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectPeek:
    """An object's first bytes, with what the same answer tells of the whole object."""

    size: int
    etag: str
    modified: datetime
    metadata: dict[str, str]
    head: bytes


@dataclass(frozen=True)
class UploadedPart:
    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload not yet completed or aborted."""

    key: str
    upload_id: str
    initiated: datetime


def check_key(key: str) -> str:
    """Keys are built by the pipeline from ids; refuse anything that could escape a folder."""
    if not _KEY_RE.match(key) or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key: {key!r}")
    return key


class ObjectStore(abc.ABC):
    """What the API and the pipeline need from an object store."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        """Write (or overwrite) an object atomically: readers see the old or the new bytes."""

    @abc.abstractmethod
    def create(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> bool:
        """Write an object only if the key is free; False when it already exists."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Read a whole object; KeyNotFound when absent."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object; absent keys are fine."""

    @abc.abstractmethod
    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        """Keys under a prefix in lexicographic order, optionally after a given key."""

    @abc.abstractmethod
    def list_modified(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        """(key, last modification time in UTC) for every key under a prefix, in key order."""

    @abc.abstractmethod
    def modified(self, key: str) -> datetime | None:
        """Last modification time of one object in UTC; None when absent."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the objects live, for logs and metadata (never credentials)."""


def _chunks(data: bytes | IO[bytes]) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
        return
    while chunk := data.read(1024 * 1024):
        yield chunk


class _SourceFailed(Exception):
    """The data being written failed to read (a client gone mid-upload): not the store's fault."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _local_errors(method: Callable[Concatenate[LocalStore, P], R]) -> Callable[Concatenate[LocalStore, P], R]:
    """Disk full, permission denied, a file where a folder should be: a StoreError (503), never a 500."""

    @functools.wraps(method)
    def wrapper(self: LocalStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except _SourceFailed as failed:
            raise failed.error from None
        except OSError as err:
            raise StoreError(f"local store {self.root} failed: {type(err).__name__} ({err.strerror or err})") from err

    return wrapper


def _fsync_dir(path: Path) -> None:
    # A rename or link is durable only once its directory entry is: without this, a power
    # loss after a 202 can lose an original whose file data was already synced.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


class LocalStore(ObjectStore):
    """Objects as files under a folder; writes go to a temp file and are renamed into place."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_temp(self, data: bytes | IO[bytes]) -> Path:
        tmp = self._tmp / uuid.uuid4().hex
        try:
            with open(tmp, "wb") as f:
                chunks = _chunks(data)
                while True:
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        break
                    except Exception as err:
                        raise _SourceFailed(err) from err
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind
            raise
        return tmp

    @_local_errors
    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temp(data)
        try:
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)

    @_local_errors
    def create(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> bool:
        dest = self.path(key)
        if dest.exists():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temp(data)
        try:
            os.link(tmp, dest)  # atomic and exclusive: fails if another writer won
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(dest.parent)
        return True

    @_local_errors
    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise KeyNotFound(key) from None

    @_local_errors
    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    @_local_errors
    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def _walk(self, prefix: str, start_after: str | None = None) -> list[tuple[str, str]]:
        # The folder holding every key with this prefix; never above the root (prefix "" is the root).
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        found: list[tuple[str, str]] = []

        def fail(err: OSError) -> None:
            raise err  # an unreadable folder must not look like an empty one

        for dirpath, dirnames, filenames in os.walk(base, onerror=fail):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                full = os.path.join(dirpath, name)
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    found.append((key, full))
        found.sort()
        return found

    @_local_errors
    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        return iter([key for key, _ in self._walk(prefix, start_after)])

    @_local_errors
    def list_modified(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        out: list[tuple[str, datetime]] = []
        for key, full in self._walk(prefix):
            try:
                out.append((key, _utc(os.stat(full).st_mtime)))
            except FileNotFoundError:
                continue  # deleted while listing
        return iter(out)

    @_local_errors
    def modified(self, key: str) -> datetime | None:
        try:
            st = self.path(key).stat()
        except FileNotFoundError:
            return None
        return _utc(st.st_mtime)

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"local store {self.root} is not writable")

    def describe(self) -> str:
        return f"file://{self.root}"

    def clear_temp(self) -> None:
        """Remove temp files left by a crash mid-write (they are never visible as objects)."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True, exist_ok=True)


EXPECT_CONTINUE_MIN_BYTES = 8 * 1024 * 1024


def _expect_continue_for_large_bodies(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
    """botocore's `Expect: 100-continue` for file bodies, kept only for large ones.

    botocore sends it for every file-like body: the headers go first and the body waits for the
    server's `100 Continue`, one more round trip on every upload (an image is a spooled file).
    It only pays off when the server refuses a body worth not sending.
    """
    from botocore.handlers import add_expect_header  # S3 only: see the module docstring
    from botocore.utils import determine_content_length

    body = params.get("body")
    if body is None or not hasattr(body, "read"):
        return
    size = determine_content_length(body)
    if size is None or size >= EXPECT_CONTINUE_MIN_BYTES:
        add_expect_header(model, params, **kwargs)


def _small_body(data: bytes | IO[bytes]) -> bytes | None:
    """The bytes to send in one signed request (dam_core.s3_http): `data` itself, or a seekable
    file's content under EXPECT_CONTINUE_MIN_BYTES; None for a larger file: boto3 streams it."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    try:
        start = data.tell()
        size = data.seek(0, os.SEEK_END) - start
        data.seek(start)
    except (AttributeError, OSError, ValueError):
        return None
    return data.read() if size < EXPECT_CONTINUE_MIN_BYTES else None


def _http_date(value: str | None) -> datetime:
    from email.utils import parsedate_to_datetime

    return parsedate_to_datetime(value).astimezone(UTC) if value else datetime.now(UTC)


class S3Store(ObjectStore):
    """Objects in a bucket through the S3 API (Cloudflare R2, MinIO, AWS S3, moto)."""

    def __init__(self, client: Any, http: S3Http, bucket: str, endpoint: str | None = None):
        from botocore.handlers import add_expect_header  # S3 only: see the module docstring

        self.client = client
        self.http = http
        self.bucket = bucket
        self.endpoint = endpoint
        events = client.meta.events  # this client's own copy of botocore's handlers
        events.unregister("before-call.s3", add_expect_header)
        events.register("before-call.s3", _expect_continue_for_large_bodies, unique_id="dam-expect-continue")

    @classmethod
    def from_settings(cls, settings: "Settings") -> "S3Store":
        import boto3  # S3 only: see the module docstring
        from botocore.config import Config

        from dam_core.s3_http import S3Http, S3Unreachable
        from dam_core.sigv4 import Credentials, SigV4

        if not settings.r2_bucket:
            raise ValueError("R2_BUCKET is not set: these settings select the local store")
        session = boto3.session.Session(
            aws_access_key_id=settings.r2_access_key_id.get_secret_value() if settings.r2_access_key_id else None,
            aws_secret_access_key=(
                settings.r2_secret_access_key.get_secret_value() if settings.r2_secret_access_key else None
            ),
            region_name=settings.r2_region,
        )
        found = session.get_credentials()  # the keys set, else boto3's chain (environment, profile, role)

        def credentials() -> Credentials:
            if found is None:
                raise S3Unreachable("no credentials: set R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY")
            frozen = found.get_frozen_credentials()  # refreshed here when temporary
            return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

        endpoint = settings.r2_endpoint or f"https://s3.{settings.r2_region}.amazonaws.com"
        http = S3Http(endpoint, settings.r2_bucket, SigV4(credentials, settings.r2_region), pool_size=32)
        client = session.client(
            "s3",
            endpoint_url=settings.r2_endpoint,
            config=Config(
                connect_timeout=3,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=32,
                signature_version="s3v4",
            ),
        )
        return cls(client, http, settings.r2_bucket, settings.r2_endpoint)

    def _wrap(self, err: Exception) -> StoreError:
        return StoreError(f"object store {self.describe()} failed: {type(err).__name__}")

    def _send(self, method: str, key: str | None, body: bytes = b"", **kwargs: Any) -> S3Response:
        """One request through dam_core.s3_http on `key` (None: the bucket); an unreachable store is a StoreError."""
        from dam_core.s3_http import S3Unreachable

        try:
            return self.http.request(method, None if key is None else check_key(key), body, **kwargs)
        except S3Unreachable as err:
            raise self._unreachable(err) from None

    def _unreachable(self, err: Exception) -> StoreError:
        return StoreError(f"object store {self.describe()} failed: {err}")

    def _refused(self, answer: S3Response) -> StoreError:
        return StoreError(f"object store {self.describe()} refused: HTTP {answer.status} {answer.error_code()}")

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        check_key(key)  # a bad key is the caller's ValueError, not a store outage
        body = _small_body(data)
        if body is not None:
            answer = self._send("PUT", key, body, headers={"content-type": content_type} if content_type else None)
            if answer.status != 200:
                raise self._refused(answer)
            return
        extra = {"ContentType": content_type} if content_type else {}
        try:
            self.client.upload_fileobj(data, self.bucket, check_key(key), ExtraArgs=extra or None)
        except Exception as err:  # botocore raises many unrelated types
            raise self._wrap(err) from err

    def create(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> bool:
        from botocore.exceptions import ClientError  # S3 only: see the module docstring

        check_key(key)
        small = _small_body(data)
        if small is not None:
            headers = {"if-none-match": "*"} | ({"content-type": content_type} if content_type else {})
            answer = self._send("PUT", key, small, headers=headers)
            if answer.status in (409, 412):  # PreconditionFailed, or R2's ConditionalRequestConflict
                return False
            if answer.status != 200:
                raise self._refused(answer)
            return True
        extra = {"ContentType": content_type} if content_type else {}
        body = data  # a seekable file streams
        try:
            # A conditional put: the store decides atomically which of two writers wins.
            self.client.put_object(Bucket=self.bucket, Key=check_key(key), Body=body, IfNoneMatch="*", **extra)
            return True
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise self._wrap(err) from err
        except Exception as err:
            raise self._wrap(err) from err

    def get(self, key: str) -> bytes:
        answer = self._send("GET", key)
        if answer.status == 404:
            raise KeyNotFound(key)
        if answer.status != 200:
            raise self._refused(answer)
        return answer.data

    def exists(self, key: str) -> bool:
        answer = self._send("HEAD", key)
        if answer.status not in (200, 404):
            raise self._refused(answer)
        return answer.status == 200

    def delete(self, key: str) -> None:
        answer = self._send("DELETE", key)
        if answer.status not in (200, 204, 404):
            raise self._refused(answer)

    def _listing(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, str]]:
        """(key, LastModified as S3 writes it) under `prefix`, in key order, a page (1,000 keys) at a time.

        ListObjectsV2 parsed here (ElementTree, C-accelerated): boto3 parses each entry's timestamp
        with dateutil and built dicts for fields never read, 5-10x the CPU of the request itself.
        """
        from urllib.parse import unquote_plus
        from xml.etree import ElementTree

        params = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url")]
        if start_after:
            params.append(("start-after", start_after))
        token: str | None = None
        while True:
            page = params + ([("continuation-token", token)] if token else [])
            answer = self._send("GET", None, params=page)
            if answer.status != 200:
                raise self._refused(answer)
            try:
                root = ElementTree.fromstring(answer.data)
            except ElementTree.ParseError:
                raise StoreError(f"object store {self.describe()} answered a listing that is not XML") from None
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for entry in root.iter(f"{ns}Contents"):
                # encoding-type=url: keys arrive percent-encoded (any byte a key may hold survives XML)
                yield unquote_plus(entry.findtext(f"{ns}Key") or ""), entry.findtext(f"{ns}LastModified") or ""
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        for key, _ in self._listing(prefix, start_after):
            yield key

    def list_modified(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        for key, modified in self._listing(prefix):
            when = datetime.fromisoformat(modified) if modified else datetime.now(UTC)
            yield key, (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)

    def modified(self, key: str) -> datetime | None:
        answer = self._send("HEAD", key)
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise self._refused(answer)
        return _http_date(answer.headers.get("last-modified"))

    def ping(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as err:
            raise self._wrap(err) from err

    def describe(self) -> str:
        return f"s3://{self.bucket}" + (f" at {self.endpoint}" if self.endpoint else "")

    # -- direct uploads: presigned URLs and multipart uploads (SigV4 signs the key: a URL is good for
    # its own key only, and only until it expires)

    @staticmethod
    def _code(err: Any) -> tuple[str, int | None]:
        return err.response.get("Error", {}).get("Code", ""), err.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode"
        )

    def _presign(self, method: str, key: str, expires: int, **kwargs: Any) -> str:
        from dam_core.s3_http import S3Unreachable

        try:
            return self.http.presign(method, check_key(key), expires, **kwargs)
        except S3Unreachable as err:  # no credentials to sign with
            raise self._unreachable(err) from None

    def presign_put(self, key: str, expires: int, sha256_b64: str | None = None) -> str:
        """A URL that PUTs one object at `key`; with `sha256_b64`, the store refuses other bytes."""
        # Signed: the client must send x-amz-checksum-sha256.
        headers = {"x-amz-checksum-sha256": sha256_b64} if sha256_b64 else None
        return self._presign("PUT", key, expires, headers=headers)

    def presign_create(
        self, key: str, expires: int, sha256_b64: str, size: int, metadata: Mapping[str, str]
    ) -> tuple[str, dict[str, str]]:
        """A URL that creates `key` once, with exactly `size` bytes of this SHA-256 (base64); and the
        headers the PUT must send as they are (all signed, and `Content-Length`, which every client
        sends by itself and a browser may not set).

        S3 and R2 refuse the PUT when the object exists (`If-None-Match: *`, 412), when the body is
        not `size` bytes (403) and when the bytes do not match the checksum (400 BadDigest);
        `metadata` travels with the object (ASCII values).
        """
        headers = {"If-None-Match": "*", "x-amz-checksum-sha256": sha256_b64}
        headers.update({f"x-amz-meta-{k}": v for k, v in metadata.items()})
        signed = headers | {"content-length": str(size)}
        return self._presign("PUT", key, expires, headers=signed), headers

    def peek(self, key: str, length: int) -> ObjectPeek | None:
        """The first `length` bytes of `key` and its size, ETag, age and metadata, in one ranged GET; None when absent."""
        answer = self._send("GET", key, headers={"range": f"bytes=0-{length - 1}"})
        if answer.status == 404:
            return None
        if answer.status == 416:  # an empty object has no first byte
            return ObjectPeek(0, "", datetime.now(UTC), {}, b"")
        if answer.status not in (200, 206):
            raise self._refused(answer)
        content_range = answer.headers.get("content-range") or ""
        size = int(content_range.rsplit("/", 1)[1]) if "/" in content_range else len(answer.data)
        modified = _http_date(answer.headers.get("last-modified"))
        return ObjectPeek(size, answer.headers.get("etag", ""), modified, answer.metadata(), answer.data)

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload at `key`; returns its upload id."""
        try:
            upload_id: str = self.client.create_multipart_upload(Bucket=self.bucket, Key=check_key(key))["UploadId"]
            return upload_id
        except Exception as err:
            raise self._wrap(err) from err

    def presign_part(self, key: str, upload_id: str, part_number: int, expires: int) -> str:
        """A URL that PUTs one part of a multipart upload."""
        return self._presign("PUT", key, expires, params=[("partNumber", str(part_number)), ("uploadId", upload_id)])

    def list_parts(self, key: str, upload_id: str) -> builtins.list[UploadedPart]:
        """The parts uploaded so far, by number; UploadNotFound when the upload is gone."""
        from botocore.exceptions import ClientError  # S3 only: see the module docstring

        parts: builtins.list[UploadedPart] = []
        kwargs = {"Bucket": self.bucket, "Key": check_key(key), "UploadId": upload_id}
        try:
            for page in self.client.get_paginator("list_parts").paginate(**kwargs):
                parts.extend(UploadedPart(p["PartNumber"], p["Size"], p["ETag"]) for p in page.get("Parts", []))
        except ClientError as err:
            code, status = self._code(err)
            if code == "NoSuchUpload" or status == 404:
                raise UploadNotFound(upload_id) from None
            raise self._wrap(err) from err
        except Exception as err:
            raise self._wrap(err) from err
        return sorted(parts, key=lambda p: p.number)

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> None:
        """Assemble the object from (part number, ETag) pairs; PartsRejected when the store refuses them."""
        from botocore.exceptions import ClientError  # S3 only: see the module docstring

        body = {"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]}
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=check_key(key), UploadId=upload_id, MultipartUpload=body
            )
        except ClientError as err:
            code, status = self._code(err)
            if code == "NoSuchUpload" or status == 404:
                raise UploadNotFound(upload_id) from None
            if status == 400:  # InvalidPart, InvalidPartOrder, EntityTooSmall, MalformedXML
                raise PartsRejected(err.response.get("Error", {}).get("Message") or code) from None
            raise self._wrap(err) from err
        except Exception as err:
            raise self._wrap(err) from err

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop a multipart upload and its parts; UploadNotFound when it is already gone."""
        from botocore.exceptions import ClientError  # S3 only: see the module docstring

        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=check_key(key), UploadId=upload_id)
        except ClientError as err:
            code, status = self._code(err)
            if code == "NoSuchUpload" or status == 404:
                raise UploadNotFound(upload_id) from None
            raise self._wrap(err) from err
        except Exception as err:
            raise self._wrap(err) from err

    def pending_uploads(self, prefix: str) -> Iterator[PendingUpload]:
        """Multipart uploads under a prefix that were neither completed nor aborted."""
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
                for u in page.get("Uploads", []):
                    yield PendingUpload(u["Key"], u["UploadId"], u["Initiated"].astimezone(UTC))
        except Exception as err:
            raise self._wrap(err) from err

    def head(self, key: str) -> ObjectHead | None:
        """Size and ETag of one object; None when absent."""
        answer = self._send("HEAD", key)
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise self._refused(answer)
        return ObjectHead(int(answer.headers.get("content-length", "0")), answer.headers.get("etag", ""))

    def iter_bytes(self, key: str, etag: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """The bytes of the object's version `etag`, in chunks; ObjectChanged when it was replaced."""
        from botocore.exceptions import ClientError  # S3 only: see the module docstring

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=check_key(key), IfMatch=etag)["Body"]
            yield from body.iter_chunks(chunk_size)
        except ClientError as err:
            raise self._version_error(err, key) from err
        except Exception as err:
            raise self._wrap(err) from err

    def copy(self, source: str, dest: str, etag: str, content_type: str) -> None:
        """Server-side copy of the source's version `etag` to `dest`; ObjectChanged when it was replaced."""
        from botocore.exceptions import ClientError  # S3 only: see the module docstring

        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=check_key(dest),
                CopySource={"Bucket": self.bucket, "Key": check_key(source)},
                CopySourceIfMatch=etag,
                MetadataDirective="REPLACE",
                ContentType=content_type,
            )
        except ClientError as err:
            raise self._version_error(err, source) from err
        except Exception as err:
            raise self._wrap(err) from err

    def _version_error(self, err: Any, key: str) -> Exception:
        """A request on one version of `key` refused: ObjectChanged (replaced), KeyNotFound, else a StoreError."""
        code, status = self._code(err)
        if code == "PreconditionFailed" or status == 412:
            return ObjectChanged(key)
        if status == 404 or code == "NoSuchKey":
            return KeyNotFound(key)
        return self._wrap(err)


def make_store(settings: "Settings") -> ObjectStore:
    """The store the settings ask for: S3 API when R2_BUCKET is set, else a local folder."""
    if settings.uses_s3:
        return S3Store.from_settings(settings)
    return LocalStore(settings.data_dir / "store")


__all__ = [
    "KeyNotFound",
    "LocalStore",
    "ObjectChanged",
    "ObjectHead",
    "ObjectPeek",
    "ObjectStore",
    "PartsRejected",
    "PendingUpload",
    "S3Store",
    "StoreError",
    "UploadNotFound",
    "UploadedPart",
    "check_key",
    "make_store",
]
