"""Multipart parsing that stops reading at the size limit and times out stalled clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartException, MultiPartParser


class BodyTooLarge(Exception):
    """A file part or the whole body went over its limit; reading stopped there."""


class ClientTooSlow(Exception):
    """The client stopped sending the body."""


def max_body_bytes(max_files: int, max_file_bytes: int) -> int:
    """The largest request body that can hold `max_files` files within their limit."""
    # Multipart framing adds a few hundred bytes per part; 16 KiB each leaves room for long names.
    return max_files * (max_file_bytes + 16 * 1024) + 64 * 1024


class LimitedMultiPartParser(MultiPartParser):
    """Starlette's parser with a per-file byte limit (Starlette only limits non-file fields)."""

    def __init__(self, headers: Headers, stream: AsyncIterator[bytes], *, max_file_bytes: int, max_files: int):
        super().__init__(headers, stream, max_files=max_files, max_fields=100, max_part_size=64 * 1024)
        self.max_file_bytes = max_file_bytes
        self._sizes: dict[int, int] = {}

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is not None:
            size = self._sizes.get(id(part), 0) + (end - start)
            if size > self.max_file_bytes:
                raise BodyTooLarge(f"a file is larger than the limit of {self.max_file_bytes} bytes")
            self._sizes[id(part)] = size
        super().on_part_data(data, start, end)


TIMER_SLACK_SECONDS = 0.05


async def limited_stream(
    stream: AsyncIterator[bytes],
    max_body_bytes: int,
    idle_timeout: float,
    deadline_seconds: float | None = None,
    min_bytes_per_second: float = 0,
    rate_grace_seconds: float = 0,
) -> AsyncIterator[bytes]:
    """Yield body chunks; stop at max_body_bytes, and give up on a client that is too slow.

    Too slow: no chunk for idle_timeout, the whole body not in within deadline_seconds, or
    (after rate_grace_seconds) an average under min_bytes_per_second. The idle timeout alone
    is per chunk, so a client dripping a byte now and then would hold the request forever.
    """
    total = 0
    start = time.monotonic()
    it = stream.__aiter__()

    def too_slow(elapsed: float) -> ClientTooSlow | None:
        if deadline_seconds is not None and elapsed >= deadline_seconds:
            return ClientTooSlow(f"the upload did not finish within the deadline of {deadline_seconds:g} seconds")
        if min_bytes_per_second and elapsed > rate_grace_seconds and total < min_bytes_per_second * elapsed:
            return ClientTooSlow(
                f"the upload arrived at {total / elapsed:.0f} bytes per second, under the minimum of "
                f"{min_bytes_per_second:g} bytes per second"
            )
        return None

    while True:
        elapsed = time.monotonic() - start
        if (err := too_slow(elapsed)) is not None:
            raise err
        # Wake up no later than the moment the deadline or the minimum rate would be missed.
        wait = idle_timeout
        if deadline_seconds is not None:
            wait = min(wait, deadline_seconds - elapsed)
        if min_bytes_per_second:
            wait = min(wait, max(rate_grace_seconds, total / min_bytes_per_second) - elapsed + 0.01)
        try:
            chunk = await asyncio.wait_for(it.__anext__(), timeout=max(wait, 0.001))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            # The event loop may wake a timer up to its clock resolution early: judge the
            # deadline as of the moment it was set for, or a missed deadline would read as idle.
            err = too_slow(time.monotonic() - start + TIMER_SLACK_SECONDS)
            raise err or ClientTooSlow(f"no body data for {idle_timeout:g} seconds") from None
        total += len(chunk)
        if total > max_body_bytes:
            raise BodyTooLarge(f"the request body is larger than the limit of {max_body_bytes} bytes")
        yield chunk


async def parse_upload_form(
    headers: Headers,
    stream: AsyncIterator[bytes],
    *,
    max_file_bytes: int,
    max_files: int,
    idle_timeout: float,
    deadline_seconds: float | None = None,
    min_bytes_per_second: float = 0,
    rate_grace_seconds: float = 0,
) -> FormData:
    """Parse a multipart body into spooled files, enforcing every limit while reading."""
    parser = LimitedMultiPartParser(
        headers,
        limited_stream(
            stream, max_body_bytes(max_files, max_file_bytes), idle_timeout,
            deadline_seconds, min_bytes_per_second, rate_grace_seconds,
        ),
        max_file_bytes=max_file_bytes,
        max_files=max_files,
    )
    return await parser.parse()


__all__ = ["BodyTooLarge", "ClientTooSlow", "MultiPartException", "max_body_bytes", "parse_upload_form"]
