"""Multipart parsing that stops reading at the size limit and times out stalled clients."""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncGenerator, AsyncIterator

from python_multipart.multipart import DEFAULT_MAX_HEADER_COUNT, DEFAULT_MAX_HEADER_SIZE
from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartException, MultiPartParser


class BodyTooLarge(Exception):
    """A file part or the whole body went over its limit; reading stopped there."""


class ClientTooSlow(Exception):
    """The client stopped sending the body."""


class PartHeadersTooLong(Exception):
    """A part's header line (its Content-Disposition with the filename, usually) is over the parser's limit."""


class SpoolFailed(Exception):
    """The body could not be buffered on this server's disk (full, over quota, or failing); retry later."""


# python-multipart's limits on one part's headers (Starlette uses its defaults): a header line of
# at most this many bytes, the filename included, and at most this many headers per part.
MAX_PART_HEADER_BYTES = DEFAULT_MAX_HEADER_SIZE
MAX_PART_HEADERS = DEFAULT_MAX_HEADER_COUNT


def max_body_bytes(max_files: int, max_file_bytes: int) -> int:
    """The largest request body that can hold `max_files` files within their limit."""
    # Multipart framing adds a few hundred bytes per part; 16 KiB each leaves room for long names.
    return max_files * (max_file_bytes + 16 * 1024) + 64 * 1024


class LimitedMultiPartParser(MultiPartParser):
    """Starlette's parser with a per-file byte limit (Starlette only limits non-file fields)."""

    def __init__(self, headers: Headers, stream: AsyncGenerator[bytes, None], *, max_file_bytes: int, max_files: int):
        super().__init__(headers, stream, max_files=max_files, max_fields=100, max_part_size=64 * 1024)
        self.max_file_bytes = max_file_bytes
        # Bytes of the part being read. Not a dict keyed by id(part): a finished part is freed and
        # the next one may get its id, which added the sizes of several files together.
        self._part_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._part_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self._part_bytes += end - start
            if self._part_bytes > self.max_file_bytes:
                raise BodyTooLarge(f"a file is larger than the limit of {self.max_file_bytes} bytes")
        super().on_part_data(data, start, end)


TIMER_SLACK_SECONDS = 0.05


async def limited_stream(
    stream: AsyncIterator[bytes],
    max_body_bytes: int,
    idle_timeout: float,
    deadline_seconds: float | None = None,
    min_bytes_per_second: float = 0,
    rate_grace_seconds: float = 0,
) -> AsyncGenerator[bytes, None]:
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
    """Parse a multipart body into spooled files, enforcing every limit while reading.

    Raises BodyTooLarge, ClientTooSlow, PartHeadersTooLong, SpoolFailed (the server's temp folder
    could not take the body: ENOSPC, EDQUOT or another OSError) or MultiPartException.
    """
    parser = LimitedMultiPartParser(
        headers,
        limited_stream(
            stream,
            max_body_bytes(max_files, max_file_bytes),
            idle_timeout,
            deadline_seconds,
            min_bytes_per_second,
            rate_grace_seconds,
        ),
        max_file_bytes=max_file_bytes,
        max_files=max_files,
    )
    try:
        return await parser.parse()
    except MultiPartException as err:
        # Starlette words every parser error "Invalid multipart data."; the cause says which.
        cause = str(err.__cause__ or "")
        if "header size" in cause:
            raise PartHeadersTooLong(
                f"a part's header is too long: a filename (or any other part header line) may take at most "
                f"{MAX_PART_HEADER_BYTES} bytes"
            ) from None
        if "header count" in cause:
            raise MultiPartException(f"a part has more than {MAX_PART_HEADERS} headers") from None
        raise
    except OSError as err:
        if isinstance(err, TimeoutError):  # not a disk error (a subclass of OSError since 3.10)
            raise
        # Starlette spools each file to a temp file (tempfile's folder: TMPDIR) past 1 MiB: the
        # files parsed so far are closed already, so nothing is left behind.
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = "the server's temporary storage is full"
        else:
            reason = f"the server could not buffer the upload ({err.strerror or type(err).__name__})"
        raise SpoolFailed(reason) from None


__all__ = [
    "BodyTooLarge",
    "ClientTooSlow",
    "MAX_PART_HEADER_BYTES",
    "MultiPartException",
    "PartHeadersTooLong",
    "SpoolFailed",
    "max_body_bytes",
    "parse_upload_form",
]
