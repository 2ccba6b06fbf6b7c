"""A strict front for moto's S3 server: it checks presigned URLs as S3 and R2 do.

moto stores whatever a presigned URL sends: it checks neither the SigV4 query signature (so a
URL edited to name another key works) nor X-Amz-Expires (so an expired URL works). This front
recomputes the signature of every presigned request with botocore's own SigV4 code and the
secret, refuses a wrong one or an expired one with S3's 403; it checks the API's own
(header-signed) requests the same way, and a signed body's SHA-256; and forwards the good ones to
moto unchanged. Like S3 and R2
(and unlike moto), it refuses a PUT whose body does not match its `x-amz-checksum-sha256` (400
BadDigest). A test may pass
a `gate`, shown each good presigned request (method, path, body) before it is forwarded: it can
count the bytes clients send to the bucket, or drop the request (False: the connection is closed
unanswered, as when the network fails).

Given a bucket CORS rule (S3's `CORSRule` shape, as docs/http-api.md sets it on R2), it also
answers a browser as S3 and R2 do: a preflight `OPTIONS` is allowed only for an origin, method and
request headers the rule names, and an answer to an allowed origin carries
`Access-Control-Allow-Origin` and the rule's exposed headers. moto's own CORS headers are dropped:
a browser sees the rule and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "expect"}
CORSRule = Mapping[str, object]  # AllowedOrigins, AllowedMethods, AllowedHeaders, ExposeHeaders, MaxAgeSeconds


def _names(rule: CORSRule, field: str) -> list[str]:
    value = rule.get(field) or []
    assert isinstance(value, list), field
    return [str(v) for v in value]


def preflight_answer(rule: CORSRule | None, headers: Mapping[str, str]) -> dict[str, str] | None:
    """The headers S3 answers a preflight with under `rule`, or None when the rule does not allow it (403)."""
    lower = {k.lower(): v for k, v in headers.items()}
    origin, method = lower.get("origin"), lower.get("access-control-request-method", "")
    if rule is None or origin is None or origin not in _names(rule, "AllowedOrigins"):
        return None
    if method.upper() not in {m.upper() for m in _names(rule, "AllowedMethods")}:
        return None
    asked = [h.strip().lower() for h in lower.get("access-control-request-headers", "").split(",") if h.strip()]
    allowed = {h.lower() for h in _names(rule, "AllowedHeaders")}
    if "*" not in allowed and any(h not in allowed for h in asked):
        return None
    answer = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ", ".join(_names(rule, "AllowedMethods")),
        "Vary": "Origin, Access-Control-Request-Headers, Access-Control-Request-Method",
    }
    if asked:
        answer["Access-Control-Allow-Headers"] = ", ".join(asked)
    if rule.get("MaxAgeSeconds") is not None:
        answer["Access-Control-Max-Age"] = str(rule["MaxAgeSeconds"])
    return answer


def response_cors(rule: CORSRule | None, method: str, headers: Mapping[str, str]) -> dict[str, str]:
    """The CORS headers S3 adds to an actual request's answer under `rule` (none for another origin or method)."""
    origin = {k.lower(): v for k, v in headers.items()}.get("origin")
    if rule is None or origin is None or origin not in _names(rule, "AllowedOrigins"):
        return {}
    if method.upper() not in {m.upper() for m in _names(rule, "AllowedMethods")}:
        return {}
    answer = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if expose := _names(rule, "ExposeHeaders"):
        answer["Access-Control-Expose-Headers"] = ", ".join(expose)
    return answer


def presigned_error(method: str, url: str, headers: dict[str, str], secret: str, now: datetime) -> str | None:
    """Why S3 would refuse this presigned request (`SignatureDoesNotMatch`, `AccessDenied`), or None."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    signature = params.get("X-Amz-Signature", "")
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if now > signed_at + timedelta(seconds=int(params["X-Amz-Expires"])):
        return "AccessDenied: Request has expired"
    access_key, _, region, *_ = params["X-Amz-Credential"].split("/")
    signed = params["X-Amz-SignedHeaders"].split(";")
    lower = {k.lower(): v for k, v in headers.items()}
    if any(h not in lower for h in signed):
        return "SignatureDoesNotMatch: a signed header is missing"
    unsigned_query = urlencode([(k, v) for k, v in query if k != "X-Amz-Signature"])
    request = AWSRequest(
        method=method,
        url=urlunsplit((parts.scheme, parts.netloc, parts.path, unsigned_query, "")),
        headers={h: lower[h] for h in signed},
    )
    request.context["timestamp"] = params["X-Amz-Date"]
    auth = S3SigV4QueryAuth(Credentials(access_key, secret), "s3", region, int(params["X-Amz-Expires"]))
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    return None if hmac.compare_digest(expected, signature) else "SignatureDoesNotMatch"


_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^,]+), SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$")


def header_signed_error(method: str, url: str, headers: dict[str, str], body: bytes, secret: str) -> str | None:
    """Why S3 would refuse this header-signed request (`SignatureDoesNotMatch`, `XAmzContentSHA256Mismatch`),
    or None; a request without an `Authorization` header is not judged here."""
    lower = {k.lower(): v for k, v in headers.items()}
    auth = _AUTH.match(lower.get("authorization", "").strip())
    if auth is None:
        return None if "authorization" not in lower else "SignatureDoesNotMatch: malformed Authorization"
    credential, signed_names, signature = auth.groups()
    access_key, day, region, *_ = credential.split("/")
    names = signed_names.split(";")
    if any(n not in lower for n in names) or "x-amz-date" not in lower:
        return "SignatureDoesNotMatch: a signed header is missing"
    payload = lower.get("x-amz-content-sha256", "")
    if re.fullmatch(r"[0-9a-f]{64}", payload) and hashlib.sha256(body).hexdigest() != payload:
        return "XAmzContentSHA256Mismatch: the body is not the one signed"
    request = AWSRequest(method=method, url=url, headers={n: lower[n] for n in names})
    request.context["timestamp"] = lower["x-amz-date"]
    signer = S3SigV4Auth(Credentials(access_key, secret), "s3", region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    return None if hmac.compare_digest(expected, signature) else "SignatureDoesNotMatch"


def bad_digest(method: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether S3 would refuse this PUT's body for its `x-amz-checksum-sha256` header."""
    declared = {k.lower(): v for k, v in headers.items()}.get("x-amz-checksum-sha256")
    if method != "PUT" or declared is None:
        return False
    return not hmac.compare_digest(base64.b64encode(hashlib.sha256(body).digest()).decode(), declared.strip())


R2_ID_SUFFIX = "/r2+="
_UPLOAD_ID_XML = re.compile(rb"<UploadId>([^<]*)</UploadId>")


def to_moto_query(path: str) -> str:
    """`path` with each R2-style `uploadId` (ending in R2_ID_SUFFIX) turned back into moto's own."""
    parts = urlsplit(path)
    if "uploadId=" not in parts.query:
        return path
    query = [(k, v.removesuffix(R2_ID_SUFFIX) if k == "uploadId" else v) for k, v in parse_qsl(parts.query, True)]
    return urlunsplit(("", "", parts.path, urlencode(query, quote_via=quote), ""))


def to_r2_ids(body: bytes) -> bytes:
    """moto's answer with every `<UploadId>` made R2-style: with a `/`, a `+` and a `=` in it."""
    return _UPLOAD_ID_XML.sub(lambda m: b"<UploadId>" + m.group(1) + R2_ID_SUFFIX.encode() + b"</UploadId>", body)


@contextlib.contextmanager
def strict_s3(
    upstream: str,
    secret: str = "test",
    gate: Callable[[str, str, bytes], bool] | None = None,
    cors: CORSRule | None = None,
    r2_upload_ids: bool = False,
) -> Iterator[str]:
    """A front for `upstream` (moto) on a free local port; yields its URL (use it as R2_ENDPOINT).

    `cors`: the bucket's CORS rule; None answers no browser's preflight, as a bucket without one.
    `r2_upload_ids`: multipart upload ids as Cloudflare R2 makes them, with `/`, `+` and `=` in
    them (moto's are plain): every answer's `<UploadId>` gets R2_ID_SUFFIX, every request's
    `uploadId` loses it again before moto sees it (after its signature was checked as sent).
    """
    client = httpx.Client(base_url=upstream, timeout=60)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _answer(self, status: int, headers: Mapping[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_OPTIONS(self) -> None:  # a browser's preflight: S3 answers it from the bucket's CORS rule
            self._body()
            allowed = preflight_answer(cors, dict(self.headers.items()))
            if allowed is None:
                xml = b"<Error><Code>AccessForbidden</Code><Message>CORSResponse: not allowed</Message></Error>"
                self._answer(403, {"Content-Type": "application/xml"}, xml)
            else:
                self._answer(200, allowed)

        def _handle(self) -> None:
            body = self._body()
            headers = {k: v for k, v in self.headers.items()}
            allow = response_cors(cors, self.command, headers)
            if "X-Amz-Signature=" in self.path:
                url = f"http://{self.headers['Host']}{self.path}"
                refused = presigned_error(self.command, url, headers, secret, datetime.now(UTC))
                if refused:
                    code, _, message = refused.partition(": ")
                    xml = f"<Error><Code>{code}</Code><Message>{message or code}</Message></Error>".encode()
                    self._answer(403, {"Content-Type": "application/xml", **allow}, xml)
                    return
                if gate is not None and not gate(self.command, self.path, body):
                    self.close_connection = True
                    return
            else:
                url = f"http://{self.headers['Host']}{self.path}"
                refused = header_signed_error(self.command, url, headers, body, secret)
                if refused:
                    code, _, message = refused.partition(": ")
                    xml = f"<Error><Code>{code}</Code><Message>{message or code}</Message></Error>".encode()
                    self._answer(403, {"Content-Type": "application/xml", **allow}, xml)
                    return
            if bad_digest(self.command, headers, body):
                xml = b"<Error><Code>BadDigest</Code><Message>The SHA256 you specified did not match the calculated checksum.</Message></Error>"
                self._answer(400, {"Content-Type": "application/xml", **allow}, xml)
                return
            forward = {k: v for k, v in headers.items() if k.lower() not in _HOP}
            path = to_moto_query(self.path) if r2_upload_ids else self.path
            answer = client.request(self.command, path, headers=forward, content=body)
            self.send_response(answer.status_code)
            for k, v in answer.headers.multi_items():
                name = k.lower()
                if name not in _HOP and name != "content-encoding" and not name.startswith("access-control-"):
                    self.send_header(k, v)
            for k, v in allow.items():
                self.send_header(k, v)
            data = to_r2_ids(answer.content) if r2_upload_ids else answer.content
            length = answer.headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        client.close()
