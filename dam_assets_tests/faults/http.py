"""Raw HTTP/1.1 over a socket: for clients a library will not imitate (slow, oversized, chunked)."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlparse


@dataclass
class RawResponse:
    status: int | None  # None: the server closed without answering
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    sent: int = 0  # body bytes the client got out before the answer (or the close)
    seconds: float = 0.0  # from the end of the request head to the answer (or the close)
    closed_early: bool = False  # the server stopped accepting the body before the client was done

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _parse(raw: bytes) -> tuple[int | None, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/"):
        return None, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body


def _response_complete(raw: bytes) -> bool:
    if b"\r\n\r\n" not in raw:
        return False
    status, headers, body = _parse(raw)
    if status is None:
        return True
    return "content-length" not in headers or len(body) >= int(headers["content-length"])


def send_raw(
    url: str,
    head: bytes,
    body: Iterable[bytes] = (),
    *,
    pause: float = 0.0,
    stall_after: int | None = None,
    timeout: float = 30.0,
) -> RawResponse:
    """Send `head`, then the body chunks (with `pause` between them) while watching for an answer.

    Stops sending as soon as the server answers or closes. With `stall_after`, stops sending
    after that many body bytes and waits (a client that never finishes).
    """
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw = b""
    sent = 0
    closed_early = False
    sock.sendall(head)
    start = time.monotonic()

    def answered(wait: float) -> bool:
        nonlocal raw
        r, _, _ = select.select([sock], [], [], wait)
        if not r:
            return False
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return True
        if not data:
            return True
        raw += data
        return _response_complete(raw) or bool(raw)

    try:
        for chunk in body:
            if stall_after is not None and sent >= stall_after:
                break
            if answered(0):
                closed_early = True
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                closed_early = True
                break
            sent += len(chunk)
            if pause:
                time.sleep(pause)
        deadline = time.monotonic() + timeout
        while not _response_complete(raw) and time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            raw += data
        seconds = time.monotonic() - start
    finally:
        sock.close()
    status, headers, resp_body = _parse(raw)
    return RawResponse(status, headers, resp_body, sent, seconds, closed_early)


def multipart_head(url: str, boundary: str, content_length: int | None, extra: dict | None = None) -> bytes:
    u = urlparse(url)
    lines = [
        "POST /upload HTTP/1.1",
        f"Host: {u.hostname}:{u.port}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
    ]
    if content_length is None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {content_length}")
    for k, v in (extra or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(chunks: Iterable[bytes]) -> Iterable[bytes]:
    """HTTP/1.1 chunked transfer encoding of the given chunks (with the final empty chunk)."""
    for c in chunks:
        if c:
            yield f"{len(c):x}\r\n".encode() + c + b"\r\n"
    yield b"0\r\n\r\n"
