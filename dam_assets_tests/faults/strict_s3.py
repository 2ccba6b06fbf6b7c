"""A strict front for moto's S3 server: it checks presigned URLs as S3 and R2 do.

moto stores whatever a presigned URL sends: it checks neither the SigV4 query signature (so a
URL edited to name another key works) nor X-Amz-Expires (so an expired URL works). This front
recomputes the signature of every presigned request with botocore's own SigV4 code and the
secret, refuses a wrong one or an expired one with S3's 403, and forwards everything else to
moto unchanged: the API's own (header-signed) calls and the good presigned PUTs.
"""

from __future__ import annotations

import contextlib
import hmac
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "expect"}


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


@contextlib.contextmanager
def strict_s3(upstream: str, secret: str = "test") -> Iterator[str]:
    """A front for `upstream` (moto) on a free local port; yields its URL (use it as R2_ENDPOINT)."""
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

        def _handle(self) -> None:
            body = self._body()
            headers = {k: v for k, v in self.headers.items()}
            if "X-Amz-Signature=" in self.path:
                url = f"http://{self.headers['Host']}{self.path}"
                refused = presigned_error(self.command, url, headers, secret, datetime.now(UTC))
                if refused:
                    code, _, message = refused.partition(": ")
                    xml = f"<Error><Code>{code}</Code><Message>{message or code}</Message></Error>".encode()
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
            forward = {k: v for k, v in headers.items() if k.lower() not in _HOP}
            answer = client.request(self.command, self.path, headers=forward, content=body)
            self.send_response(answer.status_code)
            for k, v in answer.headers.multi_items():
                if k.lower() not in _HOP and k.lower() != "content-encoding":
                    self.send_header(k, v)
            data = answer.content
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
