"""The S3 requests on an upload's path, sent directly: SigV4 (dam_core.sigv4) over a urllib3 pool.

`S3Store` sends its single-object requests (GET, ranged GET, HEAD, PUT, conditional PUT, DELETE)
and its listings (ListObjectsV2) and signs its presigned URLs here; multipart uploads, copies and
streamed bodies stay on boto3. A boto3 call costs about 1.2-1.7 ms of CPU (its event hooks,
serializers, XML parsers and, on a 404, an exception class built per error code); the same request
here costs a few tenths of a millisecond, and an upload makes three or four of them.

Requests use path-style URLs (`{endpoint}/{bucket}/{key}`), which R2, MinIO, moto and S3 all
serve, through the proxy and with the CA bundle the environment names for boto3
(HTTPS_PROXY/HTTP_PROXY/NO_PROXY, AWS_CA_BUNDLE). Connection failures and 5xx/429 answers are
retried twice with a short jittered backoff (as boto3's standard mode does for these; every
request here is idempotent, a conditional PUT included: a repeat of one that landed answers 412,
which the caller already treats as "the key was taken").
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import urllib.request
from collections.abc import Mapping, Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

import urllib3

from dam_core.sigv4 import SigV4, canonical_query, quote_key

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class S3Unreachable(RuntimeError):
    """No answer from the store after the retries (or an answer that is not HTTP)."""


class S3Response(NamedTuple):
    status: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    data: bytes

    def error_code(self) -> str:
        """The `<Code>` of an S3 error answer ('' when there is none)."""
        start = self.data.find(b"<Code>")
        end = self.data.find(b"</Code>", start)
        return self.data[start + 6 : end].decode(errors="replace") if start >= 0 and end > start else ""

    def metadata(self) -> dict[str, str]:
        """The object's user metadata (`x-amz-meta-*`), names lower-cased without the prefix, as boto3 gives it."""
        return {k.lower()[11:]: v for k, v in self.headers.items() if k.lower().startswith("x-amz-meta-")}


def _ca_certs() -> str | None:
    """The CA bundle boto3 would use: AWS_CA_BUNDLE when set (a private MinIO's CA), else certifi's."""
    if bundle := os.environ.get("AWS_CA_BUNDLE"):
        return bundle
    try:
        import certifi  # botocore's own bundle, when installed (it is with boto3)
    except ImportError:  # pragma: no cover - urllib3 then uses the system's store
        return None
    return str(certifi.where())


def _proxy_for(scheme: str, hostname: str) -> str | None:
    """The proxy the environment names for this endpoint (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as boto3 honours them."""
    proxy = urllib.request.getproxies().get(scheme)
    return proxy if proxy and not urllib.request.proxy_bypass(hostname) else None


class S3Http:
    """Signed requests on the objects of one bucket."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        signer: SigV4,
        pool_size: int = 32,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        attempts: int = 3,
    ):
        parts = urlsplit(endpoint.rstrip("/"))
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        default = parts.port is None or parts.port == _DEFAULT_PORTS[parts.scheme]
        # As the HTTP client sends Host (and the signature must name it): no default port.
        self.host = parts.hostname if default else f"{parts.hostname}:{parts.port}"
        if ":" in (parts.hostname or "") and default:  # an IPv6 literal
            self.host = f"[{parts.hostname}]"
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")
        self.bucket = bucket
        self.signer = signer
        self.attempts = max(1, attempts)
        timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        ca_certs = _ca_certs() if parts.scheme == "https" else None
        proxy = _proxy_for(parts.scheme, parts.hostname)
        self.pool: urllib3.PoolManager = (
            urllib3.ProxyManager(
                proxy, num_pools=4, maxsize=pool_size, retries=False, timeout=timeout, ca_certs=ca_certs
            )
            if proxy
            else urllib3.PoolManager(num_pools=4, maxsize=pool_size, retries=False, timeout=timeout, ca_certs=ca_certs)
        )

    def path(self, key: str | None = None) -> str:
        """The URL path of `key` in the bucket, as sent and signed; the bucket's own for None (a listing)."""
        bucket = f"{self.prefix}/{quote_key(self.bucket)}"
        return bucket if key is None else f"{bucket}/{quote_key(key)}"

    def request(
        self,
        method: str,
        key: str | None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        params: Sequence[tuple[str, str]] = (),
    ) -> S3Response:
        """One request on `key` (None: on the bucket), retried on no answer and on 5xx/429;
        S3Unreachable when none came. The body's SHA-256 is signed: the store refuses bytes changed
        on the way."""
        path = self.path(key)
        query = canonical_query(params)
        url = f"{self.base_url}{path}" + (f"?{query}" if query else "")
        digest = hashlib.sha256(body).hexdigest()
        failure: str = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(random.uniform(0, 0.05 * 2**attempt))
            signed = self.signer.sign(method, self.host, path, query, headers, digest)
            try:
                answer = self.pool.request(
                    method, url, body=body or None, headers=signed, preload_content=True, redirect=False
                )
            except urllib3.exceptions.HTTPError as err:
                failure = type(err).__name__
                continue
            if answer.status in RETRY_STATUSES:
                failure = f"HTTP {answer.status}"
                continue
            return S3Response(answer.status, answer.headers, answer.data or b"")
        raise S3Unreachable(failure)

    def presign(
        self,
        method: str,
        key: str,
        expires: int,
        params: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """A presigned URL for one request on `key` (the client sends `headers` as given)."""
        return self.signer.presign(method, self.base_url, self.host, self.path(key), expires, params, headers)


__all__ = ["RETRY_STATUSES", "S3Http", "S3Response", "S3Unreachable"]
